"""JSON as RFC 8259 defines it: no NaN, no Infinity, nothing that overflows to one.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``1e999`` (which becomes
``inf``) and writes them back out as bare ``NaN``/``Infinity`` -- not JSON.
One such value in a peer's capabilities would break every strict client of
the peer list, so input with them is refused at the door.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a JSON number")
    return value


#: one decoder for every call: ``json.loads`` with hooks builds a new one each time
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def loads_strict(data: str | bytes | bytearray) -> Any:
    """``json.loads`` that raises ValueError on NaN, Infinity and overflowing numbers,
    and on nesting too deep for the parser (``[[[[...`` is a RecursionError there)."""
    try:
        # what json.loads does before it decodes
        if isinstance(data, bytes | bytearray):
            text = data.decode(json.detect_encoding(data), "surrogatepass")
        elif data.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
        else:
            text = data
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
