"""A TLS stream for carried connections that moves many records per wake-up.

``trio.SSLStream`` hands back one TLS record (at most 16 KiB of plaintext) per
``receive_some``, whatever was asked for: ``ssl.SSLObject.read`` stops at a
record boundary. A tunnel or a direct route then copies a file in ~65,000
rounds per GiB, each a trip through the scheduler, a ``send`` on the loopback
socket and a wake-up of the process behind it. This stream drives the same
``ssl.SSLObject`` over memory BIOs itself: one receive from the transport (up
to :data:`RECEIVE_BYTES` of ciphertext) is decrypted record after record into
one answer, and one ``send_all`` encrypts the whole buffer into records that
go out in one transport send.

Same wire, same context, same checks as ``trio.SSLStream`` (it interoperates
with it): errors of TLS or of the transport are ``trio.BrokenResourceError``,
an EOF without ``close_notify`` too. One task may receive while another
sends; output the receiving side produces (TLS 1.3 post-handshake messages)
is sent in order with the sender's under one lock.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Final, Literal

import trio

#: ciphertext asked of the transport per receive (the kernel gives what it has)
RECEIVE_BYTES: Final = 256 * 1024
#: plaintext a receive_some returns at most when the caller names no size
DEFAULT_MAX_BYTES: Final = 256 * 1024


class BulkTLSStream(trio.abc.Stream):
    """TLS over *transport* with ``context``; call :meth:`do_handshake` first."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._send_lock = trio.Lock()
        self._handshaken = False
        self._broken = False
        self._closed = False

    # -- what the tunnel ends ask of a TLS stream ------------------------------------

    def getpeercert(self, binary_form: Literal[True] = True) -> bytes | None:
        """The peer's certificate, DER (the only form the tunnel ends use)."""
        return self._ssl.getpeercert(binary_form=True)

    def selected_alpn_protocol(self) -> str | None:
        return self._ssl.selected_alpn_protocol()

    # -- the transport ---------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this TLS stream is closed")
        if self._broken:
            raise trio.BrokenResourceError("this TLS stream is broken")

    def _fail(self, exc: BaseException) -> trio.BrokenResourceError:
        self._broken = True
        return trio.BrokenResourceError(f"TLS: {exc}")

    async def _flush(self) -> None:
        """Send what the TLS object wrote, in the order it wrote it."""
        async with self._send_lock:
            data = self._outgoing.read()
            if data:
                try:
                    await self.transport_stream.send_all(data)
                except (trio.BrokenResourceError, OSError) as exc:
                    raise self._fail(exc) from exc

    async def _fill(self) -> None:
        """One receive of ciphertext from the transport into the TLS object."""
        try:
            data = await self.transport_stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, OSError) as exc:
            raise self._fail(exc) from exc
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    # -- handshake, receive, send, close --------------------------------------------

    async def do_handshake(self) -> None:
        self._check()
        while not self._handshaken:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLError as exc:
                raise self._fail(exc) from exc
            self._handshaken = True
        await self._flush()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._check()
        if not self._handshaken:
            await self.do_handshake()
        want = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        if want < 1:
            raise ValueError("max_bytes must be >= 1")
        waited = False
        while True:
            parts: list[bytes] = []
            got = 0
            ended = False
            while got < want:
                try:
                    chunk = self._ssl.read(want - got)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    ended = True
                    break
                except ssl.SSLError as exc:
                    if parts:
                        break  # what was decrypted first goes out; the error comes next
                    raise self._fail(exc) from exc
                if not chunk:
                    ended = True  # close_notify
                    break
                parts.append(chunk)
                got += len(chunk)
            if self._outgoing.pending:
                await self._flush()
                waited = True
            if parts or ended:
                if not waited:
                    await trio.lowlevel.checkpoint()
                return parts[0] if len(parts) == 1 else b"".join(parts)
            await self._fill()
            waited = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check()
        if not self._handshaken:
            await self.do_handshake()
        view = memoryview(data)
        try:
            while view:  # a memory BIO never pushes back: this takes it all at once
                view = view[self._ssl.write(view) :]
        except ssl.SSLError as exc:
            raise self._fail(exc) from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        self._check()
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send ``close_notify`` (not waiting for the other's), then close the transport."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._handshaken and not self._broken:
                # SSLWantReadError: the other side's close_notify is not awaited
                with contextlib.suppress(ssl.SSLError):
                    self._ssl.unwrap()
                async with self._send_lock:
                    data = self._outgoing.read()
                    if data:
                        with contextlib.suppress(
                            trio.BrokenResourceError, trio.ClosedResourceError, OSError
                        ):
                            await self.transport_stream.send_all(data)
        finally:
            await self.transport_stream.aclose()
