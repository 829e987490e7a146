"""fedserver-register: creating users in a real SQLite database, in process and as a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.internet import reactor, threads
from twisted.trial import unittest

from fedserver.handlers.client.accounts import PasswordHasher
from fedserver.scripts.register import run
from fedserver.storage import open_store
from fedserver.testing import database_arg_for_test, database_for_test, database_yaml_for_test

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RegisterScriptTests(unittest.TestCase):
    """The tool's behaviour through run(), on temp databases."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.db = os.path.join(self.dir, "fedserver.db")
        self.db_arg = database_arg_for_test(self, self.db)  # a path, or a postgresql:// URL

    async def run_tool(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await run(reactor, list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    async def user(self, user_id: str):
        store = await open_store(database_for_test(self, self.db), reactor)
        try:
            return await store.accounts.get_user(user_id), await store.accounts.get_profile(user_id)
        finally:
            store.close()

    async def test_creates_admin_user(self):
        """With --database/--server-name and a password on stdin, the user is created with
        a verifiable scrypt hash, the admin flag and a display name; exit status 0."""
        code, out, err = await self.run_tool(
            "--database", self.db_arg, "--server-name", "cli.example", "-u", "root", "--password-file", "-", "--admin",
            "--displayname", "Root", stdin="s3cret\n",
        )
        self.assertEqual((code, out), (0, "Created admin user @root:cli.example\n"), err)
        user, profile = await self.user("@root:cli.example")
        self.assertTrue(user.admin)
        self.assertEqual(profile["displayname"], "Root")
        self.assertTrue(user.password_hash.startswith("$scrypt$ln=14,"))
        self.assertTrue(PasswordHasher().verify_sync("s3cret", user.password_hash))

    async def test_config_file(self):
        """--config supplies the server name and database path; a full user id of that
        server is accepted."""
        cfg = os.path.join(self.dir, "fedserver.yaml")
        with open(cfg, "w") as f:
            f.write("server_name: conf.example\n" + database_yaml_for_test(self.db))
        code, out, err = await self.run_tool("-c", cfg, "-u", "@bob:conf.example", "-p", "pw")
        self.assertEqual((code, out), (0, "Created user @bob:conf.example\n"), err)
        user, _ = await self.user("@bob:conf.example")
        self.assertFalse(user.admin)

    async def test_refusals(self):
        """Existing users, invalid names, other servers' ids, missing passwords (no
        terminal) and bad config are refused with exit status 1 and a one-line message;
        bad options with 2."""
        base = ("--database", self.db_arg, "--server-name", "cli.example")
        self.assertEqual((await self.run_tool(*base, "-u", "dup", "-p", "pw"))[0], 0)
        cases = [
            ((*base, "-u", "dup", "-p", "pw"), "already taken"),
            ((*base, "-u", "Upper", "-p", "pw"), "M_INVALID_USERNAME"),
            ((*base, "-u", "@x:other.example", "-p", "pw"), "not a user id of cli.example"),
            ((*base, "-u", "nopw"), "no password given"),
            ((*base, "-u", "empty", "--password-file", "-"), "password must be"),
            ((*base, "-p", "pw"), "no user given"),
            (("--database", self.db_arg, "--server-name", "bad name", "-u", "x", "-p", "pw"), "server_name"),
            (("-c", os.path.join(self.dir, "missing.yaml"), "-u", "x", "-p", "pw"), "cannot read config file"),
        ]
        for argv, message in cases:
            code, out, err = await self.run_tool(*argv)
            self.assertEqual((code, out), (1, ""), argv)
            self.assertIn(message, err, argv)
            self.assertTrue(err.startswith("fedserver-register: "))
            self.assertEqual(err.count("\n"), 1, err)
        code, out, err = await self.run_tool("--bogus")
        self.assertEqual(code, 2)

    async def test_not_a_database(self):
        """A file that is not a fedserver database is refused with status 1."""
        with open(self.db, "w") as f:
            f.write("not sqlite at all" * 100)
        code, out, err = await self.run_tool("--database", self.db, "-u", "x", "-p", "pw")
        self.assertEqual(code, 1)
        self.assertIn("fedserver-register: database", err)

    async def test_console_script_while_server_store_open(self):
        """As a separate process (python -m fedserver.scripts.register), while this process
        holds the database open like a running server, the user is created and is visible
        to the open store at once."""
        store = await open_store(database_for_test(self, self.db), reactor)
        self.addCleanup(store.close)
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        argv = [sys.executable, "-m", "fedserver.scripts.register", "--database", self.db_arg, "--server-name", "run.example",
                "-u", "live", "--password-file", "-"]
        proc = await threads.deferToThread(
            subprocess.run, argv, input="pw\n", capture_output=True, text=True, env=env, cwd=self.dir, timeout=120
        )
        self.assertEqual((proc.returncode, proc.stdout), (0, "Created user @live:run.example\n"), proc.stderr)
        user = await store.accounts.get_user("@live:run.example")
        self.assertIsNotNone(user)
        self.assertTrue(await PasswordHasher(reactor).verify("pw", user.password_hash))
