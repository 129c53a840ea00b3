"""The wire codec: typed field readers, and one encoder/decoder driven by dataclass fields.

Every record on the tracker's websocket (:mod:`flashback.protocol.messages`)
declares its wire fields once, in wire order, as dataclass fields whose
metadata says how each one is read::

    @dataclass(frozen=True)
    class TunnelRequest(Message):
        TYPE: ClassVar[str] = "tunnel-request"
        request_id: str = field(metadata=text(MAX_ID_CHARS))
        to: str = field(metadata=text(MAX_ID_CHARS))

:func:`read_fields` reads those fields from a decoded object in that order
(the first bad one is the one reported) and :func:`dump_fields` writes them
back in the same order. A field's wire key is its name less a trailing
``_`` (``from_`` travels as ``"from"``); a rule that spans fields is the
frame's :meth:`Message.check`. A field without ``"wire"`` metadata stays off
the wire.

Each reader raises :class:`ProtocolError`, which carries the frame to answer
with (wsproto's ``event_hint``), so a server answers bad input without a
``try`` around every field::

    ProtocolError(code, message)   .reply -> ErrorMessage {"type": "error", code, message}
      invalid_json      not JSON, or not sendable as UTF-8
      invalid_message   not a JSON object
      unknown_type      no such "type"
      invalid_field     a field out of shape or range (the message names it)

tracker/validate.py reads HTTP bodies with the same readers. Pure: imports
neither trio nor quart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, Self, get_args

from flashback.protocol.fingerprint import is_fingerprint
from flashback.protocol.strict_json import loads_strict

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

MAX_CODE_CHARS: Final = 64
MAX_MESSAGE_CHARS: Final = 1024


class ProtocolError(Exception):
    """A frame we cannot accept; :attr:`reply` is what to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def reply(self) -> ErrorMessage:
        return ErrorMessage(code=self.code, message=self.message)


def invalid(key: str, what: str) -> ProtocolError:
    return ProtocolError("invalid_field", f"{key!r} must be {what}")


