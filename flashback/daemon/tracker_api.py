"""The tracker's HTTP API as the daemon uses it (register, heartbeat, leave).

:class:`TrackerAPI` is the seam (a :class:`typing.Protocol`, so a test's fake
needs no inheritance and no ``type: ignore``); :class:`HTTPTrackerAPI` is
the real one, over httpx.

Errors are sorted into what the caller does next: :class:`UnknownPeer`
(register again under the same identity), :class:`IdentityRejected` (our
token is not accepted: start a new identity), :class:`RetryLater` (network
trouble, 5xx, 429, or an answer that is not what the contract says: back off
and retry -- a broken or hostile tracker never ends the daemon).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from flashback.daemon.identity import Identity
from flashback.protocol.messages import Candidate
from flashback.protocol.strict_json import loads_strict

REQUEST_TIMEOUT_S = 10.0


class TrackerError(Exception):
    pass


class UnknownPeer(TrackerError):
    """The tracker does not know (or no longer knows) our peer id."""


class IdentityRejected(TrackerError):
    """The tracker refused our token."""


class RetryLater(TrackerError):
    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RegistrationRefused(TrackerError):
    """A 4xx we cannot fix by retrying (bad name, auth token required...)."""


@dataclass(frozen=True)
class Registration:
    """The tracker's answer to a registration (what it was asked is the tracker's
    :class:`flashback.tracker.validate.RegisterBody`)."""

    identity: Identity
    heartbeat_interval_s: float
    ttl_s: float
    #: the tracker's tunnel port, on the tracker URL's host (None: not told)
    tunnel_port: int | None = None


def _port_or_none(value: object) -> int | None:
    """An optional port in the tracker's answer; anything but 1-65535 is no port."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    return None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """The tracker's JSON body; RetryLater if it is not a JSON object."""
    try:
        data = loads_strict(response.content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise RetryLater(f"the tracker's answer is not a JSON object (HTTP {response.status_code})")
    return data


def _error_code(response: httpx.Response) -> str:
    try:
        return str(_json_object(response)["error"]["code"])
    except (RetryLater, KeyError, TypeError):
        return ""


def _error_text(response: httpx.Response) -> str:
    try:
        return str(_json_object(response)["error"]["message"])
    except (RetryLater, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _seconds(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 86_400:
        raise RetryLater(f"the tracker's {key!r} is not a number of seconds")
    return float(value)


class TrackerAPI(Protocol):
    """What the daemon asks of a tracker."""

    async def register(
        self,
        name: str,
        host: str,
        port: int,
        *,
        identity: Identity | None,
        capabilities: dict[str, Any] | None = None,
        fingerprint: str | None = None,
        direct: Sequence[Candidate] = (),
    ) -> Registration: ...

    async def heartbeat(self, identity: Identity) -> float:
        """Returns the heartbeat interval the tracker wants now."""

    async def leave(self, identity: Identity) -> None: ...


def unreachable_reason(exc: httpx.HTTPError) -> str:
    """Why a request to the tracker got no answer, in words (``connection refused``)."""
    text = str(exc) or exc.__class__.__name__
    lowered = text.lower()
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    if isinstance(exc, httpx.ConnectError):
        if "refused" in lowered or "all attempts to connect" in lowered:
            return "connection refused (is the tracker running at that address?)"
        if "name" in lowered and ("resolution" in lowered or "not known" in lowered):
            return "its host name does not resolve"
    return f"{exc.__class__.__name__}: {text}"


def refusal_reason(status: int, message: str, *, token_sent: bool) -> str:
    """A registration the URL refused, said so that the fix is plain.

    401 names ``FLASHBACK_TRACKER_TOKEN``; 404 or 405 on the register route
    means the URL is some other server (a peer server, a web site), and what
    that server's error page says is not repeated."""
    if status == 401:
        if token_sent:
            return "the tracker refused the token in FLASHBACK_TRACKER_TOKEN (HTTP 401)"
        return "the tracker wants a token: set FLASHBACK_TRACKER_TOKEN (HTTP 401)"
    if status in (404, 405):
        return (
            f"not a flashback tracker (HTTP {status} for POST /api/peers/register): "
            "check --tracker / FLASHBACK_TRACKER_URL"
        )
    return f"registration refused (HTTP {status}): {message[:200]}"


class HTTPTrackerAPI:
    """Thin wrapper over an :class:`httpx.AsyncClient` pointed at the tracker."""

    def __init__(self, client: httpx.AsyncClient, *, auth_token: str | None = None) -> None:
        self.client = client
        self.auth_token = auth_token

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise RetryLater(f"tracker unreachable: {unreachable_reason(exc)}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise RetryLater(
                f"tracker answered {response.status_code}: {_error_text(response)}",
                retry_after_s=_retry_after(response),
            )
        return response

    async def register(
        self,
        name: str,
        host: str,
        port: int,
        *,
        identity: Identity | None,
        capabilities: dict[str, Any] | None = None,
        fingerprint: str | None = None,
        direct: Sequence[Candidate] = (),
    ) -> Registration:
        body: dict[str, Any] = {
            "name": name,
            "peer_server": {"host": host, "port": port},
            "capabilities": capabilities or {},
        }
        if fingerprint is not None:
            body["fingerprint"] = fingerprint
        if direct:  # the direct endpoint's addresses (§10.2)
            body["direct"] = [candidate.dump() for candidate in direct]
        headers = {}
        if identity is not None:
            body["peer_id"] = identity.peer_id
            headers["Authorization"] = f"Bearer {identity.token}"
        elif self.auth_token:
            headers["Authorization"] = f"Bearer {self.auth_token}"
        response = await self._send("POST", "/api/peers/register", json=body, headers=headers)
        if response.status_code == 401 and identity is not None:
            raise IdentityRejected(_error_text(response))
        if response.status_code not in (200, 201):
            raise RegistrationRefused(
                refusal_reason(
                    response.status_code,
                    _error_text(response),
                    token_sent="Authorization" in headers,
                )
            )
        data = _json_object(response)
        peer_id, token = data.get("peer_id"), data.get("token")
        if not isinstance(peer_id, str) or not isinstance(token, str):
            raise RetryLater("the tracker's registration answer has no peer_id and token")
        return Registration(
            identity=Identity(peer_id, token),
            heartbeat_interval_s=_seconds(data, "heartbeat_interval"),
            ttl_s=_seconds(data, "ttl"),
            tunnel_port=_port_or_none(data.get("tunnel_port")),
        )

    async def heartbeat(self, identity: Identity) -> float:
        """Returns the heartbeat interval the tracker wants now."""
        response = await self._send(
            "POST",
            "/api/peers/heartbeat",
            json={"peer_id": identity.peer_id},
            headers={"Authorization": f"Bearer {identity.token}"},
        )
        if response.status_code == 404:
            raise UnknownPeer(_error_text(response))
        if response.status_code == 401:
            raise IdentityRejected(_error_text(response))
        if response.status_code != 200:
            raise RetryLater(f"heartbeat answered {response.status_code}")
        return _seconds(_json_object(response), "heartbeat_interval")

    async def leave(self, identity: Identity) -> None:
        response = await self._send(
            "DELETE",
            # the id is the tracker's word, but still one path segment, quoted
            "/api/peers/" + quote(identity.peer_id, safe=""),
            headers={"Authorization": f"Bearer {identity.token}"},
        )
        if response.status_code not in (204, 404):
            raise TrackerError(f"unregister answered {response.status_code}")
