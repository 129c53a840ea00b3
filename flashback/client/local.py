"""The files a download touches -- OUT, its part, the part's record -- by path, or by
name inside one open directory, and the part's SHA-256."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from flashback.errors import ConfigError
from flashback.protocol.digest import Manifest, hash_fd

#: a file up to this size is hashed on the event loop: a thread hop costs more
INLINE_HASH_BYTES: Final = 1024 * 1024
#: read size when hashing a part back
READ_BYTES: Final = 4 * 1024 * 1024


def part_paths(out: Path, part: Path | None = None) -> tuple[Path, Path]:
    """The partial file (``OUT.part`` unless *part* names another) and its record."""
    part = part or out.with_name(out.name + ".part")
    return part, part.with_name(part.name + ".json")


@dataclass(frozen=True)
class Local:
    """How a download touches OUT, its part and its record: by path, or -- with
    *dir_fd* -- by name inside that one open directory, never through a symlink.

    A folder get holds each directory open from the moment it checked it, so a
    directory swapped for a link to elsewhere afterwards cannot send a write
    outside OUT (the names given must then all be in that directory).
    """

    dir_fd: int | None = None

    def _at(self, path: Path) -> tuple[str | Path, dict[str, Any]]:
        if self.dir_fd is None:
            return path, {}
        return path.name, {"dir_fd": self.dir_fd}

    def open(self, path: Path, flags: int) -> int:
        name, where = self._at(path)
        if self.dir_fd is not None:
            flags |= os.O_NOFOLLOW
        return os.open(name, flags | os.O_CLOEXEC, 0o666, **where)

    def size(self, path: Path) -> int | None:
        """The size of the regular file at *path*; None when there is none."""
        name, where = self._at(path)
        try:
            info = os.stat(name, follow_symlinks=self.dir_fd is None, **where)
        except FileNotFoundError:
            return None
        return info.st_size

    def read_text(self, path: Path) -> str:
        with os.fdopen(self.open(path, os.O_RDONLY), encoding="utf-8") as file:
            return file.read()

    def write_text(self, path: Path, text: str) -> None:
        fd = self.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)

    def unlink(self, path: Path) -> None:
        name, where = self._at(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, **where)

    def replace(self, src: Path, dst: Path) -> None:
        if self.dir_fd is None:
            os.replace(src, dst)
        else:
            os.replace(src.name, dst.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)


BY_PATH: Final = Local()


def check_output(out: Path) -> None:
    """Refuse an output we cannot write before fetching a byte (like curl)."""
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; give a file name with -o")
    parent = out.parent
    if not parent.is_dir():
        raise ConfigError(f"directory {parent} does not exist")


def hash_path(path: Path, size: int, block_size: int, local: Local = BY_PATH) -> Manifest:
    fd = local.open(path, os.O_RDONLY)
    try:
        return hash_fd(fd, size, min_block=block_size)
    finally:
        os.close(fd)


async def sha256_of(path: Path, local: Local = BY_PATH) -> str:
    """The file's SHA-256 (hex); small files on the event loop, big ones in a thread."""

    def whole() -> str:
        digest = hashlib.sha256()
        with os.fdopen(local.open(path, os.O_RDONLY), "rb") as file:
            while chunk := file.read(READ_BYTES):
                digest.update(chunk)
        return digest.hexdigest()

    if (local.size(path) or 0) <= INLINE_HASH_BYTES:
        await trio.lowlevel.checkpoint()
        return whole()
    return await trio.to_thread.run_sync(whole)
