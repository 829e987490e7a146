"""fedserver-failures: list the failures this server sent to and received from other servers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional, Sequence, TextIO


from fedserver.scripts import CliError, open_existing_database, react_main
from fedserver.http.admin.failures import failure_json
from fedserver.scripts.refusals import EXIT_OK, EXIT_USAGE, _Parser, _text, _ts

DESCRIPTION = """\
List the failures (seed 000; see docs/failures.md) this server told other servers about
(sent) and that other servers told it about (received), newest first.
"""


def build_parser(stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> argparse.ArgumentParser:
    """The command line of ``fedserver-failures``."""
    p = _Parser(prog="fedserver-failures", description=DESCRIPTION, stdout=stdout, stderr=stderr,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", metavar="FILE", help="server configuration file (for its database)")
    where.add_argument("-d", "--database", metavar="PATH", help="SQLite database file or postgresql:// URL (default: fedserver.db)")
    direction = p.add_mutually_exclusive_group()
    direction.add_argument("--sent", action="store_const", const="sent", dest="direction", help="only what we sent")
    direction.add_argument("--received", action="store_const", const="received", dest="direction",
                           help="only what we received")
    p.add_argument("--server", metavar="NAME", help="only failures exchanged with this server")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (1-1000, default 100)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def format_failures(rows: list[dict[str, Any]]) -> str:
    """Failures as a table."""
    if not rows:
        return "no failures"
    header = ("WHEN", "DIRECTION", "SERVER", "SEVERITY", "CODE", "AFFECTED", "SOURCE", "REASON")
    table = [
        (_ts(r["ts"]), r["direction"], _text(r["server_name"]), r["severity"], str(r["code"]),
         _text(r["affected"]), _text(r["source"]), _text(r["reason"]))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in [header, *table])


async def run(reactor: Any, argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    """Run the command; returns the exit status (0, or 2 for usage/database errors)."""
    parser = build_parser(stdout, stderr)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE

    def fail(message: str) -> int:
        stderr.write(f"fedserver-failures: {message}\n")
        return EXIT_USAGE

    if not 1 <= args.limit <= 1000:
        return fail("--limit must be between 1 and 1000")
    try:
        store = await open_existing_database(args.config, args.database, reactor)
    except CliError as e:
        return fail(str(e))
    try:
        failures = await store.federation_extras.list_failures(args.direction, server_name=args.server, limit=args.limit)
        rows = [failure_json(f) for f in failures]
        stdout.write((json.dumps(rows, indent=2, ensure_ascii=False) if args.json else format_failures(rows)) + "\n")
        return EXIT_OK
    finally:
        store.close()


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script entry point: ``fedserver-failures``."""
    react_main(run, argv, sys.stdout, sys.stderr)


if __name__ == "__main__":
    main()
