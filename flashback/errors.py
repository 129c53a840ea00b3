"""One error hierarchy for everything a user or a client can get wrong.

Every error a server answers with, and every usage error the CLI reports,
is a :class:`FlashbackError` carrying a snake_case ``code`` and an HTTP
``status``; it is rendered to JSON in exactly one place (:meth:`to_json`)::

    FlashbackError
    ├── BadRequest          400  (bad_request, invalid_json, bad_cursor, ...)
    ├── Unauthorized        401
    ├── Forbidden           403
    ├── NotFound            404  (not_found, unknown_peer)
    ├── MethodNotAllowed    405
    ├── PreconditionFailed  412
    ├── PayloadTooLarge     413
    ├── RangeNotSatisfiable 416
    ├── InvalidField        422
    ├── RateLimited         429  (carries retry_after_s)
    ├── BackendUnavailable  503
    ├── ConfigError         exit 2 on the command line
    └── Interrupted         exit 130 on the command line (Ctrl-C, with what is kept)
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from flashback.protocol.file_plan import FilePlan


def encode_json(payload: Any) -> bytes:
    """The one JSON body encoding of every server (and the heartbeat fast path)."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text + "\n").encode()


class FlashbackError(Exception):
    """Base error: a code, a human message and the HTTP status that fits."""

    status: ClassVar[int] = 400
    default_code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def body(self) -> bytes:
        """:meth:`to_json` encoded: the bytes of every JSON error answer, whoever sends it."""
        return encode_json(self.to_json())

    def headers(self) -> dict[str, str]:
        """Extra response headers this error needs (Retry-After, Content-Range...)."""
        return {}


class BadRequest(FlashbackError):
    status = 400
    default_code = "bad_request"


class Unauthorized(FlashbackError):
    status = 401
    default_code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(FlashbackError):
    status = 403
    default_code = "forbidden"


class NotFound(FlashbackError):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(FlashbackError):
    status = 405
    default_code = "method_not_allowed"


class PreconditionFailed(FlashbackError):
    status = 412
    default_code = "precondition_failed"

    def __init__(
        self, message: str = "the file does not match the request's preconditions"
    ) -> None:
        super().__init__(message)


class PayloadTooLarge(FlashbackError):
    status = 413
    default_code = "payload_too_large"


class RangeNotSatisfiable(FlashbackError):
    status = 416
    default_code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"no requested range lies within the {size}-byte file")
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}", "Accept-Ranges": "bytes"}


class InvalidField(FlashbackError):
    status = 422
    default_code = "invalid_field"


class RateLimited(FlashbackError):
    status = 429
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class BackendUnavailable(FlashbackError):
    status = 503
    default_code = "backend_unavailable"


class PeerUnreachable(FlashbackError):
    """A peer could not be reached or sent something that is not an answer (502 ``unreachable``)."""

    status = 502
    default_code = "unreachable"


class ConfigError(FlashbackError):
    """Bad configuration or usage: the CLI prints one line and exits 2."""

    status = 400
    default_code = "bad_configuration"


class Interrupted(FlashbackError):
    """Ctrl-C during a command: the CLI prints its one line and exits 130."""

    default_code = "interrupted"


def file_plan_error(plan: FilePlan, size: int) -> FlashbackError | None:
    """The error a file plan answers with (412, 416), or None when it sends the file."""
    if plan.status == 412:
        return PreconditionFailed()
    if plan.status == 416:
        return RangeNotSatisfiable(size)
    return None
