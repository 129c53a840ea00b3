"""The one rule for a certificate fingerprint (INTERFACE §6.1).

``sha256:`` + the lowercase hex SHA-256 of the certificate's DER bytes: 71
characters, easy to read aloud or compare by eye, and nothing else is one.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

FINGERPRINT_PREFIX: Final = "sha256:"
FINGERPRINT_CHARS: Final = len(FINGERPRINT_PREFIX) + 64
_SHAPE: Final = re.compile(r"sha256:[0-9a-f]{64}")


def fingerprint_of(certificate_der: bytes) -> str:
    return FINGERPRINT_PREFIX + hashlib.sha256(certificate_der).hexdigest()


def is_fingerprint(value: Any) -> bool:
    """True only for the exact shape (fullmatch: no newline, no upper case, no padding)."""
    return isinstance(value, str) and _SHAPE.fullmatch(value) is not None


def grouped(fingerprint: str) -> str:
    """The hex in groups of 8 for comparing by eye, the way Syncthing shows device ids."""
    hex_digits = fingerprint.removeprefix(FINGERPRINT_PREFIX)
    return " ".join(hex_digits[i : i + 8] for i in range(0, len(hex_digits), 8))