def decode_object(text: str | bytes, *, what: str = "the message") -> dict[str, Any]:
    """Strict JSON text that must be an object UTF-8 can carry (*what* names it in errors)."""
    try:
        data = loads_strict(text)
    except ValueError:
        raise ProtocolError("invalid_json", f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_message", f"{what} must be a JSON object")
    # ASCII bytes with no \u escape and no NUL (so UTF-8, not UTF-16/32) cannot
    # hold a surrogate: no need to encode the whole object again to find one
    if not (
        isinstance(text, bytes) and text.isascii() and b"\\u" not in text and b"\0" not in text
    ):
        check_unicode(data, what=what)
    return data


def check_unicode(data: Mapping[str, Any], *, what: str = "the message") -> None:
    """Lone surrogates (from "\\ud800" escapes) cannot be sent on as UTF-8."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("invalid_json", f"{what} has a lone surrogate escape") from None


# -- field readers: each returns the field's own type or raises naming the field ---------


def read_str(data: Mapping[str, Any], key: str, *, max_chars: int, label: str | None = None) -> str:
    """1 to *max_chars* characters (*label* names the field in the error, if not *key*)."""
    value = data.get(key)
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise invalid(label or key, f"a string of 1-{max_chars} characters")
    return value


def read_int(
    data: Mapping[str, Any],
    key: str,
    *,
    low: int = 0,
    high: int | None = None,
    label: str | None = None,
) -> int:
    value = data.get(key)
    label = label or key
    # bool is an int subclass; True is not a port number.
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise invalid(label, f"an integer >= {low}")
    if high is not None and value > high:
        raise invalid(label, f"an integer between {low} and {high}")
    return value


def read_number(data: Mapping[str, Any], key: str) -> float | int:
    value = data.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise invalid(key, "a number >= 0")
    return value


def read_object(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise invalid(key, "an object")
    return value


def read_note(data: Mapping[str, Any], key: str, *, max_chars: int | None = None) -> str:
    """Free text for people: may be empty, and absent reads as ``""`` (null does not)."""
    value = data.get(key, "")
    if max_chars is None:
        if not isinstance(value, str):
            raise invalid(key, "a string")
    elif not isinstance(value, str) or len(value) > max_chars:
        raise invalid(key, f"a string of at most {max_chars} characters")
    return value


def read_choice(data: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = data.get(key)
    if value not in choices:
        raise invalid(key, " or ".join(map(repr, choices)))
    return str(value)


def read_fingerprint(data: Mapping[str, Any], key: str = "fingerprint") -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not is_fingerprint(value):
        raise invalid(key, "'sha256:' and 64 lowercase hex digits")
    return str(value)


def read_required_fingerprint(data: Mapping[str, Any], key: str = "fingerprint") -> str:
    value = read_fingerprint(data, key)
    if value is None:
        raise invalid(key, "'sha256:' and 64 lowercase hex digits")
    return value


# -- the codec: field metadata -> reading and writing -----------------------------------


Reader = Callable[[Mapping[str, Any], str], object]
#: a field's value -> its JSON form (None: the value is JSON as it is)
Writer = Callable[[Any], object]
#: the metadata key the codec reads
WIRE: Final = "wire"


@dataclass(frozen=True, slots=True)
class Wire:
    """How one dataclass field travels (its metadata under :data:`WIRE`)."""

    read: Reader
    write: Writer | None = None
    #: absent or null reads as None (without calling :attr:`read`)
    optional: bool = False
    #: leave the key out when the value is None (else it is written as null)
    omit_none: bool = False
    #: the key of the nested object that holds it (``peer_server``: host, port)
    within: str | None = None


def wire(
    read: Reader,
    write: Writer | None = None,
    *,
    optional: bool = False,
    omit_none: bool = False,
    within: str | None = None,
) -> dict[str, Wire]:
    """Field metadata: ``x: T = field(metadata=wire(read_x))``; *omit_none* implies *optional*."""
    return {WIRE: Wire(read, write, optional or omit_none, omit_none, within)}


def text(
    max_chars: int, *, optional: bool = False, omit_none: bool = False, within: str | None = None
) -> dict[str, Wire]:
    """A string of 1-*max_chars* characters."""

    def read(data: Mapping[str, Any], key: str) -> str:
        return read_str(data, key, max_chars=max_chars)

    return wire(read, optional=optional, omit_none=omit_none, within=within)


def integer(
    low: int = 0, high: int | None = None, *, optional: bool = False, within: str | None = None
) -> dict[str, Wire]:
    def read(data: Mapping[str, Any], key: str) -> int:
        return read_int(data, key, low=low, high=high)

    return wire(read, optional=optional, within=within)


def note(max_chars: int | None = None) -> dict[str, Wire]:
    def read(data: Mapping[str, Any], key: str) -> str:
        return read_note(data, key, max_chars=max_chars)

    return wire(read)


def one_of(choices: object) -> dict[str, Wire]:
    """One of a ``Literal[...]``'s strings: ``role: Role = field(metadata=one_of(Role))``."""
    values: tuple[str, ...] = get_args(choices)

    def read(data: Mapping[str, Any], key: str) -> str:
        return read_choice(data, key, values)

    return wire(read)


class Dumps(Protocol):
    def dump(self) -> dict[str, Any]: ...


def dump_each(records: tuple[Dumps, ...]) -> list[dict[str, Any]]:
    return [record.dump() for record in records]


def dump_or_none(record: Dumps | None) -> dict[str, Any] | None:
    return None if record is None else record.dump()


@dataclass(frozen=True, slots=True)
class _Slot:
    name: str
    key: str
    wire: Wire


@cache
def _slots(cls: type[DataclassInstance]) -> tuple[_Slot, ...]:
    return tuple(
        _Slot(f.name, f.name.removesuffix("_"), f.metadata[WIRE])
        for f in fields(cls)
        if WIRE in f.metadata
    )


def read_fields(cls: type[DataclassInstance], data: Mapping[str, Any]) -> dict[str, Any]:
    """The wire fields of *cls* read from *data*, in declaration order: ``cls(**result)``."""
    values: dict[str, Any] = {}
    for slot in _slots(cls):
        holder = data if slot.wire.within is None else read_object(data, slot.wire.within)
        if slot.wire.optional and holder.get(slot.key) is None:
            values[slot.name] = None
        else:
            values[slot.name] = slot.wire.read(holder, slot.key)
    return values


def dump_fields(record: DataclassInstance) -> dict[str, Any]:
    """The JSON-ready form of *record*'s wire fields, in declaration order."""
    out: dict[str, Any] = {}
    for slot in _slots(type(record)):
        value = getattr(record, slot.name)
        if value is None and slot.wire.omit_none:
            continue
        holder = out if slot.wire.within is None else out.setdefault(slot.wire.within, {})
        holder[slot.key] = value if slot.wire.write is None else slot.wire.write(value)
    return out


class Message:
    """Base of every frame: ``TYPE`` names it, and its dataclass fields are its wire fields."""

    TYPE: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # each frame is a dataclass

    def dump(self) -> dict[str, Any]:
        return {"type": self.TYPE, **dump_fields(self)}

    def encode(self) -> str:
        """Compact JSON text, the form that goes on the wire."""
        return json.dumps(self.dump(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        """A rule between fields, once each is read (*values* by field name); none here."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        values = read_fields(cls, data)
        cls.check(values)
        return cls(**values)


@dataclass(frozen=True)
class ErrorMessage(Message):
    """The answer to a frame that cannot be accepted (:attr:`ProtocolError.reply`)."""

    TYPE: ClassVar[str] = "error"
    code: str = field(metadata=text(MAX_CODE_CHARS))
    message: str = field(metadata=note())
