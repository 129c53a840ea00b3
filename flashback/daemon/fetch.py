"""``get`` and ``stream``: a file or a folder from a peer, reported for a script or a person.

Both end cleanly on Ctrl-C: the transfer is cancelled (a partial file stays
for the resume) and the one line says so, exit 130; a file already renamed
into place when the signal came is reported complete, exit 0.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import trio

from flashback.cli_render import Report
from flashback.client.local import check_output, part_paths
from flashback.daemon.client import (
    TIMEOUT_S,
    ListedPeer,
    fetch_peers,
    fetch_status,
    http_url,
    post_connect,
    post_control,
    reach_peer,
    resolve_peer,
)
from flashback.errors import ConfigError, FlashbackError, Interrupted
from flashback.folder import (
    DEFAULT_JOBS,
    FolderFailed,
    FolderFetch,
    FolderProgress,
    is_remote_directory,
)
from flashback.protocol.paths import is_servable_name
from flashback.terminal import printable
from flashback.transfer import DownloadResult, NotOnPeer, at, download, resume_key


def default_output(path: str) -> Path:
    name = PurePosixPath(path).name
    if not name or name in (".", ".."):
        raise ConfigError(f"cannot name an output file after {path!r}; pass -o OUT")
    return Path(name)


def check_share_path(path: str) -> None:
    """A PATH with a ``..`` part would leave the share: refused before any request."""
    if ".." in path.split("/"):
        raise ConfigError(
            f"{printable(path)!r} leaves the peer's share ('..' is not allowed in PATH)"
        )


class Outcome:
    """What a transfer got to before a Ctrl-C: its output, and whether it was reported."""

    def __init__(self) -> None:
        self.finished = False
        self.file: Path | None = None  # the file being fetched (its part is beside it)
        self.folder: Path | None = None

    def interrupted_line(self) -> str:
        if self.folder is not None:
            return (
                f"interrupted; the files fetched so far in {self.folder} are kept: "
                "run the same command again to fetch the rest"
            )
        if self.file is not None:
            part, _meta = part_paths(self.file)
            if part.exists():
                return (
                    f"interrupted; the partial file {part} is kept: "
                    "run the same command again to resume"
                )
        return "interrupted before the download began"


async def until_interrupted(work: Callable[[Outcome], Awaitable[None]]) -> int:
    """Run *work*; SIGINT cancels it (no KeyboardInterrupt inside the transfer)."""
    outcome = Outcome()
    interrupted = False
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        try:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    nonlocal interrupted
                    async for _ in signals:
                        interrupted = True
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                await work(outcome)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # the transfer's own error is one line, not a traceback
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                raise group.exceptions[0] from None
            raise
    if outcome.finished:
        return 0
    if interrupted:
        raise Interrupted(outcome.interrupted_line())
    raise FlashbackError("the transfer stopped without a result")  # pragma: no cover


def _complete(report: Report, outcome: Outcome, result: DownloadResult) -> None:
    report.file_done(
        {
            "path": str(result.path),
            "bytes": result.bytes,
            "sha256": result.sha256,
            "verified": True,
            "repaired_blocks": result.repaired_blocks,
        },
        resumed_from=result.resumed_from,
    )
    outcome.finished = True


async def get_file(
    env: Mapping[str, str],
    key: str,
    path: str,
    out: Path | None,
    *,
    as_json: bool,
    jobs: int = DEFAULT_JOBS,
) -> int:
    """``get PEER PATH``: one file as always; a directory (§8) when PATH is one.

    The file's download is tried first, exactly as before folders existed;
    only its 404 (or an OUT that is a directory already) makes us ask whether
    PATH is a directory. A file into an existing directory OUT goes inside it
    (as ``cp`` and ``wget -P`` do).
    """
    check_share_path(path)
    report = Report(as_json=as_json, peer=key)

    async def work(outcome: Outcome) -> None:
        if not path.strip("/"):
            peer, base = await reach_peer(env, key)
            await _get_folder(base, peer, path, out or _root_output(peer), jobs, report, outcome)
            return
        target = out or default_output(path)
        reached = None
        if target.is_dir():
            reached = peer, base = await reach_peer(env, key)
            async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
                is_dir = await is_remote_directory(http, base, path)
            if is_dir:
                await _get_folder(base, peer, path, target, jobs, report, outcome)
                return
            target = target / default_output(path)
        check_output(target)
        peer, base = reached or await reach_peer(env, key)
        report.peer = peer.name
        outcome.file = target
        url = at(base, "/download/" + path.strip("/"))
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
            try:
                result = await download(
                    http,
                    url,
                    target,
                    label=target.name,
                    on_event=report.event,
                    resume_key=resume_key(peer.key, path),
                    manifest_url=at(base, "/api/digest/" + path.strip("/")),
                )
            except NotOnPeer:
                if not await is_remote_directory(http, base, path):
                    raise NotOnPeer(
                        f"no file or folder {printable(path)!r} on peer '{printable(key)}'"
                    ) from None
                result = None
            if result is not None:
                _complete(report, outcome, result)  # before any checkpoint: a Ctrl-C now is late
                return
        await _get_folder(base, peer, path, target, jobs, report, outcome)

    return await until_interrupted(work)


def _root_output(peer: ListedPeer) -> Path:
    """A whole share goes into a directory named after its peer, if that is a plain name."""
    if is_servable_name(peer.name) and "/" not in peer.name:
        return Path(peer.name)
    raise ConfigError(f"cannot name a directory after peer '{printable(peer.name)}'; pass -o OUT")


async def _get_folder(
    base: httpx.URL,
    peer: ListedPeer,
    path: str,
    out: Path,
    jobs: int,
    report: Report,
    outcome: Outcome,
) -> None:
    """``get PEER DIR``: the whole tree, N files at a time, then ``folder-complete``."""
    if not out.parent.is_dir():
        raise ConfigError(f"directory {out.parent} does not exist")
    report.peer = peer.name
    outcome.folder = out
    limits = httpx.Limits(max_connections=jobs + 1, max_keepalive_connections=jobs + 1)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=limits) as http:
        fetch = FolderFetch(
            http,
            base,
            path.strip("/"),
            out,
            owner=peer.key,
            jobs=jobs,
            on_complete=lambda result: report.file_done(
                {
                    "path": str(result.path),
                    "bytes": result.bytes,
                    "sha256": result.sha256,
                    "verified": True,
                    "repaired_blocks": result.repaired_blocks,
                },
                summary=False,
            ),
            progress=FolderProgress(out.name),
        )
        result = await fetch.run()
    if result.failed:
        raise FolderFailed(
            f"{result.failed} of {result.failed + result.files} files failed "
            f"(first: {result.first_failure}); run the same command again to fetch them"
        )
    report.folder_done(
        {
            "path": str(out),
            "files": result.files,
            "bytes": result.bytes,
            "skipped": result.skipped,
            "refused": result.refused,
        }
    )
    outcome.finished = True


async def _owner_server(env: Mapping[str, str], key: str) -> httpx.URL | None:
    """An origin for the owner's peer server (for its digest and repairs), if any."""
    try:
        _peer, base = await reach_peer(env, key)
        return base
    except FlashbackError:
        pass
    status = await fetch_status(env)  # a stream from this daemon itself, no tracker
    if key in (status.get("name"), status.get("peer_id")):
        return http_url(str(status["host"]), int(status["port"]))
    return None


