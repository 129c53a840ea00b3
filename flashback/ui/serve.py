"""Run the UI inside the daemon's root nursery, on 127.0.0.1 only."""

from __future__ import annotations

from functools import partial
from typing import Final

import httpx
import trio

from flashback.shutdown import Shutdown
from flashback.ui.app import create_ui_app
from flashback.ui.auth import new_token
from flashback.ui.proxy import MAX_STREAMS, TIMEOUT
from flashback.ui.view import DaemonView
from flashback.web import hypercorn_config, serve_quart

UI_HOST: Final = "127.0.0.1"


def ui_address_url(port: int, token: str) -> str:
    return str(httpx.URL(scheme="http", host=UI_HOST, port=port, path="/", params={"token": token}))


async def serve_ui(
    ctx: DaemonView,
    port: int,
    *,
    shutdown: Shutdown | None = None,
    token: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the UI until *shutdown* and its deadline; report the tokened URL once listening."""
    token = token or new_token()
    limits = httpx.Limits(max_connections=MAX_STREAMS + 8, max_keepalive_connections=8)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as http:
        app = create_ui_app(ctx, token, http)
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                partial(
                    serve_quart,
                    app,
                    hypercorn_config(UI_HOST, port),
                    shutdown=shutdown,
                )
            )
            task_status.started(ui_address_url(address.port, token))
