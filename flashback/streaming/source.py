"""The one file a stream port serves: resolved safely, opened once, pinned.

The path goes through the peer server's own safety functions
(:mod:`flashback.protocol.paths`), so a stream request can reach exactly what
``/download/`` can: nothing outside the root, no hidden entry (unless the
daemon shows them), no symlink escaping. The file is opened before the port
is announced and the descriptor held for the port's life: what the requester
downloads is the inode that was announced, even if the name is renamed or
replaced meanwhile. Directories, FIFOs, devices and sockets are refused
(``O_NONBLOCK`` keeps the ``open`` of a FIFO from hanging the daemon).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from flashback.errors import NotFound
from flashback.protocol.conditional import make_etag
from flashback.protocol.file_plan import FileFacts
from flashback.protocol.paths import UnsafePath, open_under_root

NOT_FOUND_MESSAGE = "no such file"


@dataclass
class StreamSource:
    fd: int
    path: str  # relative to the root, "/"-separated, as announced
    facts: FileFacts
    info: os.stat_result  # as opened: what the digest cache is keyed on

    @property
    def size(self) -> int:
        return self.facts.size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_source(root: Path, raw_path: str, *, show_hidden: bool = False) -> StreamSource:
    """Open *raw_path* under the real *root*; anything unservable is :class:`NotFound`.

    A leading ``/`` is dropped: requesters name files as the peer server's
    URLs do, relative to the root.
    """
    try:
        relative, fd, info = open_under_root(root, raw_path.lstrip("/"), show_hidden=show_hidden)
    except UnsafePath as exc:
        raise NotFound(f"{NOT_FOUND_MESSAGE}: {raw_path}") from exc
    facts = FileFacts(
        name=PurePosixPath(relative).name,
        size=info.st_size,
        etag=make_etag(info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns),
        mtime_s=int(info.st_mtime),
    )
    return StreamSource(fd, relative, facts, info)
