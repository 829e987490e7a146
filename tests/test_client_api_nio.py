"""matrix-nio (a real client library) against the client API on a real loopback listener."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Awaitable, Callable

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial import unittest

from fedserver.handlers.client.accounts import PasswordHasher, registration_mac
from fedserver.http.admin.registration import ADMIN_PATH, build_admin_api
from fedserver.http.client.api import CLIENT_API_PATH, build_account_services, build_client_api
from fedserver.http.resource import MatrixSite
from fedserver.http.site import build_client_root
from fedserver.storage import open_store
from fedserver.testing import database_for_test

SERVER = "nio.test"
SECRET = "nio-shared-secret"


def run_asyncio_in_thread(make: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> defer.Deferred:
    """Run the coroutine ``make()`` on its own asyncio event loop in a new thread (matrix-nio
    is asyncio; the server runs on the Twisted reactor in this thread).

    :returns: a Deferred firing, in the reactor thread, with its result or failure; the
        coroutine is cancelled after ``timeout`` seconds so a hang fails the test.
    """
    d: defer.Deferred = defer.Deferred()

    def target() -> None:
        try:
            result = asyncio.run(asyncio.wait_for(make(), timeout))
        except BaseException:
            failure = Failure()
            reactor.callFromThread(d.errback, failure)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=target, name="matrix-nio", daemon=True).start()
    return d


class NioTests(unittest.TestCase):
    """register, login, whoami, profile and logout as matrix-nio does them."""

    async def _serve(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        store = await open_store(database_for_test(self, os.path.join(path, "fedserver.db")), reactor)
        self.addCleanup(store.close)
        services = build_account_services(
            reactor=reactor,
            store=store,
            server_name=SERVER,
            enable_registration=True,
            registration_shared_secret=SECRET,
            hasher=PasswordHasher(reactor, log_n=4),
        )
        self.store = store
        root = build_client_root(
            client=build_client_api(services=services), extra={ADMIN_PATH: build_admin_api(services.shared_secret)}
        )
        self.assertEqual(CLIENT_API_PATH, "/_matrix/client")
        self.tracker = WrappingFactory(MatrixSite(root, cors=True, log_name="client", reactor=reactor))
        port = reactor.listenTCP(0, self.tracker, interface="127.0.0.1")
        self.addCleanup(self._close, port)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def _close(self, port: Any) -> None:
        await port.stopListening()
        for p in list(self.tracker.protocols):
            p.transport.abortConnection()
        for _ in range(200):
            if not self.tracker.protocols:
                break
            await deferLater(reactor, 0.01, lambda: None)

    async def test_open_registration_flow(self):
        """nio registers (m.login.dummy), logs in on a second client, calls whoami, sets and
        reads its display name and profile, and logs out; the logged-out token is refused
        while the first session keeps working."""
        url = await self._serve()

        async def scenario() -> dict[str, Any]:
            import nio

            out: dict[str, Any] = {}
            first = nio.AsyncClient(url, "nio_user")
            second = nio.AsyncClient(url, "nio_user")
            try:
                reg = await first.register("nio_user", "pw-123", device_name="first device")
                out["register"] = (type(reg).__name__, getattr(reg, "user_id", None), getattr(reg, "device_id", None))
                login = await second.login("pw-123", device_name="second device")
                out["login"] = (type(login).__name__, getattr(login, "user_id", None), getattr(login, "device_id", None))
                who = await second.whoami()
                out["whoami"] = (type(who).__name__, getattr(who, "user_id", None), getattr(who, "device_id", None))
                setdn = await second.set_displayname("Nio User")
                out["set_displayname"] = type(setdn).__name__
                dn = await second.get_displayname()
                out["get_displayname"] = (type(dn).__name__, getattr(dn, "displayname", None))
                prof = await first.get_profile()
                out["get_profile"] = (type(prof).__name__, getattr(prof, "displayname", None))
                bad = nio.AsyncClient(url, "nio_user")
                try:
                    wrong = await bad.login("wrong password")
                    out["wrong_login"] = (type(wrong).__name__, getattr(wrong, "status_code", None))
                finally:
                    await bad.close()
                token = second.access_token
                logout = await second.logout()
                out["logout"] = type(logout).__name__
                second.access_token = token  # nio forgets it; ask with the old one again
                stale = await second.whoami()
                out["stale_whoami"] = (type(stale).__name__, getattr(stale, "status_code", None))
                still = await first.whoami()
                out["first_whoami"] = (type(still).__name__, getattr(still, "user_id", None))
            finally:
                await first.close()
                await second.close()
            return out

        out = await run_asyncio_in_thread(scenario)
        uid = f"@nio_user:{SERVER}"
        self.assertEqual(out["register"][:2], ("RegisterResponse", uid))
        self.assertEqual(out["login"][:2], ("LoginResponse", uid))
        self.assertNotEqual(out["login"][2], out["register"][2])
        self.assertEqual(out["whoami"], ("WhoamiResponse", uid, out["login"][2]))
        self.assertEqual(out["set_displayname"], "ProfileSetDisplayNameResponse")
        self.assertEqual(out["get_displayname"], ("ProfileGetDisplayNameResponse", "Nio User"))
        self.assertEqual(out["get_profile"], ("ProfileGetResponse", "Nio User"))
        self.assertEqual(out["wrong_login"][0], "LoginError")
        self.assertEqual(out["logout"], "LogoutResponse")
        self.assertEqual(out["stale_whoami"][0], "WhoamiError")
        self.assertEqual(out["first_whoami"], ("WhoamiResponse", uid))
        devices = await self.store.accounts.get_devices(uid)
        self.assertEqual([d.display_name for d in devices], ["first device"])

    async def test_shared_secret_then_nio_login(self):
        """An admin created through /_synapse/admin/v1/register (as register_new_matrix_user
        does it, over HTTP) can log in with nio."""
        url = await self._serve()

        async def scenario() -> dict[str, Any]:
            import aiohttp
            import nio

            out: dict[str, Any] = {}
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/_synapse/admin/v1/register") as r:
                    nonce = (await r.json())["nonce"]
                body = {
                    "nonce": nonce, "username": "boss", "password": "pw", "admin": True,
                    "mac": registration_mac(SECRET, nonce, "boss", "pw", True),
                }
                async with http.post(url + "/_synapse/admin/v1/register", json=body) as r:
                    out["register"] = (r.status, await r.json())
            client = nio.AsyncClient(url, "@boss:" + SERVER)
            try:
                login = await client.login("pw")
                out["login"] = (type(login).__name__, getattr(login, "user_id", None))
                who = await client.whoami()
                out["whoami"] = getattr(who, "user_id", None)
            finally:
                await client.close()
            return out

        out = await run_asyncio_in_thread(scenario)
        self.assertEqual(out["register"][0], 200, out["register"])
        self.assertEqual(out["register"][1]["user_id"], f"@boss:{SERVER}")
        self.assertEqual(out["login"], ("LoginResponse", f"@boss:{SERVER}"))
        self.assertEqual(out["whoami"], f"@boss:{SERVER}")
        self.assertTrue((await self.store.accounts.get_user(f"@boss:{SERVER}")).admin)
