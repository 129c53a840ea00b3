"""What a stream port answers, decided without sockets (sans-IO).

:func:`plan_response` maps a request (method, target, headers) and the facts
of the one file to a :class:`Plan`: status, headers, a literal body (the
contract's JSON errors) and the byte range of the file to send after the
headers (by ``sendfile``, so the plan never holds file bytes).

Order of checks, and why:

1. the target is not ``/<one segment>`` -> 404 (nothing else lives here);
2. the segment is not the token -> 403, compared in constant time; the port
   is neither spent nor kept alive by it;
3. a method other than GET/HEAD -> 405 with ``Allow``;
4. preconditions, as on the peer server's file routes: ``If-Match`` /
   ``If-Unmodified-Since`` failing -> 412, ``If-None-Match`` /
   ``If-Modified-Since`` matching -> 304;
5. Range (RFC 9110 §14, honoured only if ``If-Range`` still matches the
   strong ETag): one range -> 206, none satisfiable -> 416 with
   ``Content-Range: bytes */SIZE`` and a JSON body. Several disjoint ranges
   -> the header is ignored and the whole file is sent (200), which §14.2
   allows: a multipart body would need the bytes in user space and defeat
   ``sendfile``, and no downloader asks a one-file port for that.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from flashback.protocol.conditional import (
    Precondition,
    content_disposition,
    content_type_for,
    evaluate_preconditions,
    http_date,
    if_range_allows,
)
from flashback.protocol.ranges import ByteRange, Unsatisfiable, parse_range

ALLOWED_METHODS: Final = ("GET", "HEAD")
JSON_TYPE: Final = "application/json"


@dataclass(frozen=True)
class FileFacts:
    """What the port knows about its file, fixed when the port opened."""

    name: str
    size: int
    etag: str
    mtime_s: int


@dataclass(frozen=True)
class Plan:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    #: file bytes to send after the headers (None: no file bytes)
    file_range: ByteRange | None = None
    #: the right token: this response counts for the port's lifetime
    authorized: bool = False
    #: a GET meant to carry file bytes (200/206): counts toward completion
    carries_file: bool = False

    @property
    def reason(self) -> bytes:
        return HTTPStatus(self.status).phrase.encode("ascii")


def _error(
    status: int, code: str, message: str, method: str, extra: tuple[tuple[str, str], ...] = ()
) -> Plan:
    body = (
        json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")) + "\n"
    ).encode("utf-8")
    headers = (
        ("Content-Type", JSON_TYPE),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        *extra,
    )
    return Plan(status, headers, b"" if method == "HEAD" else body)


def token_matches(candidate: str, token: str) -> bool:
    return hmac.compare_digest(candidate.encode("utf-8", "replace"), token.encode("utf-8"))


def target_has_token(target: str, token: str) -> bool:
    """Does a request target name this port's file (``/<token>``, query ignored)?"""
    path = target.split("?", 1)[0]
    return path.startswith("/") and token_matches(path[1:], token)


def plan_response(
    method: str,
    target: str,
    headers: Mapping[str, str],
    *,
    token: str,
    facts: FileFacts,
    repr_digest: str | None = None,
) -> Plan:
    """*headers* maps lower-case names to values (the last one wins);
    *repr_digest* is the file's ``Repr-Digest`` once known (200, 206, HEAD)."""
    path = target.split("?", 1)[0]
    segment = path[1:]
    if not path.startswith("/") or not segment or "/" in segment:
        return _error(404, "not_found", "nothing here; the file is at /<token>", method)
    if not token_matches(segment, token):
        return _error(403, "forbidden", "wrong token for this stream port", method)
    if method not in ALLOWED_METHODS:
        return _error(
            405,
            "method_not_allowed",
            f"{method} is not allowed; use GET or HEAD",
            method,
            (("Allow", ", ".join(ALLOWED_METHODS)),),
        )
    size = facts.size
    common = (
        ("Accept-Ranges", "bytes"),
        ("ETag", facts.etag),
        ("Last-Modified", http_date(facts.mtime_s)),
        ("Cache-Control", "no-store"),
    )
    # The peer server's precondition rule (RFC 9110 §13.2.2), the same function.
    outcome = evaluate_preconditions(
        method,
        etag=facts.etag,
        last_modified_s=facts.mtime_s,
        if_match=headers.get("if-match"),
        if_unmodified_since=headers.get("if-unmodified-since"),
        if_none_match=headers.get("if-none-match"),
        if_modified_since=headers.get("if-modified-since"),
    )
    if outcome is Precondition.FAILED:
        message = "the file does not match the request's preconditions"
        plan = _error(412, "precondition_failed", message, method, common)
        return Plan(plan.status, plan.headers, plan.body, authorized=True)
    if outcome is Precondition.NOT_MODIFIED:
        return Plan(304, common, authorized=True)
    parsed = None
    if if_range_allows(headers.get("if-range"), etag=facts.etag, last_modified_s=facts.mtime_s):
        parsed = parse_range(headers.get("range"), size)
    if isinstance(parsed, Unsatisfiable):
        plan = _error(
            416,
            "range_not_satisfiable",
            f"no requested range lies within the {size}-byte file",
            method,
            (*common, ("Content-Range", parsed.content_range)),
        )
        return Plan(plan.status, plan.headers, plan.body, authorized=True)
    file_headers = (
        ("Content-Type", content_type_for(facts.name)),
        ("Content-Disposition", content_disposition("attachment", facts.name)),
        *common,
        *((("Repr-Digest", repr_digest),) if repr_digest is not None else ()),
    )
    is_get = method == "GET"
    if parsed is not None and len(parsed) == 1:
        (byte_range,) = parsed
        return Plan(
            206,
            (
                *file_headers,
                ("Content-Range", byte_range.content_range(size)),
                ("Content-Length", str(byte_range.length)),
            ),
            file_range=byte_range if is_get else None,
            authorized=True,
            carries_file=is_get,
        )
    whole = ByteRange(0, size - 1) if size and is_get else None
    return Plan(
        200,
        (*file_headers, ("Content-Length", str(size))),
        file_range=whole,
        authorized=True,
        carries_file=is_get,
    )
