"""Local event fan-out: stdout lines plus live subscribers (``peers --watch``).

Each subscriber gets a bounded memory channel fed with ``send_nowait``; one
that falls behind is dropped (its channel closed) rather than allowed to
stall the daemon. The command re-reads the table when it reconnects.
"""

from __future__ import annotations

import logging
from typing import Any, Final, TextIO

import trio

from flashback.events import emit

log = logging.getLogger(__name__)

SUBSCRIBER_BUFFER: Final = 256


class EventHub:
    def __init__(self, stdout: TextIO | None = None) -> None:
        self._stdout = stdout
        self._subscribers: set[trio.MemorySendChannel[dict[str, Any]]] = set()

    def emit(self, event: str, **fields: Any) -> None:
        emit(event, stream=self._stdout, **fields)
        payload = {"event": event, **fields}
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(payload)
            except trio.WouldBlock:
                log.warning("dropping a local event subscriber that fell behind")
                self._subscribers.discard(channel)
                channel.close()
            except trio.BrokenResourceError:
                self._subscribers.discard(channel)

    def subscribe(self) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        send, receive = trio.open_memory_channel[dict[str, Any]](SUBSCRIBER_BUFFER)
        self._subscribers.add(send)
        return receive

    @property
    def subscribers(self) -> int:
        """How many subscribers are live now (``status --json`` says it as ``watchers``)."""
        return len(self._subscribers)

    def unsubscribe_closed(self) -> None:
        """Forget channels whose receiver went away."""
        for channel in list(self._subscribers):
            stats = channel.statistics()
            if stats.open_receive_channels == 0:
                self._subscribers.discard(channel)
                channel.close()
