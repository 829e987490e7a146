"""Account data wakes a waiting /sync: a real long-poll on a whole server's client listener."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from fedserver.testing import loopback_config, start_server
from tests.test_federation_support import deferLater

C = "/_matrix/client/v3"
#: The long-poll's timeout; a woken /sync answers long before it.
LONG_POLL_MS = 30_000


class AccountDataWakesSyncTests(TestCase):
    """Client-server spec "Client Config": account data changes come down /sync; a client
    waiting in a long-poll gets them when they happen (issue 12: it stalled until the
    timeout)."""

    async def setUp(self):
        config = loopback_config(os.path.abspath(self.mktemp()), enable_registration=True)
        self.svc = await start_server(self, config)
        self.base = f"http://127.0.0.1:{self.svc.client_listener.port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        body = {"username": "ada", "password": "a-long-password", "auth": {"type": "m.login.dummy"}}
        code, reg = await self.call("POST", f"{C}/register", body)
        self.assertEqual(code, 200, reg)
        self.user, self.token = reg["user_id"], reg["access_token"]

    async def call(self, method, path, body=None):
        headers = {b"Authorization": [b"Bearer " + self.token.encode()]} if getattr(self, "token", None) else {}
        data = None if body is None else json.dumps(body).encode()
        resp = await self.http.request(method, self.base + path, data=data, headers=headers)
        return resp.code, json.loads(await resp.content())

    async def long_poll_across(self, write):
        """Start a /sync long-poll, run ``write()`` once it waits, and return the answer
        and whether it came before the long-poll's timeout."""
        code, first = await self.call("GET", f"{C}/sync?timeout=0")
        self.assertEqual(code, 200)
        started = reactor.seconds()
        poll = defer.ensureDeferred(self.call("GET", f"{C}/sync?since={quote(first['next_batch'])}&timeout={LONG_POLL_MS}"))
        for _ in range(500):
            if self.svc.rooms.notifier.waiting:
                break
            await deferLater(0.01)
        self.assertEqual(self.svc.rooms.notifier.waiting, 1, "the /sync is not waiting")
        await write()
        code, answer = await poll
        self.assertEqual(code, 200, answer)
        return answer, reactor.seconds() - started < LONG_POLL_MS / 2000

    async def test_global_account_data_wakes_sync(self):
        """A PUT of global account data answers the waiting /sync with it, before its
        timeout."""
        async def write():
            code, _ = await self.call("PUT", f"{C}/user/{quote(self.user)}/account_data/org.example.theme", {"dark": True})
            self.assertEqual(code, 200)

        answer, woken = await self.long_poll_across(write)
        self.assertTrue(woken, "the /sync waited for its timeout")
        self.assertIn({"type": "org.example.theme", "content": {"dark": True}}, answer["account_data"]["events"])

    async def test_room_account_data_wakes_sync(self):
        """A PUT of per-room account data answers the waiting /sync with it in the room's
        section, before its timeout."""
        code, created = await self.call("POST", f"{C}/createRoom", {})
        room = created["room_id"]

        async def write():
            path = f"{C}/user/{quote(self.user)}/rooms/{quote(room)}/account_data/m.tag.like"
            code, _ = await self.call("PUT", path, {"n": 1})
            self.assertEqual(code, 200)

        answer, woken = await self.long_poll_across(write)
        self.assertTrue(woken, "the /sync waited for its timeout")
        events = answer["rooms"]["join"][room]["account_data"]["events"]
        self.assertIn({"type": "m.tag.like", "content": {"n": 1}}, events)
