"""Human output: text from the network made harmless for a terminal.

A peer chooses its name and its file names; printed raw, ESC, BEL or CR
could rewrite the screen, ring the bell or hide what came before, and bidi
overrides could make ``exe.txt`` read as ``txt.exe``. Every line of human
output that carries such text goes through :func:`printable`.
"""

from __future__ import annotations

from typing import Final

# Unicode bidi embeddings/overrides/isolates and marks: they reorder what follows.
_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _is_unsafe(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F or char in _BIDI


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(value: object) -> str:
    """*value* as text with C0, DEL, C1 and bidi controls shown as ``\\xNN`` / ``\\uNNNN``.

    Idempotent (a backslash is left alone), so escaping twice is harmless.
    """
    text = str(value)
    if not any(_is_unsafe(char) for char in text):
        return text
    return "".join(_escape(char) if _is_unsafe(char) else char for char in text)
