"""``make run``: a working Flashback on embedded defaults, nothing external.

Creates a small demo share (``./demo-share``) and serves it, printing where
everything listens. Ctrl-C stops it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flashback.cli import main as cli_main

DEMO_FILES = {
    "welcome.md": "# Welcome to Flashback\n\nSee [notes](notes/todo.txt).\n",
    "notes/todo.txt": "share files\nfind peers\n",
    "hello.txt": "hello from the demo share\n",
}


def make_demo_share(root: Path) -> Path:
    for name, text in DEMO_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text, encoding="utf-8")
    return root


def main() -> int:
    root = make_demo_share(Path("demo-share").resolve())
    print(f"demo share: {root}", file=sys.stderr)
    print("serving it; try: curl <url>/api/files  (Ctrl-C to stop)", file=sys.stderr)
    return cli_main(["serve", "--root", str(root)])


if __name__ == "__main__":
    sys.exit(main())
