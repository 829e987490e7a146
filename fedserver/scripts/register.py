"""fedserver-register: create a local user directly in the server's SQLite database."""

from __future__ import annotations

import argparse
import getpass
import os
import sqlite3
import sys
from typing import Any, Optional, Sequence, TextIO


from fedserver.scripts import database_overrides, react_main
from fedserver.config import ConfigError, load_config
from fedserver.handlers.client.accounts import MAX_PASSWORD_LENGTH, AccountHandler, PasswordHasher, split_user_id
from fedserver.errors import MatrixError
from fedserver.storage import StorageError, open_store

PROG = "fedserver-register"


class UsageError(Exception):
    """A problem with the command line or its input; the message is shown as is."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Create a user of this homeserver directly in its SQLite database. Works whether "
            "the server is running or not. Without --config, the database and server name "
            "are the server's defaults (fedserver.db in the current directory, localhost:8448)."
        ),
    )
    parser.add_argument("-c", "--config", help="the server's YAML configuration file")
    parser.add_argument("--database", help="SQLite database file or postgresql:// URL (overrides the configuration)")
    parser.add_argument("--server-name", help="server name (overrides the configuration)")
    parser.add_argument("-u", "--user", help="localpart (or full user id) of the new user; asked for if omitted")
    pw = parser.add_mutually_exclusive_group()
    pw.add_argument("-p", "--password", help="the password (visible to other local users in the process list: prefer the prompt or --password-file)")
    pw.add_argument("--password-file", help="read the password from the first line of this file ('-' for standard input)")
    parser.add_argument("-a", "--admin", action="store_true", help="make the user a server admin")
    parser.add_argument("--displayname", help="display name (default: the localpart)")
    return parser


def _read_password(args: argparse.Namespace, stdin: TextIO) -> str:
    if args.password is not None:
        return args.password
    if args.password_file is not None:
        try:
            if args.password_file == "-":
                line = stdin.readline()
            else:
                with open(args.password_file, encoding="utf-8") as f:
                    line = f.readline()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the password file: {e}") from None
        return line.rstrip("\r\n")
    if not stdin.isatty():
        raise UsageError("no password given: use --password-file, or run in a terminal to be asked")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Confirm password: "):
        raise UsageError("the passwords do not match")
    return first


def _localpart(user: str, server_name: str) -> str:
    if user.startswith("@"):
        parts = split_user_id(user)
        if parts is None or parts[1] != server_name:
            raise UsageError(f"{user} is not a user id of {server_name}")
        return parts[0]
    return user


async def create_user(
    reactor: Any,
    database_path: Any,
    server_name: str,
    localpart: str,
    password: str,
    *,
    admin: bool = False,
    displayname: Optional[str] = None,
) -> str:
    """Open the database (creating or upgrading its schema), create the user, close it.

    :returns: the new user id.
    :raises MatrixError: ``M_INVALID_USERNAME`` or ``M_USER_IN_USE``.
    :raises StorageError: if the database cannot be used.
    """
    store = await open_store(database_path, reactor)
    try:
        accounts = AccountHandler(store, server_name, PasswordHasher(reactor), reactor)
        user_id, _ = await accounts.create_user(localpart, password, admin=admin, displayname=displayname, login=False)
        return user_id
    finally:
        store.close()


async def run(reactor: Any, argv: Sequence[str], *, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    """The tool, minus process handling.

    :returns: the exit status: 0 created, 1 refused (bad input, user exists, database
        problem), 2 bad command line.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    overrides: dict[str, Any] = {}
    if args.database is not None:
        overrides.update(database_overrides(args.database))
    if args.server_name is not None:
        overrides["server_name"] = args.server_name
    try:
        config = load_config(args.config, overrides)
        user = args.user
        if user is None:
            if not stdin.isatty():
                raise UsageError("no user given: use --user")
            user = input("User (localpart): ").strip()
        localpart = _localpart(user, config.server_name)
        password = _read_password(args, stdin)
        if not password or len(password) > MAX_PASSWORD_LENGTH or "\x00" in password:
            raise UsageError(f"the password must be 1 to {MAX_PASSWORD_LENGTH} characters, without NUL")
        if args.config is None and args.database is None and not os.path.exists(config.database_path):
            stderr.write(f"{PROG}: note: creating a new database {config.database_path}\n")
        user_id = await create_user(
            reactor, config.store_target(), config.server_name, localpart, password,
            admin=args.admin, displayname=args.displayname,
        )
    except (ConfigError, UsageError) as e:
        stderr.write(f"{PROG}: {e}\n")
        return 1
    except MatrixError as e:
        stderr.write(f"{PROG}: {e.error} ({e.errcode})\n")
        return 1
    except (StorageError, sqlite3.Error, OSError) as e:
        stderr.write(f"{PROG}: database {config.describe_database()}: {e}\n")
        return 1
    stdout.write(f"Created {'admin ' if args.admin else ''}user {user_id}\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script entry point (``fedserver-register``); exits with :func:`run`'s status."""
    react_main(run, argv)


if __name__ == "__main__":
    main()
