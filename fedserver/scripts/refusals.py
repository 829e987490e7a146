"""fedserver-refusals: ask the database whether an event was accepted, rejected or soft-failed, and why."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any, Optional, Sequence, TextIO


from fedserver.scripts import CliError, open_existing_database, react_main
from fedserver.handlers.federation.history import (
    REFUSAL_KINDS,
    REFUSALS_LIMIT_DEFAULT,
    REFUSALS_LIMIT_MAX,
    EventStatusHandler,
    is_valid_id,
)
from fedserver.errors import MatrixError

#: Exit statuses.
EXIT_OK = 0
EXIT_UNKNOWN_EVENT = 1
EXIT_USAGE = 2

DESCRIPTION = """\
Show why events were refused. With an EVENT_ID: whether that event was accepted,
rejected, soft-failed or is held as an outlier, and for refused events the reason, the
spec rule and the plugin that objected. Without: the refused (rejected and soft-failed)
events, newest first.
"""

EPILOG = """\
exit status: 0 on success, 1 if EVENT_ID is not in the database, 2 for usage,
configuration or database errors.
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser writing usage, help and errors to the given streams."""

    def __init__(self, *args: Any, stdout: TextIO, stderr: TextIO, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._out = stdout
        self._err = stderr

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            (self._err if file is sys.stderr else self._out).write(message)


def build_parser(stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> argparse.ArgumentParser:
    """The command line of ``fedserver-refusals``."""
    p = _Parser(
        prog="fedserver-refusals", description=DESCRIPTION, epilog=EPILOG, stdout=stdout, stderr=stderr,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", metavar="FILE", help="server configuration file (for database_path)")
    where.add_argument("-d", "--database", metavar="PATH", help="SQLite database file (default: fedserver.db)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("event_id", nargs="?", metavar="EVENT_ID", help="the event to explain")
    p.add_argument("--room", metavar="ROOM_ID", help="list: only this room")
    p.add_argument("--kind", choices=REFUSAL_KINDS, help="list: only this kind of refusal")
    p.add_argument(
        "--limit", type=int, default=REFUSALS_LIMIT_DEFAULT, metavar="N",
        help=f"list: at most N events (1-{REFUSALS_LIMIT_MAX}, default {REFUSALS_LIMIT_DEFAULT})",
    )
    p.add_argument("--from", dest="from_token", metavar="TOKEN", help="list: continue from a previous page")
    return p


def _ts(ms: Optional[int]) -> str:
    if ms is None:
        return "-"
    try:
        when = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    # One line per row: stored reasons come from rules and plugins, keep them printable.
    return "".join(c if c.isprintable() else " " for c in str(value))


def format_status(status: dict[str, Any]) -> str:
    """A status (see :meth:`EventStatusHandler.get_status`) as ``name value`` lines."""
    refused = status["status"] in REFUSAL_KINDS
    rows = [
        ("event_id", status["event_id"]),
        ("room_id", status["room_id"]),
        ("status", status["status"]),
        ("outlier", "yes" if status["outlier"] else "no"),
    ]
    if refused:
        rows += [
            ("reason", status["reason"]),
            ("rule", status["rule"]),
            ("plugin", status["plugin"] if status["plugin"] is not None else "(not recorded)"),
            ("refused", _ts(status["refused_ts"])),
        ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {_text(value)}" for name, value in rows)


def format_refusals(page: dict[str, Any]) -> str:
    """A refusals page (see :meth:`EventStatusHandler.list_refusals`) as a table."""
    header = ("REFUSED", "KIND", "RULE", "PLUGIN", "EVENT", "ROOM", "REASON")
    rows = [
        (_ts(r["refused_ts"]), r["kind"], _text(r["rule"]), _text(r["plugin"]), _text(r["event_id"]),
         _text(r["room_id"]), _text(r["reason"]))
        for r in page["refusals"]
    ]
    if not rows:
        return "no refused events"
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    if page.get("next_batch"):
        lines.append(f"more: --from {page['next_batch']}")
    return "\n".join(lines)


async def run(reactor: Any, argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    """Run the command; returns the exit status.

    The database is opened as the server opens it (so a schema the code does not know
    is refused) and only read; it runs alongside a running server (WAL mode).
    """
    parser = build_parser(stdout, stderr)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:  # argparse has printed the usage
        return EXIT_OK if e.code == 0 else EXIT_USAGE

    def fail(message: str) -> int:
        stderr.write(f"fedserver-refusals: {message}\n")
        return EXIT_USAGE

    if args.event_id is not None and not is_valid_id(args.event_id, "$"):
        return fail(f"not an event id: {args.event_id!r}")
    if args.room is not None and not is_valid_id(args.room, "!"):
        return fail(f"not a room id: {args.room!r}")
    if not 1 <= args.limit <= REFUSALS_LIMIT_MAX:
        return fail(f"--limit must be between 1 and {REFUSALS_LIMIT_MAX}")
    try:
        store = await open_existing_database(args.config, args.database, reactor)
    except CliError as e:
        return fail(str(e))
    try:
        handler = EventStatusHandler(store)
        try:
            if args.event_id is not None:
                result = await handler.get_status(args.event_id)
                text = format_status(result)
                code = EXIT_UNKNOWN_EVENT if result["status"] == "unknown" else EXIT_OK
            else:
                result = await handler.list_refusals(args.room, args.kind, args.limit, args.from_token)
                text = format_refusals(result)
                code = EXIT_OK
        except MatrixError as e:
            return fail(e.error)
        stdout.write((json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False) if args.json else text) + "\n")
        return code
    finally:
        store.close()


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script entry point: ``fedserver-refusals``."""
    react_main(run, argv, sys.stdout, sys.stderr)


if __name__ == "__main__":
    main()
