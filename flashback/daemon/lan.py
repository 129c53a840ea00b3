"""LAN discovery over mDNS / DNS-SD (§12), as one task of the daemon's nursery.

python-zeroconf runs its own asyncio loop in its own thread, and its
:class:`~zeroconf.ServiceBrowser` calls our handler from a third one. Both
are bridged into trio so that their lifetime is a trio task's:

- its blocking calls (open the sockets, register = probe and announce,
  update, resolve, and the close that sends goodbye packets and joins its
  threads) run in ``trio.to_thread.run_sync`` -- never abandoned on
  cancel, so no thread outlives :func:`run_lan`;
- its callbacks go through :class:`Bridge`: ``TrioToken.run_sync_soon``
  puts a notice into a BOUNDED memory channel; when the channel (or the
  count of notices on their way to it) is full the notice is dropped and
  counted, so a flood of announcements costs trio nothing but that count.

Everything a stranger announces is judged by
:func:`flashback.protocol.lan.parse_announcement` and kept in a
:class:`~flashback.protocol.lan.LanTable` (bounded per announced address and
overall). A clean stop sends goodbye packets (TTL 0) and leaves the other
tables at once. A daemon that dies without them (a SIGKILL, a pulled cable)
cannot: python-zeroconf keeps a PTR record at least 1125 s whatever its TTL
(a guard against refresh storms), so its browser alone would list the dead
peer for ~19 minutes. We therefore announce SRV/TXT/A with :data:`LAN_TTL_S`
(not the library's 120 s / 75 min) and check every listed peer every
:data:`LAN_RECHECK_S`: from the cache while its records live, by one query
once they expired -- a live peer answers in milliseconds, a dead one does
not, and leaves within ``LAN_TTL_S + LAN_RECHECK_S`` plus that query's
:data:`RESOLVE_TIMEOUT_MS`.

Events: ``lan-peer-found`` / ``lan-peer-lost`` ``{peer_id, name, fingerprint}``.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import ifaddr
import trio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from flashback.protocol.lan import (
    MAX_TXT_BYTES,
    SERVICE_TYPE,
    Ignored,
    LanPeer,
    LanTable,
    instance_label,
    parse_announcement,
    txt_record,
)
from flashback.shutdown import Shutdown

log = logging.getLogger(__name__)

#: TTL of every record we announce (SRV, TXT, PTR, A); see the module docstring
LAN_TTL_S: Final = 20
#: how often every listed LAN peer is checked (see the module docstring)
LAN_RECHECK_S: Final = 5
#: notices from zeroconf's thread waiting for trio; past this they are dropped
BRIDGE_CAPACITY: Final = 128
#: how long one resolve may wait for a record the cache lacks (it holds up shutdown)
RESOLVE_TIMEOUT_MS: Final = 1000

Emit = Callable[..., None]
#: what we pass as ``Zeroconf(interfaces=...)``: every interface, or these addresses
Interfaces = InterfaceChoice | Sequence[str]


@dataclass(frozen=True)
class Notice:
    """What the browser's thread tells trio: a service changed, with what the cache has."""

    kind: Literal["added", "updated", "removed"]
    service: str
    # from the cache, when it had the service whole (else trio resolves it)
    resolved: tuple[dict[bytes, bytes | None], list[str], int | None, int] | None = None


class Bridge:
    """From any thread into trio, bounded: ``push`` never blocks and never raises."""

    def __init__(self, capacity: int = BRIDGE_CAPACITY) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.send, self.receive = trio.open_memory_channel[Notice](capacity)
        self.capacity = capacity
        self.dropped = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    def push(self, notice: Notice) -> None:
        with self._lock:
            if self._in_flight >= self.capacity:
                self.dropped += 1
                return
            self._in_flight += 1
        try:
            self._token.run_sync_soon(self._put, notice)
        except trio.RunFinishedError:  # trio is gone: nobody to tell
            with self._lock:
                self._in_flight -= 1

    def _put(self, notice: Notice) -> None:  # in trio's thread
        with self._lock:
            self._in_flight -= 1
        try:
            self.send.send_nowait(notice)
        except trio.WouldBlock:
            with self._lock:
                self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass


