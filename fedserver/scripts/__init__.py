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


def is_database_url(value: str) -> bool:
    """Whether a ``--database`` argument names a PostgreSQL database rather than a file."""
    return value.startswith(("postgresql://", "postgres://"))


def database_overrides(value: str) -> dict[str, Any]:
    """Configuration overrides for a ``--database`` argument: a SQLite file, or a
    PostgreSQL URL (``postgresql://user@host/dbname``)."""
    if is_database_url(value):
        return {"database": {"backend": "postgresql", "dsn": value}}
    return {"database_path": value, "database": {"backend": "sqlite"}}


async def open_existing_database(config_path: Optional[str], database_path: Optional[str], reactor: Any):
    """Open the server's database for a read-mostly tool: ``database_path`` (a SQLite file
    or a PostgreSQL URL), else the database of the configuration file, else
    ``fedserver.db``. The schema is checked as the server checks it; a missing file is
    not created.

    :raises CliError: naming what is wrong.
    """
    from fedserver.config import ConfigError, load_config

    try:
        config = load_config(config_path, database_overrides(database_path) if database_path is not None else None)
    except ConfigError as e:
        raise CliError(str(e)) from None
    return await open_existing_target(config.store_target(), config.describe_database(), reactor)


async def open_existing_target(target: Any, description: str, reactor: Any):
    """Open ``target`` (what :meth:`fedserver.config.Config.store_target` gives) for a
    tool: a SQLite file must exist.

    :raises CliError: naming what is wrong.
    """
    import os

    from fedserver.storage import SchemaError, StorageError, open_store

    if isinstance(target, str) and not os.path.isfile(target):
        raise CliError(f"no database at {target}")
    try:
        return await open_store(target, reactor)
    except SchemaError as e:
        raise CliError(f"cannot use {description}: {e}") from None
    except StorageError as e:
        raise CliError(f"cannot use {description}: {e}") from None
