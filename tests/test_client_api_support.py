"""Shared helpers for the client API tests: a real store, the account handlers and a StubTreq client."""

from __future__ import annotations

import json
import os
from typing import Any, Optional
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from fedserver.handlers.client.accounts import AccountHandler, PasswordHasher, SharedSecretRegistration
from fedserver.handlers.client.profile import ProfileHandler
from fedserver.http.admin.registration import ADMIN_PATH, build_admin_api
from fedserver.http.client.api import ClientAPI
from fedserver.http.site import build_client_root
from fedserver.ratelimit import DEFAULT_RULES, RateLimiter
from fedserver.storage import open_store
from fedserver.testing import database_for_test

SERVER = "test.example"
SECRET = "shared-secret-for-tests"


def q(user_id: str) -> str:
    """A path segment for ``user_id`` (percent-encoded as clients send it)."""
    return quote(user_id, safe="")


class ClientApiTestCase(unittest.TestCase):
    """Base class: a real SQLite store under ``self.mktemp()``, the account handlers with a
    cheap password hash (scrypt N=2**4) and a :class:`StubTreq` on the client listener's
    tree (``/_matrix/client`` and ``/_synapse/admin``).

    ``self.clock`` drives rate limits, UIA sessions and nonces; the database and the KDF
    run on trial's reactor.
    """

    enable_registration = True
    shared_secret: Optional[str] = SECRET
    rules: Any = None
    federation_client: Any = None

    def setUp(self) -> defer.Deferred:
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        path = self.mktemp()
        os.makedirs(path)
        self.db_path = os.path.join(path, "fedserver.db")
        self.store = await open_store(database_for_test(self, self.db_path), reactor)
        self.addCleanup(self.store.close)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.limiter = RateLimiter(self.clock, dict(DEFAULT_RULES) if self.rules is None else self.rules)
        self.hasher = PasswordHasher(reactor, log_n=4)
        self.accounts = AccountHandler(
            self.store, SERVER, self.hasher, self.clock, ratelimiter=self.limiter,
            enable_registration=self.enable_registration,
        )
        self.profiles = ProfileHandler(self.store, self.federation_client, SERVER)
        self.shared = SharedSecretRegistration(self.accounts, self.shared_secret, self.clock, ratelimiter=self.limiter)
        self.api = ClientAPI(accounts=self.accounts, profiles=self.profiles)
        root = build_client_root(client=self.api, extra={ADMIN_PATH: build_admin_api(self.shared)})
        self.stub = StubTreq(root)

    async def _pump(self, d: defer.Deferred) -> Any:
        # The resource answers asynchronously (database thread): move bytes between the
        # in-memory client and server until the response is in.
        done: list[bool] = []

        def mark(result: Any) -> Any:
            done.append(True)
            return result

        d.addBoth(mark)  # not d.called: a Deferred waiting on another counts as called
        for _ in range(20_000):
            self.stub.flush()
            if done:
                break
            await deferLater(reactor, 0.001, lambda: None)
        return await d

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: Optional[str] = None,
        raw: Optional[bytes] = None,
        headers: Optional[dict[str, list[str]]] = None,
        query_token: bool = False,
    ) -> tuple[int, Any]:
        """Send a request; ``path`` starts with ``/_matrix`` or ``/_synapse``.

        :returns: ``(status, parsed JSON body)``.
        """
        hdrs: dict[str, list[str]] = dict(headers or {})
        url = "http://" + SERVER + path
        if token is not None:
            if query_token:
                url += ("&" if "?" in url else "?") + "access_token=" + quote(token, safe="")
            else:
                hdrs["Authorization"] = ["Bearer " + token]
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            hdrs.setdefault("Content-Type", ["application/json"])
        resp = await self._pump(self.stub.request(method, url, data=data, headers=hdrs))
        content = await self._pump(resp.content())
        return resp.code, json.loads(content) if content else None

    async def register(self, localpart: str, password: str = "correct horse", **extra: Any) -> dict[str, Any]:
        """Register through ``POST /register`` with the dummy stage; returns the body."""
        body = {"username": localpart, "password": password, "auth": {"type": "m.login.dummy"}, **extra}
        code, resp = await self.call("POST", "/_matrix/client/v3/register", body)
        self.assertEqual(code, 200, resp)
        return resp

    async def login(self, user: str, password: str = "correct horse", **extra: Any) -> tuple[int, Any]:
        """``POST /login`` with ``m.id.user``."""
        body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password, **extra}
        return await self.call("POST", "/_matrix/client/v3/login", body)

    def assertError(self, result: tuple[int, Any], code: int, errcode: str) -> dict[str, Any]:
        """Assert a Matrix error response; returns its body."""
        status, body = result
        self.assertEqual((status, body.get("errcode") if isinstance(body, dict) else None), (code, errcode), body)
        self.assertIsInstance(body.get("error"), str)
        return body
