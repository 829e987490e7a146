"""Command-line tools for operators (console scripts declared in setup.cfg)."""

from __future__ import annotations

import sys
from typing import Any, Awaitable, Callable, Optional, Sequence


def react_main(run: Callable[..., Awaitable[int]], argv: Optional[Sequence[str]], *extra: Any) -> None:
    """Run ``await run(reactor, arguments, *extra)`` under ``task.react`` and exit with
    the status it returns (the console scripts' shared ``main``)."""
    from twisted.internet import defer, task

    arguments = sys.argv[1:] if argv is None else list(argv)

    async def go(reactor: Any) -> None:
        status = await run(reactor, arguments, *extra)
        if status:
            raise SystemExit(status)

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


class CliError(Exception):
    """A problem to report as one line and exit status 2 (usage, configuration, database)."""


async def open_existing_database(config_path: Optional[str], database_path: Optional[str], reactor: Any):
    """Open the server's database for a read-mostly tool: ``database_path``, else the
    ``database_path`` of the configuration file, else ``fedserver.db``. The schema is
    checked as the server checks it; a missing file is not created.

    :raises CliError: naming what is wrong.
    """
    import os

    from fedserver.config import ConfigError, load_config
    from fedserver.storage import SchemaError, open_store

    if database_path is None:
        try:
            database_path = load_config(config_path).database_path
        except ConfigError as e:
            raise CliError(str(e)) from None
    if not os.path.isfile(database_path):
        raise CliError(f"no database at {database_path}")
    try:
        return await open_store(database_path, reactor)
    except SchemaError as e:
        raise CliError(f"cannot use {database_path}: {e}") from None
