"""Downloading one file to disk, resumably: used by ``get`` and ``stream``.

The bytes go to ``OUT.part`` and the validator (ETag) that names them to
``OUT.part.json``; a later run with the same URL asks only for the rest with
``Range`` + ``If-Range``, so a file that changed in between is fetched whole
again instead of being spliced. The part is renamed to ``OUT`` only once its
size matches what the server announced. A transfer that breaks keeps the
part for the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from flashback.errors import ConfigError, FlashbackError

CHUNK_BYTES: Final = 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_UNSATISFIED = re.compile(r"^bytes \*/(\d+)$")
_ETAG = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')


class TransferFailed(FlashbackError):
    """The download could not complete (exit status 1); the part file is kept."""


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    bytes: int
    sha256: str
    resumed_from: int


class Progress:
    """A progress bar on stderr when it is a terminal (tqdm), silent otherwise."""

    def __init__(self, total: int, initial: int, label: str) -> None:
        self._bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                file=sys.stderr,
                leave=False,
            )

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def part_paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.name + ".part"), out.with_name(out.name + ".part.json")


def _read_meta(meta: Path) -> dict[str, Any]:
    """What a previous run saved; anything odd (a validator that is not a
    printable ASCII entity-tag, say) means no resume rather than a failure."""
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    etag = data.get("etag")
    if not isinstance(etag, str) or not _ETAG.fullmatch(etag):
        return {}
    return data


def check_output(out: Path) -> None:
    """Refuse an output we cannot write before fetching a byte (like curl)."""
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; give a file name with -o")
    parent = out.parent
    if not parent.is_dir():
        raise ConfigError(f"directory {parent} does not exist")


def _hash_file(path: Path, digest: Any, limit: int) -> None:
    with path.open("rb") as file:
        remaining = limit
        while remaining > 0:
            chunk = file.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)


async def download(
    client: httpx.AsyncClient,
    url: str | httpx.URL,
    out: Path,
    *,
    label: str = "",
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    resume_key: str | None = None,
) -> DownloadResult:
    """*resume_key* names the resource across runs when its URL changes each
    time (a stream port's token); If-Range still guards against splicing."""
    check_output(out)
    part, meta = part_paths(out)
    key = resume_key or str(url)
    headers: dict[str, str] = {}
    offset = 0
    saved = _read_meta(meta)
    if part.exists() and saved.get("url") == key and saved.get("etag"):
        offset = part.stat().st_size
        if offset:
            headers = {"Range": f"bytes={offset}-", "If-Range": str(saved["etag"])}
    try:
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and offset:
                match = _UNSATISFIED.match(response.headers.get("content-range", ""))
                if match and int(match.group(1)) == offset:
                    return _finish(out, part, meta, offset, offset)
                offset = 0  # the part is longer than the file now: start over
                part.unlink(missing_ok=True)
                return await download(
                    client, url, out, label=label, on_event=on_event, resume_key=resume_key
                )
            if response.status_code == 404:
                raise TransferFailed(f"not found on the peer: {url}")
            if response.status_code == 206:
                match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
                if not match or int(match.group(1)) != offset:
                    raise TransferFailed("the peer answered a range we did not ask for")
                total = int(match.group(3))
                mode = "ab"
            elif response.status_code == 200:
                total = int(response.headers.get("content-length", "-1"))
                offset = 0
                mode = "wb"
            else:
                raise TransferFailed(f"the peer answered HTTP {response.status_code} for {url}")
            meta.write_text(
                json.dumps({"url": key, "etag": response.headers.get("etag")}), encoding="utf-8"
            )
            if on_event is not None:
                on_event("download-started", {"url": str(url), "offset": offset, "size": total})
            progress = Progress(total, offset, label)
            try:
                with part.open(mode) as file:
                    async for chunk in response.aiter_bytes():  # as received: a break loses nothing
                        file.write(chunk)
                        progress.update(len(chunk))
            finally:
                progress.close()
    except httpx.HTTPError as exc:
        got = part.stat().st_size if part.exists() else 0
        raise TransferFailed(
            f"transfer failed after {got} bytes ({exc.__class__.__name__}); "
            f"the partial file {part} is kept: run the same command again to resume"
        ) from exc
    return _finish(out, part, meta, part.stat().st_size, total, resumed_from=offset)


def _finish(
    out: Path, part: Path, meta: Path, size: int, total: int, *, resumed_from: int = 0
) -> DownloadResult:
    if total >= 0 and size != total:
        raise TransferFailed(
            f"size mismatch: got {size} bytes, the peer announced {total}; "
            f"the partial file {part} is kept"
        )
    digest = hashlib.sha256()
    _hash_file(part, digest, size)
    os.replace(part, out)
    meta.unlink(missing_ok=True)
    return DownloadResult(out, size, digest.hexdigest(), resumed_from)
