"""fedserver-purge-media: delete cached remote media not accessed for N days."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional, Sequence, TextIO

from fedserver.scripts import CliError, database_overrides, open_existing_target, react_main
from fedserver.scripts.refusals import EXIT_OK, EXIT_USAGE, _Parser

DESCRIPTION = """\
Delete the media of other servers cached here that nobody asked for in the last N days,
with their thumbnails, and the files no other media uses. Media of this server's users is
never touched. A purged media is fetched again if someone asks for it. Safe to run while
the server runs. The admin API POST /_fedserver/admin/v1/media/purge_remote does the same.
"""


def build_parser(stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> argparse.ArgumentParser:
    """The command line of ``fedserver-purge-media``."""
    p = _Parser(prog="fedserver-purge-media", description=DESCRIPTION, stdout=stdout, stderr=stderr,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", metavar="FILE", help="server configuration file (database, media_store_path)")
    p.add_argument("-d", "--database", metavar="PATH", help="SQLite database file or postgresql:// URL (default: from the config, else fedserver.db)")
    p.add_argument("--media-dir", metavar="PATH", help="media directory (default: from the config, else media_store next to the database)")
    p.add_argument("--days", type=float, required=True, metavar="N", help="purge what was not accessed for N days (0: all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


async def run(reactor: Any, argv: Sequence[str], stdout: TextIO, stderr: TextIO, now: Optional[float] = None) -> int:
    """Run the command; returns the exit status (0, or 2 for usage/database errors)."""
    from fedserver.config import Config, ConfigError, load_config
    from fedserver.handlers.media.download import purge_remote_cache
    from fedserver.handlers.media.files import MediaFiles

    parser = build_parser(stdout, stderr)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE

    def fail(message: str) -> int:
        stderr.write(f"fedserver-purge-media: {message}\n")
        return EXIT_USAGE

    if not 0 <= args.days <= 100_000:
        return fail("--days must be between 0 and 100000")
    try:
        config = load_config(args.config) if args.config else Config()
    except ConfigError as e:
        return fail(str(e))
    if args.database is not None:
        try:
            config = config.replace(**database_overrides(args.database))
        except ConfigError as e:
            return fail(str(e))
    media_dir = args.media_dir or config.media_directory
    try:
        store = await open_existing_target(config.store_target(), config.describe_database(), reactor)
    except CliError as e:
        return fail(str(e))
    try:
        before = int(((time.time() if now is None else now) - args.days * 86400) * 1000)
        result = await purge_remote_cache(store, MediaFiles(media_dir), before)
    finally:
        store.close()
    if args.json:
        stdout.write(json.dumps(result) + "\n")
    else:
        stdout.write(f"purged {result['deleted']} cached remote media, {result['freed_bytes']} bytes freed\n")
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script entry point: ``fedserver-purge-media``."""
    react_main(run, argv, sys.stdout, sys.stderr)


if __name__ == "__main__":
    main()
