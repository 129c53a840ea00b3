"""``index.md`` in the shared root: the entry point peers navigate from.

Flashback has no breadcrumbs of its own; navigation comes from links inside
files (the seed design), so a root without an ``index.md`` gets one listing
its entries. An existing file is never touched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import quote

from flashback.peer.listing import list_directory
from flashback.protocol.paths import real_root

log = logging.getLogger(__name__)

INDEX_NAME = "index.md"


def render_index(title: str, entries: list[dict[str, object]]) -> str:
    lines = [f"# {title}", ""]
    for entry in entries:
        name = str(entry["name"])
        if name == INDEX_NAME:
            continue
        slash = "/" if entry["type"] == "dir" else ""
        label = name.replace("[", r"\[").replace("]", r"\]")
        lines.append(f"- [{label}{slash}]({quote(name)}{slash})")
    if len(lines) == 2:
        lines.append("_This share is empty._")
    return "\n".join(lines) + "\n"


def ensure_index_md(root: Path, *, show_hidden: bool = False) -> bool:
    """Create ``root/index.md`` if missing; True when it was created."""
    root = real_root(root)
    target = root / INDEX_NAME
    if target.exists() or target.is_symlink():
        return False
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        page = list_directory(root, (), dir_fd, limit=10_000, show_hidden=show_hidden)
    finally:
        os.close(dir_fd)
    text = render_index(root.name or str(root), page.entries)
    try:
        with target.open("x", encoding="utf-8") as file:  # "x": never clobber a racing writer
            file.write(text)
    except FileExistsError:
        return False
    except OSError as exc:
        log.warning("could not create %s: %s", target, exc.strerror)
        return False
    return True
