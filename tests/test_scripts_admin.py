"""fedserver-admin against a whole running server (the command runs in a thread: it blocks on HTTP)."""

from __future__ import annotations

import io
import json
import os
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fedserver.config import config_from_dict
from fedserver.scripts.admin import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, base_url_from_config, run, table
from fedserver.testing import loopback_config, start_server


class AdminCliTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.svc = await start_server(self, loopback_config(os.path.abspath(self.mktemp()), log_level="warn"))
        self.url = f"http://127.0.0.1:{self.svc.client_listener.port.getHost().port}"
        self.name = self.svc.config.server_name
        accounts = self.svc.accounts.accounts
        await accounts.create_user("root", "root-password", admin=True, login=False)

    async def cli(self, *argv: str, stdin: str = "", token: bool = True, prompt: Any = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        env = {"FEDSERVER_ADMIN_URL": self.url}
        if token:
            env["FEDSERVER_ADMIN_TOKEN"] = self.token
        status = await threads.deferToThread(
            run, list(argv), out, err, stdin=io.StringIO(stdin), environ=env,
            prompt=prompt or (lambda text: "prompted-pw"),
        )
        return status, out.getvalue(), err.getvalue()

    async def test_operator_session(self):
        """login prints a token; users create/list/show/reset-password/deactivate,
        rooms list/block/purge/delete and destinations list/reset work end to end; the
        server's refusals exit 1 with the Matrix error, a missing token exits 2."""
        status, out, err = await self.cli("login", "root", "--password-file", "-", stdin="root-password\n", token=False)
        self.assertEqual(status, EXIT_OK, err)
        self.token = out.strip()
        self.assertTrue(self.token)
        status, out, err = await self.cli("users", "create", "carol", "--displayname", "Carol")
        self.assertEqual((status, out.strip()), (EXIT_OK, f"@carol:{self.name}: saved"), err)
        status, out, err = await self.cli("users", "list")
        self.assertIn(f"@carol:{self.name}", out)
        self.assertIn("Carol", out)
        status, out, err = await self.cli("--json", "users", "show", "carol")
        self.assertEqual(json.loads(out)["displayname"], "Carol")
        status, out, err = await self.cli("users", "reset-password", "carol", "--password-file", "-", stdin="new-pw\n")
        self.assertEqual(status, EXIT_OK, err)
        from fedserver.handlers.client.accounts import Requester

        carol = f"@carol:{self.name}"
        room = (await self.svc.rooms.rooms.create_room(Requester(carol, "D", 1), {"name": "Cli room"}))["room_id"]
        status, out, err = await self.cli("rooms", "list")
        self.assertIn(room, out)
        self.assertIn("Cli room", out)
        status, out, err = await self.cli("rooms", "block", room)
        self.assertEqual(out.strip(), f"{room}: blocked")
        status, out, err = await self.cli("rooms", "purge", room, "--older-than-days", "0", "--delete-local")
        self.assertEqual(status, EXIT_OK, err)
        self.assertIn("events deleted", out)
        status, out, err = await self.cli("users", "deactivate", "carol")
        self.assertEqual(status, EXIT_OK, err)
        self.assertEqual((await self.svc.store.rooms.get_membership(room, carol)).membership, "leave")
        status, out, err = await self.cli("rooms", "delete", room)
        self.assertEqual(status, EXIT_OK, err)
        self.assertIsNone(await self.svc.store.get_room(room))
        await self.svc.store.set_destination_retry("down.test", 1, 5000)
        status, out, err = await self.cli("destinations", "list", "--backing-off")
        self.assertIn("down.test", out)
        status, out, err = await self.cli("destinations", "reset", "down.test")
        self.assertEqual((status, out.strip()), (EXIT_OK, "down.test: backoff reset"), err)
        status, out, err = await self.cli("users", "show", "nobody")
        self.assertEqual(status, EXIT_REFUSED)
        self.assertIn("404 M_NOT_FOUND", err)
        status, out, err = await self.cli("users", "list", token=False)
        self.assertEqual(status, EXIT_USAGE)
        self.assertIn("no admin token", err)


class AdminCliUnitTests(SynchronousTestCase):
    def test_url_from_config_and_table(self):
        """The client listener's address comes from the config file; tables align."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("client_listen: '0.0.0.0:8118'\n")
        self.assertEqual(base_url_from_config(path), "http://127.0.0.1:8118")
        with open(path, "w") as f:
            f.write("client_listen: 'tcp:8119:interface=127.0.0.2'\n")
        self.assertEqual(base_url_from_config(path), "http://127.0.0.2:8119")
        self.assertEqual(table([{"a": 1, "b": None}, {"a": "long", "b": True}], [("a", "A"), ("b", "B")]),
                         "A     B\n1     -\nlong  yes")
        self.assertIsNotNone(config_from_dict({}))

    def test_unreachable_server_exits_2(self):
        """No server at the address: exit 2 with one line."""
        out, err = io.StringIO(), io.StringIO()
        status = run(["--url", "http://127.0.0.1:9", "--token", "t", "users", "list"], out, err, environ={})
        self.assertEqual(status, EXIT_USAGE)
        self.assertIn("cannot reach the server", err.getvalue())
