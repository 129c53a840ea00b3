"""One accept loop: a connection cap, back-off on descriptor exhaustion, containment.

Every listener the daemon owns outside Hypercorn (the direct endpoint, local
forwards) is served here, in the manner of trio's ``serve_listeners`` and its
``_run_handler``:

- at most *max_connections* connections are handled at once. Without a
  *per_address* share the loop stops accepting while full (the kernel's
  backlog waits); with one, every connection is admitted and, when the table
  is full, the oldest connection of the address holding most is cut
  (:class:`~flashback.protocol.fairshare.FairShare`) -- one stranger's
  thousand half-open connections never lock out a newcomer;
- ``EMFILE``/``ENFILE``/``ENOBUFS``/``ENOMEM`` from ``accept`` is logged once
  per episode, then the loop sleeps and retries (the process is out of
  descriptors: closing connections will free some);
- one connection's failure ends that connection only: its handler's error is
  logged, and the stream is closed in a ``finally`` whatever happened.
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

import trio

from flashback.protocol.fairshare import FairShare, share_address

log = logging.getLogger(__name__)

#: accept errors that mean "out of resources for now", as in trio's serve_listeners
CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
BACKOFF_S: Final = 0.1

Handler = Callable[[trio.SocketStream], Awaitable[object]]


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    return str(name[0]) if isinstance(name, tuple) else "local"


async def serve_listener(
    handler: Handler,
    listener: trio.SocketListener,
    *,
    max_connections: int,
    per_address: int | None = None,
    name: str = "listener",
    backoff_s: float = BACKOFF_S,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept on *listener* forever and run ``handler(stream)`` for each connection.

    Closes the listener when cancelled; connections still running are
    cancelled with it (they belong to this loop's nursery).
    """
    share: FairShare[str, int] | None = (
        FairShare(max_connections, per_address) if per_address is not None else None
    )
    slots = trio.Semaphore(max_connections)
    scopes: dict[int, trio.CancelScope] = {}
    ids = itertools.count()

    async def run_one(stream: trio.SocketStream, conn_id: int, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await handler(stream)
        except Exception as exc:  # containment: this connection ends, the loop goes on
            log.info("%s: a connection failed: %s: %s", name, type(exc).__name__, exc)
        finally:
            scopes.pop(conn_id, None)
            if share is not None:
                share.release(conn_id)
            else:
                slots.release()
            await trio.aclose_forcefully(stream)

    async with listener, trio.open_nursery() as nursery:
        task_status.started()
        exhausted = False
        while True:
            if share is None:
                await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                if share is None:
                    slots.release()
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                if not exhausted:
                    log.error("%s: accept failed (%s); retrying every %.1f s", name, exc, backoff_s)
                    exhausted = True
                await trio.sleep(backoff_s)
                continue
            exhausted = False
            conn_id = next(ids)
            if share is not None:
                victim = share.admit(share_address(_peer_host(stream)), conn_id).evicted
                if victim is not None and victim[1] in scopes:
                    scopes[victim[1]].cancel()
            scope = trio.CancelScope()
            scopes[conn_id] = scope
            nursery.start_soon(run_one, stream, conn_id, scope)
