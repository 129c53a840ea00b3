"""Local commands (``status``, ``peers``, ``ls``, ``get``, ``stream``): the daemon's clients.

They reach the running daemon through the Unix socket in the state
directory, then talk to other peers' servers directly over HTTP.
"""

from __future__ import annotations

import difflib
import json
import os
import signal
import socket
import stat
import struct
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx
import trio

from flashback.config import private_existing, state_dir
from flashback.daemon import peer_lines
from flashback.daemon.control_socket import control_socket_path
from flashback.errors import ConfigError, FlashbackError
from flashback.protocol.fingerprint import is_fingerprint
from flashback.protocol.hosts import is_valid_host
from flashback.protocol.messages import PeerInfo
from flashback.protocol.strict_json import loads_strict
from flashback.terminal import printable
from flashback.transfer import (
    at,
)

TIMEOUT_S = 10.0
#: probing the direct route (0.5 s), then a tunnel invite (10 s) and its setup
CONNECT_TIMEOUT_S = 30.0
# ``ls`` pages through a peer's directory; a peer decides what the pages say,
# so it may not make us loop or grow without end.
LIST_PAGE_ENTRIES: Final = 10_000
MAX_LIST_PAGES: Final = 100
MAX_LIST_ENTRIES: Final = 100_000
MAX_LIST_PAGE_BYTES: Final = 8 * 1024 * 1024
LIST_DEADLINE_S: Final = 120.0
MAX_ERROR_BYTES: Final = 16 * 1024


class DaemonUnavailable(FlashbackError):
    """No daemon answers on the control socket (exit status 1)."""


async def trusted_control_socket(env: Mapping[str, str]) -> Path:
    """The control socket, once it is sure that only this user's daemon can be behind it.

    Another local user can create the ``/tmp`` fallback state directory first
    and listen on a ``control.sock`` in it: the directory and the socket must
    be ours and not writable by others (the daemon's own rule,
    :func:`~flashback.config.check_private`), and the process that answers
    must run as us (``SO_PEERCRED``). A refusal is a ConfigError: exit 2.
    """
    directory = state_dir(env)
    if private_existing(directory) is None:
        raise DaemonUnavailable(f"no flashback daemon is running (no directory {directory})")
    path = control_socket_path(directory)
    info = private_existing(path)
    if info is None:
        raise DaemonUnavailable(f"no flashback daemon is running (no socket at {path})")
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{path} is not a socket; refusing to use it")
    await _check_daemon_uid(path)
    return path


async def _check_daemon_uid(path: Path) -> None:
    """Second line: the process listening on *path* runs as this user."""
    if not hasattr(socket, "SO_PEERCRED"):  # pragma: no cover - Linux has it
        return
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            await probe.connect(str(path))
        except OSError as exc:
            raise DaemonUnavailable(
                f"no flashback daemon is running (socket {path}: {exc.strerror})"
            ) from exc
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.getuid():
        raise ConfigError(f"the process on {path} runs as uid {uid}, not as you; refusing it")