def _notice_from_cache(
    zc: Zeroconf, service_type: str, name: str, kind: Literal["added", "updated"]
) -> Notice:
    """In the browser's thread: the service as the cache has it (no network I/O)."""
    info = ServiceInfo(service_type, name)
    if not info.load_from_cache(zc):
        return Notice(kind, name)
    return Notice(kind, name, _parts(info))


def _parts(info: ServiceInfo) -> tuple[dict[bytes, bytes | None], list[str], int | None, int]:
    text = info.text or b""
    if len(text) > MAX_TXT_BYTES:  # not even parsed
        return {}, [], None, len(text)
    return dict(info.properties), info.parsed_scoped_addresses(), info.port, len(text)


class Announcer:
    """Our own service: what it says, built again when the peer id changes."""

    def __init__(
        self, name: str, fingerprint: str, port: int, ttl_s: int, addresses: Sequence[str]
    ) -> None:
        self.name, self.fingerprint, self.port, self.ttl_s = name, fingerprint, port, ttl_s
        self.addresses = list(addresses)
        label = instance_label(name, fingerprint)
        self.service = f"{label}.{SERVICE_TYPE}"
        self.server = f"{label}.local."

    def info(self, peer_id: str | None) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            self.service,
            port=self.port,
            properties=txt_record(peer_id, self.name, self.fingerprint),
            server=self.server,
            host_ttl=self.ttl_s,
            other_ttl=self.ttl_s,
            parsed_addresses=self.addresses,
        )


def lan_addresses(interfaces: Interfaces = InterfaceChoice.All) -> list[str]:
    """The IPv4 addresses our A records carry: those of *interfaces*, else every
    non-loopback one this machine has (what other peers can dial)."""
    if not isinstance(interfaces, InterfaceChoice):
        return [a for a in interfaces if ipaddress.ip_address(a).version == 4]
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback:
                found.append(ip.ip)
    return found


def _open(interfaces: Interfaces) -> Zeroconf:
    return Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only, use_asyncio=False)


