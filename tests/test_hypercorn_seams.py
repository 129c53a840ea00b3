"""The Hypercorn internals :mod:`flashback.httpserver` builds on, checked by name and shape.

The pin in pyproject.toml (``hypercorn>=0.18,<0.19``) stays only with this
test: each assertion below names one private part the bounded server
subclasses or reads, so an upgrade that moves one fails here, by name,
instead of in a hardening test far away (or in production).
"""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys

import h11
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

from flashback.httpserver import _BoundedConnection


def test_the_tcp_server_parts_we_override_are_still_there() -> None:
    for name in ("_read_data", "_close", "protocol_send", "run"):
        method = getattr(TCPServer, name)
        assert inspect.iscoroutinefunction(method), name
        assert name in vars(TCPServer), f"TCPServer.{name} moved or was renamed"
        assert getattr(_BoundedConnection, name) is not method  # we do override it
    init = inspect.signature(TCPServer.__init__).parameters
    assert list(init)[1:5] == ["app", "config", "context", "state"]
    source = inspect.getsource(TCPServer)
    for attribute in ("self.stream", "self.send_lock", "self.idle_task", "self._idle_timeout"):
        assert attribute in source, f"TCPServer no longer has {attribute}"


def test_the_protocol_wrapper_and_h11_protocol_still_expose_what_we_read() -> None:
    params = list(inspect.signature(ProtocolWrapper.__init__).parameters)
    assert params[1:11] == [
        "app", "config", "context", "task_group", "state", "ssl", "client", "server",
        "send", "alpn_protocol",
    ]  # fmt: skip
    assert "self.protocol" in inspect.getsource(ProtocolWrapper)
    assert "self.connection: h11.Connection | H11WSConnection = h11.Connection(" in (
        inspect.getsource(H11Protocol.__init__)
    )
    assert isinstance(h11.SEND_BODY, type)  # the state _awaiting_body compares against


def test_log_filters_come_with_setup_logging_not_with_an_import() -> None:
    probe = (
        "import logging\n"
        "import flashback.httpserver, flashback.web\n"
        "names = ('hypercorn.error', 'flashback.access')\n"
        "print([len(logging.getLogger(n).filters) for n in names])\n"
        "from flashback.logs import setup_logging\n"
        "setup_logging(verbose=False)\n"
        "print([len(logging.getLogger(n).filters) for n in names])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n")[:2] == ["[0, 0]", "[1, 0]"], done.stdout + done.stderr
    assert logging.getLogger("hypercorn.error")  # the name the filter is installed on
