"""The ``flashback`` command: argparse -> config -> trio.run, exit codes 0/1/2.

0 success, 1 runtime failure, 2 usage error or bad configuration. Usage and
configuration errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

from flashback import __version__
from flashback.errors import ConfigError, FlashbackError, Interrupted
from flashback.logs import setup_logging
from flashback.terminal import printable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


if TYPE_CHECKING:  # generic in typeshed only: not subscriptable at run time before 3.12
    #: what ``add_subparsers`` returns; each ``_add_*`` adds its commands to it
    Subcommands = argparse._SubParsersAction[_Parser]


def _add_serve(sub: Subcommands) -> None:
    p = sub.add_parser("serve", help="serve a directory (peer server alone, no tracker)")
    p.add_argument("--root", required=True, help="directory to share")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", default=None, help="port to bind (default 0: the OS picks)")
    p.add_argument("--show-hidden", action="store_true", help="serve dot files too")
    p.set_defaults(run=_run_serve)


def _add_tracker(sub: Subcommands) -> None:
    p = sub.add_parser("tracker", help="run the relay tracker")
    p.add_argument("--host", default=None, help="address to bind (RELAY_BIND_ADDRESS, 0.0.0.0)")
    p.add_argument("--port", default=None, help="port to bind (RELAY_PORT, 3000)")
    p.add_argument("--database-url", default=None, help="DATABASE_URL: sqlite path, memory://")
    p.add_argument(
        "--tunnel-port",
        default=None,
        help="port for tunnels between peers (RELAY_TUNNEL_PORT, 3001; 0: the OS picks; off)",
    )
    p.set_defaults(run=_run_tracker)


def _add_daemon(sub: Subcommands) -> None:
    p = sub.add_parser(
        "daemon", help="run the peer daemon (peer server + tracker link)", epilog=STATE_DIR_EPILOG
    )
    p.add_argument("--root", default=None, help="directory to share (FLASHBACK_ROOT)")
    p.add_argument("--tracker", default=None, help="tracker URL (FLASHBACK_TRACKER_URL)")
    p.add_argument("--name", default=None, help="peer name (FLASHBACK_NAME, host name)")
    p.add_argument("--host", default=None, help="peer server address (default 127.0.0.1)")
    p.add_argument("--port", default=None, help="peer server port (default 0: the OS picks)")
    p.add_argument("--show-hidden", action="store_true", help="serve dot files too")
    p.add_argument("--ui-port", default=None, help="web UI port on 127.0.0.1 (default 0: any)")
    p.add_argument(
        "--lan",
        default=None,
        metavar="on|off",
        help="announce and find peers on the local network by mDNS (FLASHBACK_LAN; default on)",
    )
    p.add_argument(
        "--direct-port",
        default=None,
        help="direct endpoint port (FLASHBACK_DIRECT_PORT; default 0: the OS picks once, "
        "then kept; off: none)",
    )
    p.add_argument(
        "--direct-host",
        default=None,
        help="direct endpoint address (default 0.0.0.0 and ::)",
    )
    p.add_argument(
        "--identity",
        default=None,
        metavar="NAME",
        help="identity instance to use, refused if in use (FLASHBACK_IDENTITY; "
        "default: the first free one of the peer name)",
    )
    p.add_argument(
        "--share-with",
        default=None,
        choices=("tracker", "allowed"),
        help="who may connect: any peer the tracker lists with the key it presents "
        "(tracker, the default) or only peers you allowed (FLASHBACK_SHARE_WITH)",
    )
    p.set_defaults(run=_run_daemon)


STATE_DIR_EPILOG: Final = (
    "The local daemon is reached through control.sock in its state directory: "
    "FLASHBACK_STATE_DIR if set, else $XDG_RUNTIME_DIR/flashback, else "
    "/tmp/flashback-UID. It must belong to you and not be writable by others."
)
PINS_EPILOG: Final = (
    "Pins live in pins.json in the data directory: FLASHBACK_DATA_DIR if set, else "
    "$XDG_DATA_HOME/flashback. No daemon is needed."
)
JSON_HELP: Final = "print one JSON object instead of text"
EVENTS_HELP: Final = (
    "print one JSON event per line (the default when stdout is not a terminal; "
    "at a terminal: one summary line)"
)
OUT_HELP: Final = (
    "file (or, for a directory, directory) to write "
    "(default: the last part of PATH, in the current directory)"
)
#: as flashback.folder's (not imported here: the CLI imports the rest lazily)
DEFAULT_JOBS: Final = 4
MAX_JOBS: Final = 64


def _jobs(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_JOBS}")
    return int(raw)


def _add_local_commands(sub: Subcommands) -> None:
    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=STATE_DIR_EPILOG)

    p = add("status", "ask the local daemon how it is")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(run=_run_status)
    p = add("ui", "print the local web UI's URL (with its access token)")
    p.set_defaults(run=_run_ui)
    p = add("peers", "the live peer list")
    p.add_argument("--watch", action="store_true", help="print each change as it arrives")
    p.add_argument("--json", action="store_true", help=JSON_HELP + " (per change with --watch)")
    p.set_defaults(run=_run_peers)
    p = add("ls", "list a peer's directory")
    p.add_argument("peer", metavar="PEER", help="peer id or name")
    p.add_argument(
        "path", metavar="PATH", nargs="?", default="", help="directory in the share (default: root)"
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(run=_run_ls)
    p = add("get", "download a file or a whole directory from a peer (resumes a partial OUT)")
    p.add_argument("peer", metavar="PEER", help="peer id or name")
    p.add_argument(
        "path", metavar="PATH", help="file or directory in the peer's share, e.g. docs/a.pdf"
    )
    p.add_argument("-o", "--output", metavar="OUT", default=None, help=OUT_HELP)
    p.add_argument(
        "--jobs",
        "-j",
        type=_jobs,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"files fetched at once for a directory (default {DEFAULT_JOBS}, at most {MAX_JOBS})",
    )
    p.add_argument("--json", action="store_true", help=EVENTS_HELP)
    p.set_defaults(run=_run_get)
    p = add("connect", "open a local URL that reaches a peer (direct or by tunnel)")
    p.add_argument("peer", metavar="PEER", help="peer id or name")
    p.add_argument("--json", action="store_true", help="print the peer-url event as JSON")
    p.set_defaults(run=_run_connect)
    p = add("stream", "ask a peer for a dedicated streaming port, then download")
    p.add_argument("peer", metavar="PEER", help="peer id or name")
    p.add_argument("path", metavar="PATH", help="file in the peer's share, e.g. docs/a.pdf")
    p.add_argument("-o", "--output", metavar="OUT", default=None, help=OUT_HELP)
    p.add_argument("--json", action="store_true", help=EVENTS_HELP)
    p.set_defaults(run=_run_stream)
    p = sub.add_parser(
        "forget",
        help="remove the pinned fingerprint of a peer (trust anew), as owner and as requester",
        epilog=PINS_EPILOG,
    )
    p.add_argument("peer", metavar="PEER", help="peer id, name or sha256: fingerprint")
    p.set_defaults(run=_run_forget)
    for name, text in (
        ("allow", "let a peer connect (its current fingerprint), whatever --share-with says"),
        ("deny", "never let a peer connect (its current fingerprint), in either mode"),
    ):
        p = add(name, text)
        p.add_argument("peer", metavar="PEER", help="peer id, name or full sha256: fingerprint")
        p.set_defaults(run=_run_access, action=name)


def _run_daemon(args: argparse.Namespace) -> int:
    from flashback.config import config_file_path, daemon_from_sources, load_config_file
    from flashback.daemon.main import run_daemon

    file = load_config_file(config_file_path(os.environ))
    return run_daemon(daemon_from_sources(vars(args), os.environ, file))


def _run_local(main: Callable[[], Any]) -> int:
    import signal

    import trio

    code = int(trio.run(main) or 0)
    # Done and reported: a Ctrl-C from now on may not turn that into 130 (or a
    # death by SIGINT while Python shuts down).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


def _run_status(args: argparse.Namespace) -> int:
    import json

    from flashback.daemon import client, peer_lines

    async def main() -> int:
        status = await client.fetch_status(os.environ)
        if args.json:
            print(json.dumps(status))
        else:
            peer_lines.print_status(status)
        return 0

    return _run_local(main)


def _run_ui(args: argparse.Namespace) -> int:
    from flashback.daemon import client

    async def main() -> int:
        print(printable(await client.fetch_ui_url(os.environ)))
        return 0

    return _run_local(main)


def _run_peers(args: argparse.Namespace) -> int:
    import json

    from flashback.daemon import client, peer_lines

    async def main() -> int:
        if args.watch:
            return await client.watch_peers(os.environ, as_json=args.json)
        listing = await client.fetch_peers(os.environ)
        if args.json:
            print(json.dumps(listing))
            return 0
        return peer_lines.print_peers(listing)

    return _run_local(main)


def _run_ls(args: argparse.Namespace) -> int:
    from flashback.daemon import client

    async def main() -> int:
        listing = await client.list_peer_dir(os.environ, args.peer, args.path)
        client.print_listing(listing, as_json=args.json)
        return 0

    return _run_local(main)


def _run_get(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flashback.cli_render import wants_json
    from flashback.daemon import fetch

    out = Path(args.output) if args.output else None
    as_json = wants_json(args.json)
    return _run_local(
        lambda: fetch.get_file(
            os.environ, args.peer, args.path, out, as_json=as_json, jobs=args.jobs
        )
    )


def _run_connect(args: argparse.Namespace) -> int:
    from flashback.daemon import client

    return _run_local(lambda: client.connect(os.environ, args.peer, as_json=args.json))


def _run_stream(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flashback.cli_render import wants_json
    from flashback.daemon import fetch

    out = Path(args.output) if args.output else None
    as_json = wants_json(args.json)
    return _run_local(
        lambda: fetch.stream_file(os.environ, args.peer, args.path, out, as_json=as_json)
    )


def _run_forget(args: argparse.Namespace) -> int:
    from flashback.config import data_dir
    from flashback.daemon import client, peer_lines
    from flashback.daemon.pins import PinStore

    removed = PinStore.in_data_dir(data_dir(os.environ)).forget(args.peer)
    import trio

    requesters = trio.run(client.forget_requester, os.environ, args.peer)
    if not removed and not requesters:
        print(f"flashback: no pinned fingerprint for {printable(args.peer)}", file=sys.stderr)
        return EXIT_FAILURE
    shown = [
        printable(pin.peer_id)
        + (f" ({printable(pin.name)})" if pin.name else "")
        + f" {pin.fingerprint}"
        for pin in removed
    ]
    if shown:
        print("forgot the pin of " + "; ".join(shown))
    if requesters:
        print("forgot the requester " + "; ".join(peer_lines.describe_entry(p) for p in requesters))
    return EXIT_OK


def _run_access(args: argparse.Namespace) -> int:
    from flashback.daemon import client, peer_lines

    async def main() -> int:
        answer = await client.change_access(os.environ, args.action, args.peer)
        entry = answer.get("allowed" if args.action == "allow" else "denied") or {}
        verb = "allowed" if args.action == "allow" else "denied"
        print(f"{verb} {peer_lines.describe_entry(entry)}")
        return 0

    return _run_local(main)


def _run_serve(args: argparse.Namespace) -> int:
    from flashback.config import serve_from_sources
    from flashback.peer.serve import run_serve

    return run_serve(serve_from_sources(vars(args)))


def _run_tracker(args: argparse.Namespace) -> int:
    from flashback.config import tracker_from_sources
    from flashback.tracker.serve import run_tracker

    return run_tracker(tracker_from_sources(vars(args), os.environ))


COMMANDS: list[Callable[[Subcommands], None]] = [
    _add_tracker,
    _add_daemon,
    _add_serve,
    _add_local_commands,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flashback", description="Decentralized file sharing.", epilog=STATE_DIR_EPILOG
    )
    parser.add_argument("--version", action="version", version=f"flashback {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        setup_logging(args.verbose)
        return int(args.run(args))
    except ConfigError as exc:
        print(printable(f"flashback: error: {exc.message}"), file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(printable(f"flashback: {exc.message}"), file=sys.stderr)
        return EXIT_INTERRUPTED
    except FlashbackError as exc:
        print(printable(f"flashback: {exc.message}"), file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:
        return _reader_gone()
    except BaseExceptionGroup as group:  # trio's KeyboardInterrupt, wrapped by a nursery
        if (
            group.subgroup(BrokenPipeError) is not None
            and group.subgroup(KeyboardInterrupt) is None
        ):
            return _reader_gone()
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        return _interrupted()
    except Exception as exc:  # a local command met something unexpected: one line, no traceback
        import httpx

        if not isinstance(exc, httpx.HTTPError | OSError | ValueError):
            raise
        print(printable(f"flashback: {_describe(exc)}"), file=sys.stderr)
        return EXIT_FAILURE


def _reader_gone() -> int:
    """stdout's reader left (``flashback peers | grep -q alice``): nothing is left to
    say to it, and no traceback; stdout goes to /dev/null so the exit's flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a file descriptor (embedded, captured): nothing to flush
    return EXIT_FAILURE


def _interrupted() -> int:
    print("flashback: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _describe(exc: Exception) -> str:
    """``cannot write /proc/x.part: No such file or directory`` rather than a repr."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"cannot use {exc.filename}: {exc.strerror}"
    return f"{exc.__class__.__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