async def run_lan(
    *,
    name: str,
    fingerprint: str,
    port: int,
    table: LanTable,
    shutdown: Shutdown,
    emit: Emit,
    peer_id: Callable[[], str | None] = lambda: None,
    peer_id_changed: Callable[[], Any] | None = None,
    interfaces: Interfaces = InterfaceChoice.All,
    ttl_s: int = LAN_TTL_S,
    bridge: Bridge | None = None,
    task_status: trio.TaskStatus[Bridge] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce *port* (the SRV port: our direct endpoint's) and keep *table* current
    from what the LAN announces, until *shutdown*; then say goodbye and close.

    *peer_id* gives our tracker peer id now; *peer_id_changed* (an awaitable
    factory, e.g. ``ctx.wait_identity_change``) wakes us to announce a new one.
    """
    bridge = bridge or Bridge()
    addresses = await trio.to_thread.run_sync(lan_addresses, interfaces)
    announcer = Announcer(name, fingerprint, port, ttl_s, addresses)
    try:
        zc = await trio.to_thread.run_sync(_open, interfaces)
    except OSError as exc:  # no multicast here (no interface, a sandbox): the rest works
        log.warning("LAN discovery is off: cannot open the mDNS sockets: %s", exc)
        task_status.started(bridge)
        await shutdown.wait()
        return
    browser: ServiceBrowser | None = None
    try:

        def on_change(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            # zeroconf's browser thread: an exception here would end its thread
            try:
                if state_change is ServiceStateChange.Removed:
                    bridge.push(Notice("removed", name))
                elif state_change is ServiceStateChange.Added:
                    bridge.push(_notice_from_cache(zeroconf, service_type, name, "added"))
                else:
                    bridge.push(_notice_from_cache(zeroconf, service_type, name, "updated"))
            except Exception:  # pragma: no cover - the library's own bugs
                log.exception("LAN browser callback failed")

        browser = await trio.to_thread.run_sync(
            lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        )
        current_id = peer_id()
        await trio.to_thread.run_sync(
            lambda: zc.register_service(announcer.info(current_id), allow_name_change=True)
        )
        log.info("announcing %s on the LAN (port %d)", announcer.service, port)
        task_status.started(bridge)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_apply_notices, zc, bridge, table, emit)
            nursery.start_soon(_recheck, zc, table, emit, bridge)
            if peer_id_changed is not None:
                nursery.start_soon(_follow_peer_id, zc, announcer, peer_id, peer_id_changed)
            await shutdown.wait()
            nursery.cancel_scope.cancel()
    finally:
        # Not abandoned on cancel: this returns only once zeroconf's threads are joined.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_close, zc, browser)
        bridge.send.close()


def _close(zc: Zeroconf, browser: ServiceBrowser | None) -> None:
    if browser is not None:
        browser.cancel()  # joins the browser's thread
    zc.close()  # goodbye packets for our service, then its loop's thread is joined


async def _follow_peer_id(
    zc: Zeroconf,
    announcer: Announcer,
    peer_id: Callable[[], str | None],
    changed: Callable[[], Any],
) -> None:
    announced = peer_id()
    while True:
        await changed()
        now = peer_id()
        if now != announced:
            announced = now
            await trio.to_thread.run_sync(zc.update_service, announcer.info(now))


async def _apply_notices(zc: Zeroconf, bridge: Bridge, table: LanTable, emit: Emit) -> None:
    async for notice in bridge.receive:
        if notice.kind == "removed":
            gone = table.gone(notice.service)
            if gone is not None:
                _emit(emit, "lan-peer-lost", gone)
            continue
        resolved = notice.resolved
        if resolved is None:
            resolved = await trio.to_thread.run_sync(_resolve, zc, notice.service)
            if resolved is None:
                log.debug("LAN service %r did not resolve", notice.service)
                continue
        properties, addresses, port, text_bytes = resolved
        try:
            peer = parse_announcement(
                notice.service, properties, addresses, port, text_bytes=text_bytes
            )
        except Ignored as exc:
            log.debug("ignoring LAN service %r: %s", notice.service, exc)
            if table.gone(notice.service) is not None:  # it was fine before: not any more
                log.info("LAN service %r changed into one we ignore", notice.service)
            continue
        known = notice.service in table
        for evicted in table.seen(peer):
            _emit(emit, "lan-peer-lost", evicted)
        if not known and peer.fingerprint != table.own_fingerprint:
            _emit(emit, "lan-peer-found", peer)


async def _recheck(zc: Zeroconf, table: LanTable, emit: Emit, bridge: Bridge) -> None:
    """Drop the peers whose records expired and who no longer answer (a dead peer);
    say (once per round) when a flood made the bridge drop notices."""
    dropped = 0
    while True:
        await trio.sleep(LAN_RECHECK_S)
        if bridge.dropped > dropped:
            log.warning(
                "dropped %d LAN notices (a flood of announcements?)", bridge.dropped - dropped
            )
            dropped = bridge.dropped
        for peer in table.peers():
            resolved = await trio.to_thread.run_sync(_resolve, zc, peer.service)
            if resolved is None and table.gone(peer.service) is not None:
                _emit(emit, "lan-peer-lost", peer)


def _resolve(
    zc: Zeroconf, service: str
) -> tuple[dict[bytes, bytes | None], list[str], int | None, int] | None:
    info = zc.get_service_info(SERVICE_TYPE, service, timeout=RESOLVE_TIMEOUT_MS)
    return None if info is None else _parts(info)


def _emit(emit: Emit, event: str, peer: LanPeer) -> None:
    emit(event, peer_id=peer.peer_id, name=peer.name, fingerprint=peer.fingerprint)