async def _stream_origin(
    env: Mapping[str, str], owner: str | None, ready: Mapping[str, Any]
) -> httpx.URL:
    """Where to fetch from a stream port: on the owner's proven host or through a
    tunnel's ``OPEN stream`` (the daemon decides; only the notice's port is used)."""
    if owner is None:  # our own daemon's notice (no identity yet): its own host
        return http_url(ready["host"], ready["port"])
    answer = await post_connect(env, {"peer": owner, "stream_port": ready["port"]})
    return httpx.URL(answer["url"])


#: the daemon waits up to 15 s for the owner; leave room for that
STREAM_REQUEST_TIMEOUT_S = 25.0


async def request_stream_port(env: Mapping[str, str], key: str, path: str) -> dict[str, Any]:
    """Ask the local daemon for a dedicated port on *key*: the ready notice.

    Its refusals are made precise here: a typo'd peer gets the "did you mean"
    of ``get``, a folder is named a folder (a stream port sends one file)."""
    body = {"peer": key, "path": path}
    try:
        return await post_control(env, "/stream", body, timeout_s=STREAM_REQUEST_TIMEOUT_S)
    except FlashbackError as exc:
        if exc.code == "unknown_peer":
            resolve_peer(await fetch_peers(env), key)  # raises with the suggestion
        if exc.code == "not_found" and await _is_folder(env, key, path):
            raise ConfigError(
                f"{printable(path)!r} is a folder on peer '{printable(key)}'; stream sends "
                f"one file: fetch a folder with flashback get"
            ) from None
        raise


async def _is_folder(env: Mapping[str, str], key: str, path: str) -> bool:
    try:
        _peer, base = await reach_peer(env, key)
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
            return await is_remote_directory(http, base, path)
    except FlashbackError:
        return False


async def stream_file(
    env: Mapping[str, str], key: str, path: str, out: Path | None, *, as_json: bool
) -> int:
    check_share_path(path)
    report = Report(as_json=as_json, peer=key)

    async def work(outcome: Outcome) -> None:
        target = out or default_output(path)
        if target.is_dir():
            target = target / default_output(path)
        check_output(target)  # before a port is opened for nothing
        ready = await request_stream_port(env, key, path)
        report.event(
            "file-stream-ready",
            {
                "request_id": ready["request_id"],
                "peer_id": ready.get("from"),
                "host": ready["host"],
                "port": ready["port"],
                "token": ready["token"],
                "path": ready["path"],
                "size": ready["size"],
                "expires_in": ready["expires_in"],
            },
        )
        outcome.file = target
        url = at(await _stream_origin(env, ready.get("from"), ready), "/" + ready["token"])
        owner = await _owner_server(env, key)
        manifest_url = repair_url = None
        if owner is not None:
            manifest_url = at(owner, "/api/digest/" + ready["path"].strip("/"))
            # The stream port closes once the file is sent: repairs go to the peer server.
            repair_url = at(owner, "/download/" + ready["path"].strip("/"))
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
            result = await download(
                http,
                url,
                target,
                label=target.name,
                on_event=report.event,
                resume_key=resume_key(ready.get("from") or key, ready["path"]),
                manifest_url=manifest_url,
                repair_url=repair_url,
                expected_size=ready["size"],
            )
            _complete(report, outcome, result)

    return await until_interrupted(work)
