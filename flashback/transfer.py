"""Downloading one file to disk, resumably and verified: used by ``get`` and ``stream``.

The bytes go to ``OUT.part``; ``OUT.part.json`` records what they are: a
resume key (the owner's peer id and the file's path, not the URL, so an
owner that comes back on another port keeps the part) and the validator
(ETag). A later run with the same key asks only for the rest with ``Range``
+ ``If-Range``, so a file that changed in between is fetched whole again
instead of being spliced. Nothing past the announced size is ever written.

Before the part is renamed to ``OUT`` its SHA-256 must equal the owner's
``Repr-Digest`` (or, when no response carried one, the ``sha256`` of its
``/api/digest`` manifest). On a mismatch the manifest's per-block digests
name the bad blocks, only those are fetched again (ranges with ``If-Match``,
so they come from the same version), and the whole is checked again; a part
that still does not match is deleted and the download fails (INTERFACE §7).
A transfer that breaks keeps the part for the next run.

A peer must not hold a download by sending almost nothing: every response
head must be complete within :data:`HEAD_TIMEOUT_S` (:func:`peer_get`), and
every body -- the file, a repair range, the manifest, a folder's listing
page -- must bring at least the :class:`~flashback.protocol.rate_floor.RateFloor`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import quote

import httpx
import trio

from flashback.client.bulk import BulkError, bulk_get
from flashback.client.local import BY_PATH, Local, check_output, hash_path, part_paths, sha256_of
from flashback.client.progress import Progress, ProgressFn
from flashback.client.sink import write_body
from flashback.errors import FlashbackError
from flashback.protocol.digest import (
    BadManifest,
    Manifest,
    parse_manifest,
    parse_repr_digest,
)
from flashback.protocol.rate_floor import RateFloor
from flashback.protocol.strict_json import loads_strict

# at most 19 digits: a position past 2**63 is no file, and int() of 5,000 digits raises
_CONTENT_RANGE = re.compile(r"^bytes (\d{1,19})-(\d{1,19})/(\d{1,19})$", re.ASCII)
_UNSATISFIED = re.compile(r"^bytes \*/(\d{1,19})$", re.ASCII)
_LENGTH = re.compile(r"\d{1,19}", re.ASCII)
_ETAG = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')


class TransferFailed(FlashbackError):
    """The download could not complete (exit status 1); the part file is kept."""


class NotOnPeer(TransferFailed):
    """The peer answered 404: no such file (it may be a directory, §8)."""


def body_chunks(response: httpx.Response) -> aclosing[AsyncGenerator[bytes, None]]:
    """The body's chunks, closed on leaving the block even when we stop early
    (httpx's iterator is an async generator; left to the GC it warns)."""
    return aclosing(cast(AsyncGenerator[bytes, None], response.aiter_bytes()))


#: a response head (status line and headers) must be complete within this, however
#: it trickles in (httpx's read timeout restarts with every byte)
HEAD_TIMEOUT_S: Final = 60.0
#: connect and per-read timeouts when the client sets none
DEFAULT_TIMEOUT_S: Final = 30.0


@asynccontextmanager
async def peer_get(
    client: httpx.AsyncClient,
    url: httpx.URL | str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    timeout_s: float | None = None,
    head_timeout_s: float = HEAD_TIMEOUT_S,
    error: type[TransferFailed] = TransferFailed,
) -> AsyncIterator[httpx.Response]:
    """``client.stream("GET", ...)`` whose whole response head must arrive within
    *head_timeout_s*; else *error*. The body is the caller's (see :func:`floored`)."""
    extra: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
    request = client.build_request("GET", url, headers=headers, params=params, **extra)
    with trio.move_on_after(head_timeout_s) as deadline:
        response = await client.send(request, stream=True)
    if deadline.cancelled_caught:
        raise error(f"the peer did not send a response head within {head_timeout_s:.0f} s")
    try:
        yield response
    finally:
        await response.aclose()


async def floored(
    chunks: AsyncIterator[bytes], floor: RateFloor, too_slow: Callable[[], Exception]
) -> AsyncGenerator[bytes, None]:
    """*chunks*, raising ``too_slow()`` once a window brings less than the floor."""
    async for chunk in chunks:
        if floor.too_slow(trio.current_time(), len(chunk)):
            raise too_slow()
        yield chunk


def at(base: httpx.URL, path: str) -> httpx.URL:
    """*path* (percent-encoded here, ``/`` kept) on the origin *base*: a peer's file
    name cannot add a query, a fragment or another host."""
    return base.copy_with(path=quote(path, safe="/"))


def resume_key(peer_id: str, path: str) -> str:
    """What a partial OUT belongs to: the owner and its file, whatever its address
    today (the validator is checked by If-Range on resume)."""
    return json.dumps(["flashback-file", peer_id, path.strip("/")])


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    bytes: int
    sha256: str
    resumed_from: int
    repaired_blocks: int = 0
    #: body bytes fetched to repair blocks (0 when the first pass was right)
    repair_bytes: int = 0


def _read_meta(meta: Path, local: Local = BY_PATH) -> dict[str, Any]:
    """What a previous run saved; anything odd (a validator that is not a
    printable ASCII entity-tag, say) means no resume rather than a failure."""
    try:
        data = json.loads(local.read_text(meta))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    etag = data.get("etag")
    if not isinstance(etag, str) or not _ETAG.fullmatch(etag):
        return {}
    return data


async def download(
    client: httpx.AsyncClient,
    url: httpx.URL | str,
    out: Path,
    *,
    label: str = "",
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    resume_key: str | None = None,
    manifest_url: httpx.URL | str | None = None,
    repair_url: httpx.URL | str | None = None,
    expected_size: int | None = None,
    part: Path | None = None,
    progress: ProgressFn | None = None,
    resume_min_bytes: int = 0,
    dir_fd: int | None = None,
) -> DownloadResult:
    """Fetch *url* into *out*, verified.

    *resume_key* names the file across runs (peer id + path; default the
    URL); *manifest_url* is the owner's ``/api/digest/<path>``; *repair_url*
    answers ranges with ``If-Match`` (default *url*); *expected_size* is a
    size announced beforehand (a stream port's ``size``, a listing's):
    never more is written. *part* puts the partial file elsewhere than
    ``OUT.part``; *progress* gets the byte counts instead of a bar of its own;
    a file smaller than *resume_min_bytes* keeps no resume record (fetching
    it again costs less than writing one: a folder's many small files).
    With *dir_fd*, *out* and *part* are names in that open directory (:class:`Local`).
    """
    local = Local(dir_fd)
    if dir_fd is None:
        check_output(out)
    part, meta = part_paths(out, part)
    key = resume_key or str(url)
    receive = partial(
        _receive,
        client,
        url,
        out,
        part,
        key,
        label,
        on_event,
        expected_size,
        progress,
        resume_min_bytes,
        local,
    )
    # None: the part was longer than the file and is gone; once more, from byte 0
    received = await receive() or await receive()
    if received is None:
        raise TransferFailed("the peer refused a download from byte 0 as out of range")
    size, expected_sha, etag, offset, hashed = received
    repaired, repair_bytes = 0, 0
    actual = hashed or await sha256_of(part, local)
    manifest: Manifest | None = None
    if expected_sha is None:
        manifest = await fetch_manifest(client, manifest_url, size)
        expected_sha = manifest.sha256
    if actual != expected_sha:
        if manifest is None:
            manifest = await fetch_manifest(client, manifest_url, size)
        if manifest.sha256 != expected_sha:
            _discard(part, meta, local)
            raise TransferFailed("the file changed on the peer during the download; run again")
        repaired, repair_bytes = await _repair(
            client, repair_url or url, part, manifest, etag, local
        )
        actual = await sha256_of(part, local)
        if actual != expected_sha:
            _discard(part, meta, local)
            raise TransferFailed(
                f"the peer's bytes do not match its own digest (sha256 {expected_sha}); "
                f"{out} was not written"
            )
    local.replace(part, out)
    local.unlink(meta)
    return DownloadResult(out, size, actual, offset, repaired, repair_bytes)


def _discard(part: Path, meta: Path, local: Local) -> None:
    local.unlink(part)
    local.unlink(meta)


async def _receive(
    client: httpx.AsyncClient,
    url: httpx.URL | str,
    out: Path,
    part: Path,
    key: str,
    label: str,
    on_event: Callable[[str, dict[str, Any]], None] | None,
    expected_size: int | None,
    progress: ProgressFn | None,
    resume_min_bytes: int = 0,
    local: Local = BY_PATH,
) -> tuple[int, str | None, str | None, int, str | None] | None:
    """The body into the part: (size, digest from Repr-Digest, ETag, resumed from,
    the part's SHA-256 when it was computed on the way in); None when a saved
    part was longer than the file (it is deleted: ask again from byte 0)."""
    part, meta = part_paths(out, part)
    headers: dict[str, str] = {}
    offset = 0
    had = local.size(part)
    saved = _read_meta(meta, local) if had is not None else {}
    if had is not None and saved.get("key") == key:
        offset = had
        if offset:
            headers = {"Range": f"bytes={offset}-", "If-Range": str(saved["etag"])}
    timeouts = client.timeout
    try:
        async with bulk_get(
            httpx.URL(url),
            {**headers, "Accept-Encoding": "identity"},
            head_timeout_s=HEAD_TIMEOUT_S,
            connect_timeout_s=timeouts.connect or DEFAULT_TIMEOUT_S,
            read_timeout_s=timeouts.read or DEFAULT_TIMEOUT_S,
        ) as response:
            if response is None:
                raise TransferFailed(
                    f"the peer did not send a response head within {HEAD_TIMEOUT_S:.0f} s"
                )
            etag = response.headers.get("etag")
            digest = parse_repr_digest(response.headers.get("repr-digest"))
            if response.status_code == 416 and offset:
                match = _UNSATISFIED.match(response.headers.get("content-range", ""))
                if match and int(match.group(1)) == offset:
                    # Complete already; verification below decides if it is right.
                    return offset, digest, str(saved["etag"]), offset, None
                local.unlink(part)  # longer than the file now: the caller starts over
                return None
            if response.status_code == 404:
                raise NotOnPeer(f"not found on the peer: {url}")
            if response.status_code == 206:
                match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
                if not match or int(match.group(1)) != offset:
                    raise TransferFailed("the peer answered a range we did not ask for")
                total = int(match.group(3))
                mode = "ab"
            elif response.status_code == 200:
                length = response.headers.get("content-length")
                total = int(length) if length and _LENGTH.fullmatch(length) else -1
                offset = 0
                mode = "wb"
            else:
                raise TransferFailed(f"the peer answered HTTP {response.status_code} for {url}")
            if expected_size is not None:
                if total >= 0 and total != expected_size:
                    raise TransferFailed(
                        f"the peer announced {expected_size} bytes but sends {total}"
                    )
                total = expected_size
            if total < 0:
                raise TransferFailed("the peer did not say how big the file is (no Content-Length)")
            if etag is None or not _ETAG.fullmatch(etag):
                etag = None
            if total >= resume_min_bytes:
                local.write_text(meta, json.dumps({"key": key, "etag": etag}))
            if on_event is not None:
                on_event("download-started", {"url": str(url), "offset": offset, "size": total})
            async with aclosing(response.chunks()) as chunks:  # closed when we stop early
                hashed = await _write_body(
                    chunks, part, mode, offset, total, label, progress, local
                )
    except BulkError as exc:
        got = local.size(part) or 0
        raise TransferFailed(
            f"transfer failed after {got} bytes ({str(exc).partition(':')[0]}); "
            f"the partial file {part} is kept: run the same command again to resume"
        ) from exc
    size = local.size(part) or 0
    if size != total:
        raise TransferFailed(
            f"size mismatch: got {size} bytes, the peer announced {total}; "
            f"the partial file {part} is kept"
        )
    return size, digest, etag, offset, hashed


async def _write_body(
    chunks: AsyncIterator[bytes],
    part: Path,
    mode: str,
    offset: int,
    total: int,
    label: str,
    report: ProgressFn | None,
    local: Local = BY_PATH,
) -> str | None:
    """Append the body as received (a break loses nothing), never past *total*.

    A body fetched whole is hashed on the way in (its SHA-256 is returned),
    which spares reading it back; a resumed one returns None.
    """
    bar = None
    if report is None:
        bar = Progress(total, offset, label)
        report = bar.update
    hasher = hashlib.sha256() if offset == 0 else None
    try:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
        with os.fdopen(local.open(part, flags), mode) as file:
            await write_body(
                chunks,
                file,
                hasher,
                room=total - offset,
                report=report,
                too_slow=lambda floor: TransferFailed(_too_slow(floor, part)),
            )
    finally:
        if bar is not None:
            bar.close()
    return hasher.hexdigest() if hasher is not None else None


def _too_slow(floor: RateFloor, part: Path) -> str:
    return (
        f"the peer sent under {floor.min_bytes // 1024} KiB in {floor.window_s:.0f} s; "
        f"the partial file {part} is kept: run the same command again to resume"
    )


MANIFEST_TIMEOUT_S: Final = 300.0  # the owner may be hashing a big file first
#: 4096 blocks of 64 hex digits plus JSON and the path: far below this
MAX_MANIFEST_BYTES: Final = 1024 * 1024


async def fetch_manifest(
    client: httpx.AsyncClient, manifest_url: httpx.URL | str | None, size: int
) -> Manifest:
    """The owner's ``/api/digest`` manifest for a file of *size* bytes, checked (§7)."""
    if manifest_url is None:
        raise TransferFailed("the peer sent no digest, so the download cannot be verified")
    try:
        async with peer_get(
            client, manifest_url, timeout_s=MANIFEST_TIMEOUT_S, head_timeout_s=MANIFEST_TIMEOUT_S
        ) as response:
            if response.status_code != 200:
                raise TransferFailed(
                    f"the peer answered HTTP {response.status_code} for its digest"
                )
            body = bytearray()
            floor = RateFloor()
            async with body_chunks(response) as chunks:
                async for chunk in chunks:
                    if floor.too_slow(trio.current_time(), len(chunk)):
                        raise TransferFailed("the peer sends its digest manifest too slowly")
                    body += chunk
                    if len(body) > MAX_MANIFEST_BYTES:
                        raise TransferFailed("the peer's digest manifest is too large")
        return parse_manifest(loads_strict(bytes(body)), size=size)
    except BadManifest as exc:
        raise TransferFailed(f"the peer's digest manifest is unusable: {exc}") from exc
    except (httpx.HTTPError, ValueError) as exc:
        raise TransferFailed(
            f"could not fetch the peer's digest ({exc.__class__.__name__})"
        ) from exc


def _bad_runs(local: Manifest, remote: Manifest) -> list[tuple[int, int]]:
    """Runs of consecutive differing blocks, as (first block, block count)."""
    runs: list[tuple[int, int]] = []
    for index, (mine, theirs) in enumerate(zip(local.blocks, remote.blocks, strict=True)):
        if mine == theirs:
            continue
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


async def _repair(
    client: httpx.AsyncClient,
    url: httpx.URL | str,
    part: Path,
    manifest: Manifest,
    etag: str | None,
    local: Local = BY_PATH,
) -> tuple[int, int]:
    """Fetch again only the blocks whose digest differs: (blocks, bytes fetched)."""
    mine = await trio.to_thread.run_sync(hash_path, part, manifest.size, manifest.block_size, local)
    runs = _bad_runs(mine, manifest)
    fetched = 0
    headers = {"If-Match": etag} if etag else {}
    fd = local.open(part, os.O_WRONLY)
    try:
        for first_block, count in runs:
            first = first_block * manifest.block_size
            last = min((first_block + count) * manifest.block_size, manifest.size) - 1
            fetched += await _fetch_range(client, url, fd, first, last, manifest.size, headers)
    except httpx.HTTPError as exc:
        raise TransferFailed(f"repairing blocks failed ({exc.__class__.__name__})") from exc
    finally:
        os.close(fd)
    return sum(count for _, count in runs), fetched


async def _fetch_range(
    client: httpx.AsyncClient,
    url: httpx.URL | str,
    fd: int,
    first: int,
    last: int,
    size: int,
    headers: dict[str, str],
) -> int:
    want = f"bytes {first}-{last}/{size}"
    async with peer_get(
        client, url, headers={**headers, "Range": f"bytes={first}-{last}"}
    ) as response:
        if response.status_code != 206 or response.headers.get("content-range") != want:
            raise TransferFailed(
                f"the peer did not send the range {first}-{last} to repair "
                f"(HTTP {response.status_code}); the file may have changed: run again"
            )
        offset = first
        floor = RateFloor()

        def too_slow() -> TransferFailed:
            return TransferFailed(
                f"the peer sent the range {first}-{last} to repair at under "
                f"{floor.min_bytes // 1024} KiB in {floor.window_s:.0f} s"
            )

        async with body_chunks(response) as raw, aclosing(floored(raw, floor, too_slow)) as chunks:
            async for chunk in chunks:
                piece = chunk[: last + 1 - offset]
                os.pwrite(fd, piece, offset)
                offset += len(piece)
                if len(piece) < len(chunk):
                    break  # more than the range: not ours to keep
    if offset != last + 1:
        raise TransferFailed(f"the peer cut the range {first}-{last} short")
    return offset - first