@asynccontextmanager
async def control_client(env: Mapping[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    path = await trusted_control_socket(env)
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://flashback", timeout=TIMEOUT_S
    ) as client:
        yield client


async def _get_json(client: httpx.AsyncClient, url: str) -> Any:
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        raise DaemonUnavailable(f"the daemon does not answer: {exc.__class__.__name__}") from exc
    response.raise_for_status()
    return response.json()


async def _get_object(env: Mapping[str, str], route: str) -> dict[str, Any]:
    async with control_client(env) as client:
        payload = await _get_json(client, route)
    if not isinstance(payload, dict):
        raise DaemonUnavailable(f"the daemon answered {route} with something odd")
    return payload


async def fetch_status(env: Mapping[str, str]) -> dict[str, Any]:
    return await _get_object(env, "/status")


async def fetch_peers(env: Mapping[str, str]) -> dict[str, Any]:
    return await _get_object(env, "/peers")


async def fetch_ui_url(env: Mapping[str, str]) -> str:
    """The running daemon's UI URL, token included (the control socket is ours alone)."""
    async with control_client(env) as client:
        payload = await _get_json(client, "/ui")
    url = payload.get("url") if isinstance(payload, dict) else None
    if not isinstance(url, str) or not url.isprintable():
        raise FlashbackError("the daemon has no web UI running", code="no_ui")
    return url


@dataclass(frozen=True)
class ListedPeer:
    """A row of ``GET /peers`` that a command names: tracker, LAN or peer book (§12)."""

    key: str  # what the daemon is asked for: the peer id, else the fingerprint
    name: str
    peer_id: str | None
    fingerprint: str | None
    source: str

    @classmethod
    def parse(cls, row: Any) -> ListedPeer:
        if not isinstance(row, dict):
            raise FlashbackError("the daemon listed a peer that is not an object")
        source = row.get("source", "tracker")
        if source == "tracker" or row.get("peer_server") is not None:
            info = PeerInfo.parse(row)
            return cls(info.peer_id, info.name, info.peer_id, info.fingerprint, "tracker")
        peer_id, name, fingerprint = row.get("peer_id"), row.get("name"), row.get("fingerprint")
        if not isinstance(fingerprint, str) or not is_fingerprint(fingerprint):
            raise FlashbackError("the daemon listed a peer without a fingerprint")
        if not isinstance(name, str):
            raise FlashbackError("the daemon listed a peer without a name")
        if peer_id is not None and not isinstance(peer_id, str):
            raise FlashbackError("the daemon listed a peer with a bad peer id")
        return cls(peer_id or fingerprint, name, peer_id, fingerprint, str(source))


def resolve_peer(listing: dict[str, Any], key: str) -> ListedPeer:
    """The listed peer *key* names: a peer id, a full fingerprint, else a unique name."""
    peers = [ListedPeer.parse(p) for p in listing.get("peers", [])]
    for peer in peers:
        if key in (peer.peer_id, peer.fingerprint):
            return peer
    named = [p for p in peers if p.name == key]
    if len(named) == 1:
        return named[0]
    # The name as the tracker lists it now wins over remembered peers of that
    # name: the daemon's name pin then refuses an impostor, naming both keys
    # (what ssh does for the host typed), instead of "several peers".
    live = [p for p in named if p.source == "tracker"]
    if len(live) == 1:
        return live[0]
    if len(named) > 1:
        ids = ", ".join(
            f"{label} {printable(p.key)}"
            for p, label in zip(named, peer_lines.labels(vars(p) for p in named), strict=True)
        )
        raise ConfigError(f"several peers are named {key!r}; use a peer id or fingerprint: {ids}")
    tracker = listing.get("tracker") or {}
    if tracker.get("url") and not tracker.get("connected"):
        state = peer_lines.tracker_state(tracker)
        raise FlashbackError(
            f"no peer '{printable(key)}' known: no tracker connection ({state}), "
            f"and no LAN or remembered peer of that name{_suggestion(key, peers)}",
            code="no_tracker",
        )
    raise FlashbackError(
        f"no peer '{printable(key)}' is online{_suggestion(key, peers)}", code="unknown_peer"
    )


def _suggestion(key: str, peers: list[ListedPeer]) -> str:
    """`` (did you mean 'alice'?)`` for a typo'd name, else empty."""
    close = difflib.get_close_matches(key, sorted({p.name for p in peers}), n=1)
    return f" (did you mean '{printable(close[0])}'?)" if close else ""


def http_url(host: str, port: int, path: str = "/") -> httpx.URL:
    """A URL from parts, never pasted: *host* must be a host name or an IP literal.

    *path* is percent-encoded here (``/`` kept), so a peer's file name or
    token cannot add a query, a fragment or another host.
    """
    if not is_valid_host(host):
        raise FlashbackError(
            f"peer host {host!r} is not a host name or IP address", code="invalid_peer"
        )
    return httpx.URL(scheme="http", host=host, port=port, path=quote(path, safe="/"))


async def post_control(
    env: Mapping[str, str], route: str, body: dict[str, Any], *, timeout_s: float
) -> dict[str, Any]:
    """POST *body* to the daemon's control API; its JSON error becomes our one line."""
    async with control_client(env) as client:
        try:
            response = await client.post(route, json=body, timeout=timeout_s)
        except httpx.HTTPError as exc:
            name = exc.__class__.__name__
            raise DaemonUnavailable(f"the daemon does not answer: {name}") from exc
    return _answer_or_raise(response)


async def post_connect(env: Mapping[str, str], body: dict[str, Any]) -> dict[str, Any]:
    return await post_control(env, "/connect", body, timeout_s=CONNECT_TIMEOUT_S)


def _answer_or_raise(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    if response.status_code != 200 or not isinstance(payload, dict):
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        message = error.get("message") or f"the daemon answered HTTP {response.status_code}"
        if error.get("code") == "ambiguous_peer":
            raise ConfigError(message)
        raise FlashbackError(message, code=error.get("code"))
    return payload


async def reach_peer(env: Mapping[str, str], key: str) -> tuple[ListedPeer, httpx.URL]:
    """The peer *key* names and an origin that reaches its server, direct or by tunnel
    (the daemon decides, INTERFACE §6.3; a LAN or book peer by its endpoint, §12)."""
    peer = resolve_peer(await fetch_peers(env), key)
    answer = await post_connect(env, {"peer": peer.key})
    return peer, httpx.URL(answer["url"])


WATCHED_EVENTS = frozenset(
    {"peer-joined", "peer-updated", "peer-left", "tracker-connected", "tracker-disconnected"}
)


async def watch_peers(env: Mapping[str, str], *, as_json: bool) -> int:
    async with control_client(env) as client:
        try:
            async with client.stream(
                "GET",
                "/events",
                params={"snapshot": "1"},
                timeout=httpx.Timeout(TIMEOUT_S, read=None),
            ) as response:
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("event") == "peers-snapshot":
                        if not as_json:
                            peer_lines.print_peers(event)
                    elif event.get("event") in WATCHED_EVENTS:
                        text = json.dumps(event) if as_json else peer_lines.format_event(event)
                        if text:
                            print(text, flush=True)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the daemon went away mid-stream: that is how a watch ends
        except httpx.HTTPError as exc:
            raise DaemonUnavailable(f"lost the daemon: {exc.__class__.__name__}") from exc
    print("flashback: the daemon stopped", file=sys.stderr)
    return 1


async def list_peer_dir(env: Mapping[str, str], key: str, path: str) -> dict[str, Any]:
    _peer, base = await reach_peer(env, key)
    url = at(base, "/api/files/" + path.strip("/"))
    paging = ListingPaging()
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
        with trio.move_on_after(LIST_DEADLINE_S) as deadline:
            while paging.cursor is not _DONE:
                params = {"limit": str(LIST_PAGE_ENTRIES)}
                if paging.cursor is not None:
                    params["cursor"] = paging.cursor
                try:
                    paging.add(await _fetch_page(http, url, params, key, path))
                except FlashbackError as exc:
                    if exc.code == "not_found" and await _is_file(http, base, path):
                        raise ConfigError(
                            f"{path!r} is a file on peer {key!r}, not a directory: "
                            "fetch it with flashback get"
                        ) from None
                    raise
    if deadline.cancelled_caught:
        raise FlashbackError(
            f"peer '{printable(key)}' took over {LIST_DEADLINE_S:.0f} s to list {path!r}"
        )
    return {"path": paging.path, "entries": paging.entries, "next_cursor": None}


async def _fetch_page(
    http: httpx.AsyncClient, url: httpx.URL, params: dict[str, str], key: str, path: str
) -> Any:
    """One listing page as parsed JSON, never more than MAX_LIST_PAGE_BYTES of it."""
    try:
        async with http.stream("GET", url, params=params) as response:
            if response.status_code == 404:
                raise FlashbackError(f"no directory {path!r} on peer {key!r}", code="not_found")
            if response.status_code == 403:  # a forward the owner refused (§11) says why
                head = b""
                async for chunk in response.aiter_bytes():
                    head += chunk
                    if len(head) > MAX_ERROR_BYTES:
                        break
                raise FlashbackError(_error_message(head, key), code="forbidden")
            if response.status_code != 200:
                raise FlashbackError(
                    f"peer '{printable(key)}' answered HTTP {response.status_code}"
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_LIST_PAGE_BYTES:
                    raise FlashbackError(
                        f"peer '{printable(key)}' sent a listing page over "
                        f"{MAX_LIST_PAGE_BYTES // (1024 * 1024)} MiB"
                    )
    except httpx.HTTPError as exc:
        raise FlashbackError(f"peer {key!r} does not answer: {exc.__class__.__name__}") from exc
    try:
        return loads_strict(bytes(body))
    except ValueError:
        raise FlashbackError(f"peer '{printable(key)}' sent a listing that is not JSON") from None


_DONE: Final = object()


async def _is_file(http: httpx.AsyncClient, base: httpx.URL, path: str) -> bool:
    """Does the peer serve *path* as a file? (A HEAD of its download answers 200.)"""
    try:
        response = await http.head(at(base, "/download/" + path.strip("/")))
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _error_message(body: bytes, key: str) -> str:
    """The message of a JSON error body (bounded), else a plain refusal line."""
    try:
        message = loads_strict(body[:MAX_ERROR_BYTES])["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = None
    if isinstance(message, str) and message:
        return f"peer '{printable(key)}' refused: {printable(message[:500])}"
    return f"peer '{printable(key)}' answered HTTP 403"


class ListingPaging:
    """Sans-IO: collect listing pages, refusing what a hostile peer could make endless.

    At most MAX_LIST_PAGES pages and MAX_LIST_ENTRIES entries; a cursor seen
    before would loop, so it ends the listing with an error too.
    """

    def __init__(self) -> None:
        self.path = ""
        self.entries: list[dict[str, Any]] = []
        self.cursor: Any = None  # None: first page; _DONE: finished; else the next cursor
        self.pages = 0
        self._seen: set[str] = set()

    def add(self, page: Any) -> None:
        entries, cursor = _parse_page(page)
        self.pages += 1
        if self.pages == 1:
            self.path = page.get("path") if isinstance(page.get("path"), str) else ""
        if len(self.entries) + len(entries) > MAX_LIST_ENTRIES:
            raise FlashbackError(f"the peer's listing has over {MAX_LIST_ENTRIES} entries")
        self.entries += entries
        if cursor is None:
            self.cursor = _DONE
            return
        if cursor in self._seen:
            raise FlashbackError("the peer's listing repeats a cursor (it would never end)")
        if self.pages >= MAX_LIST_PAGES:
            raise FlashbackError(f"the peer's listing goes on for over {MAX_LIST_PAGES} pages")
        self._seen.add(cursor)
        self.cursor = cursor


_MAX_CURSOR_CHARS: Final = 1024


def _parse_page(page: Any) -> tuple[list[dict[str, Any]], str | None]:
    """The entries and next cursor of one page, or a FlashbackError naming what is wrong."""
    if not isinstance(page, dict) or not isinstance(page.get("entries"), list):
        raise FlashbackError("the peer sent a listing without an entries list")
    for entry in page["entries"]:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and entry.get("type") in ("file", "dir")
            and (entry["type"] == "dir" or _is_count(entry.get("size")))
        ):
            raise FlashbackError("the peer sent a malformed listing entry")
    cursor = page.get("next_cursor")
    if cursor is not None and (
        not isinstance(cursor, str) or not 1 <= len(cursor) <= _MAX_CURSOR_CHARS
    ):
        raise FlashbackError("the peer sent a malformed next_cursor")
    return page["entries"], cursor


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def print_listing(listing: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(listing))
        return
    for entry in listing["entries"]:
        name = entry["name"] + ("/" if entry["type"] == "dir" else "")
        size = "" if entry["type"] == "dir" else str(entry["size"])
        print(printable(f"{size:>12}  {entry.get('mtime', '')}  {name}"))


async def connect(env: Mapping[str, str], key: str, *, as_json: bool) -> int:
    """``flashback connect``: print the ``peer-url`` line and hold the forward until
    Ctrl-C or SIGTERM (exit 0) or until the daemon goes away (exit 1)."""
    peer = resolve_peer(await fetch_peers(env), key)
    stopped_by_signal = False
    try:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                nonlocal stopped_by_signal
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        stopped_by_signal = True
                        nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await _hold_forward(env, peer, as_json=as_json)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # the daemon's refusal (not shared, unreachable...) is one line, not a traceback
        only = group.exceptions[0] if len(group.exceptions) == 1 else None
        if isinstance(only, FlashbackError):
            raise only from None
        raise
    if stopped_by_signal:
        return 0
    print("flashback: the daemon stopped", file=sys.stderr)
    return 1


async def _hold_forward(env: Mapping[str, str], peer: ListedPeer, *, as_json: bool) -> None:
    async with control_client(env) as client:
        try:
            async with client.stream(
                "POST",
                "/connect",
                json={"peer": peer.key, "hold": True},
                timeout=httpx.Timeout(CONNECT_TIMEOUT_S, read=None),
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    _answer_or_raise(response)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if as_json:
                        print(json.dumps(event), flush=True)
                    else:
                        text = f"{event['url']}  ({peer.name}, {event['route']}; Ctrl-C to close)"
                        print(printable(text), flush=True)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the daemon went away: that ends the hold
        except httpx.HTTPError as exc:
            raise DaemonUnavailable(f"lost the daemon: {exc.__class__.__name__}") from exc


# -- who may connect to me (§11) ------------------------------------------------

ACCESS_ACTIONS: Final = ("allow", "deny", "forget")


async def change_access(env: Mapping[str, str], action: str, key: str) -> dict[str, Any]:
    """``allow``/``deny``/``forget`` PEER on the running daemon (effective at once)."""
    if action not in ACCESS_ACTIONS:
        raise ConfigError(f"unknown access action {action!r}")
    try:
        return await post_control(env, f"/access/{action}", {"peer": key}, timeout_s=TIMEOUT_S)
    except DaemonUnavailable:
        raise
    except FlashbackError as exc:
        if exc.code in ("bad_fingerprint", "bad_request", "invalid_json"):
            raise ConfigError(exc.message) from exc  # the daemon says bad input: exit 2
        raise


async def forget_requester(env: Mapping[str, str], key: str) -> list[dict[str, Any]]:
    """The owner-side half of ``forget``: through the daemon if one runs, else in the
    files of every identity in the data directory (no daemon owns them then)."""
    try:
        answer = await change_access(env, "forget", key)
    except DaemonUnavailable:
        from dataclasses import asdict

        from flashback.config import data_dir
        from flashback.daemon.access import forget_in_file
        from flashback.daemon.identity import IDENTITIES_DIR

        removed: list[dict[str, Any]] = []
        base = data_dir(env) / IDENTITIES_DIR
        if base.is_dir():
            for directory in sorted(base.iterdir()):
                if directory.is_dir():
                    removed += [asdict(pin) for pin in forget_in_file(directory, key)]
        return removed
    forgotten = answer.get("forgotten")
    return forgotten if isinstance(forgotten, list) else []
