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
4. the file itself: :func:`flashback.protocol.file_plan.plan_file`, the
   peer server's planner (preconditions -> 304/412, Range on GET -> 206/416),
   without a multipart boundary: several disjoint ranges -> the header is
   ignored and the whole file is sent (200), which RFC 9110 §14.2 allows:
   a multipart body would defeat ``sendfile``, and no downloader asks a
   one-file port for that. Errors are :meth:`FlashbackError.body`.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from flashback.errors import FlashbackError, Forbidden, MethodNotAllowed, NotFound, file_plan_error
from flashback.protocol.conditional import content_disposition
from flashback.protocol.file_plan import FileFacts, plan_file
from flashback.protocol.ranges import ByteRange

__all__ = ["FileFacts", "Plan", "plan_response", "target_has_token", "token_matches"]

ALLOWED_METHODS: Final = ("GET", "HEAD")
JSON_TYPE: Final = "application/json"
NO_STORE: Final = ("Cache-Control", "no-store")


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


def error_plan(
    error: FlashbackError,
    method: str,
    extra: tuple[tuple[str, str], ...] = (),
    *,
    authorized: bool = False,
) -> Plan:
    """*error* as the port sends it: :meth:`FlashbackError.body`, none on HEAD."""
    body = error.body()
    headers = (
        ("Content-Type", JSON_TYPE),
        ("Content-Length", str(len(body))),
        NO_STORE,
        *extra,
        *error.headers().items(),
    )
    unique = tuple(dict(headers).items())  # an error's own header wins over a plan's
    return Plan(error.status, unique, b"" if method == "HEAD" else body, authorized=authorized)


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
        return error_plan(NotFound("nothing here; the file is at /<token>"), method)
    if not token_matches(segment, token):
        return error_plan(Forbidden("wrong token for this stream port"), method)
    if method not in ALLOWED_METHODS:
        refusal = MethodNotAllowed(f"{method} is not allowed; use GET or HEAD")
        return error_plan(refusal, method, (("Allow", ", ".join(ALLOWED_METHODS)),))
    # The peer server's rules, the same function; no boundary: one range at most
    # (several -> the whole file), so every body is one sendfile.
    extra = (("Content-Disposition", content_disposition("attachment", facts.name)), NO_STORE)
    plan = plan_file(method, headers, facts, extra=extra, repr_digest=repr_digest)
    error = file_plan_error(plan, facts.size)
    if error is not None:
        return error_plan(error, method, plan.headers, authorized=True)
    carries_file = method == "GET" and plan.status in (200, 206)
    return Plan(
        plan.status,
        plan.headers,
        file_range=plan.file_range,
        authorized=True,
        carries_file=carries_file,
    )
