"""Shared-secret registration (/_synapse/admin/v1/register) through StubTreq on a real store."""

from __future__ import annotations

from fedserver.handlers.client.accounts import registration_mac
from tests.test_client_api_support import SECRET, SERVER, ClientApiTestCase

PATH = "/_synapse/admin/v1/register"


class SharedSecretTests(ClientApiTestCase):
    """Nonces, MACs and the users they create."""

    async def nonce(self) -> str:
        code, body = await self.call("GET", PATH)
        self.assertEqual(code, 200)
        return body["nonce"]

    def body(self, nonce: str, username: str = "admin1", password: str = "pw", admin: bool = False, user_type=None, **extra):
        b = {
            "nonce": nonce,
            "username": username,
            "password": password,
            "admin": admin,
            "mac": registration_mac(SECRET, nonce, username, password, admin, user_type),
            **extra,
        }
        if user_type is not None:
            b["user_type"] = user_type
        return b

    async def test_valid_mac_creates_logged_in_user(self):
        """A correct MAC creates the user (admin flag kept), returns a working access token,
        and the display name defaults to the username."""
        nonce = await self.nonce()
        code, resp = await self.call("POST", PATH, self.body(nonce, "root", "pw", admin=True))
        self.assertEqual(code, 200, resp)
        self.assertEqual(resp["user_id"], f"@root:{SERVER}")
        self.assertEqual(resp["home_server"], SERVER)
        self.assertEqual(set(resp), {"user_id", "home_server", "access_token", "device_id"})
        user = await self.store.accounts.get_user(resp["user_id"])
        self.assertTrue(user.admin)
        code, me = await self.call("GET", "/_matrix/client/v3/account/whoami", token=resp["access_token"])
        self.assertEqual((code, me["device_id"]), (200, resp["device_id"]))
        self.assertEqual((await self.store.accounts.get_profile(resp["user_id"]))["displayname"], "root")
        self.assertEqual((await self.login("root", "pw"))[0], 200)

    async def test_not_admin_user_type_and_displayname(self):
        """admin false, a user_type covered by the MAC, and a given displayname."""
        nonce = await self.nonce()
        code, resp = await self.call("POST", PATH, self.body(nonce, "botty", admin=False, user_type="bot", displayname="Botty"))
        self.assertEqual(code, 200, resp)
        user = await self.store.accounts.get_user(resp["user_id"])
        self.assertEqual((user.admin, user.user_type), (False, "bot"))
        self.assertEqual((await self.store.accounts.get_profile(resp["user_id"]))["displayname"], "Botty")

    async def test_bad_mac(self):
        """A wrong MAC (e.g. claiming admin with a notadmin MAC) is 403 M_FORBIDDEN, no user
        is made, and the nonce is used up."""
        nonce = await self.nonce()
        body = self.body(nonce, "sneaky", admin=False)
        body["admin"] = True
        self.assertError(await self.call("POST", PATH, body), 403, "M_FORBIDDEN")
        self.assertIsNone(await self.store.accounts.get_user(f"@sneaky:{SERVER}"))
        self.assertError(await self.call("POST", PATH, self.body(nonce, "sneaky")), 400, "M_UNKNOWN")

    async def test_nonce_single_use(self):
        """A nonce works once; the second registration with it is 400."""
        nonce = await self.nonce()
        self.assertEqual((await self.call("POST", PATH, self.body(nonce, "once")))[0], 200)
        self.assertError(await self.call("POST", PATH, self.body(nonce, "twice")), 400, "M_UNKNOWN")
        self.assertIsNone(await self.store.accounts.get_user(f"@twice:{SERVER}"))

    async def test_nonce_expires(self):
        """A nonce older than 60 seconds is refused; unknown nonces are refused."""
        nonce = await self.nonce()
        self.clock.advance(61)
        self.assertError(await self.call("POST", PATH, self.body(nonce, "late")), 400, "M_UNKNOWN")
        self.assertError(await self.call("POST", PATH, self.body("made-up", "late")), 400, "M_UNKNOWN")

    async def test_username_rules(self):
        """The username is lowercased (the MAC covers it as sent); an invalid one is 400
        M_INVALID_USERNAME; a taken one 400 M_USER_IN_USE."""
        code, resp = await self.call("POST", PATH, self.body(await self.nonce(), "MixedCase"))
        self.assertEqual((code, resp["user_id"]), (200, f"@mixedcase:{SERVER}"))
        self.assertError(await self.call("POST", PATH, self.body(await self.nonce(), "bad:name")), 400, "M_INVALID_USERNAME")
        self.assertError(await self.call("POST", PATH, self.body(await self.nonce(), "mixedcase")), 400, "M_USER_IN_USE")

    async def test_malformed_bodies(self):
        """Missing or mistyped fields are 400 with a Matrix error, never 500."""
        self.limiter.rules = {}  # more failures than the failure limit allows
        cases = [
            ({}, "M_MISSING_PARAM"),
            ({"nonce": 5}, "M_BAD_JSON"),
        ]
        for body, errcode in cases:
            self.assertError(await self.call("POST", PATH, body), 400, errcode)
        for field, value in (("username", 5), ("password", ""), ("admin", "yes"), ("user_type", "wizard"), ("displayname", 3)):
            body = self.body(await self.nonce(), "field")
            body[field] = value
            self.assertError(await self.call("POST", PATH, body), 400, "M_INVALID_PARAM")
        body = self.body(await self.nonce(), "nomac")
        del body["mac"]
        self.assertError(await self.call("POST", PATH, body), 400, "M_MISSING_PARAM")
        self.assertError(await self.call("POST", PATH, raw=b"nope"), 400, "M_NOT_JSON")

    async def test_repeated_failures_rate_limited(self):
        """After 5 failed attempts from one address the endpoint answers 429."""
        for _ in range(5):
            self.assertError(await self.call("POST", PATH, self.body("bogus", "x")), 400, "M_UNKNOWN")
        self.assertError(await self.call("POST", PATH, self.body(await self.nonce(), "x")), 429, "M_LIMIT_EXCEEDED")

    async def test_nonces_bounded(self):
        """Outstanding nonces are bounded: the oldest are forgotten beyond the limit."""
        self.shared._max = 3
        first = await self.nonce()
        for _ in range(3):
            await self.nonce()
        self.assertEqual(len(self.shared._nonces), 3)
        self.assertError(await self.call("POST", PATH, self.body(first, "old")), 400, "M_UNKNOWN")


class SharedSecretDisabledTests(ClientApiTestCase):
    """registration_shared_secret null (the default)."""

    shared_secret = None

    async def test_disabled(self):
        """GET and POST answer 400 M_UNKNOWN (as Synapse does) and create nothing."""
        self.assertError(await self.call("GET", PATH), 400, "M_UNKNOWN")
        body = {"nonce": "n", "username": "u", "password": "p", "mac": registration_mac("", "n", "u", "p", False)}
        self.assertError(await self.call("POST", PATH, body), 400, "M_UNKNOWN")
        self.assertIsNone(await self.store.accounts.get_user(f"@u:{SERVER}"))

    async def test_other_admin_paths(self):
        """Other paths under /_synapse/admin are 404 M_UNRECOGNIZED; wrong methods 405."""
        self.assertError(await self.call("GET", "/_synapse/admin/v1/users"), 404, "M_UNRECOGNIZED")
        self.assertError(await self.call("PUT", PATH, {}), 405, "M_UNRECOGNIZED")


class MacTests(ClientApiTestCase):
    """The MAC matches Synapse's documented construction."""

    def test_documented_example(self):
        """HMAC-SHA1 over nonce NUL user NUL password NUL admin|notadmin [NUL user_type]."""
        import hashlib
        import hmac

        want = hmac.new(b"k", b"n\x00u\x00p\x00admin", hashlib.sha1).hexdigest()
        self.assertEqual(registration_mac("k", "n", "u", "p", True), want)
        want = hmac.new(b"k", b"n\x00u\x00p\x00notadmin\x00bot", hashlib.sha1).hexdigest()
        self.assertEqual(registration_mac("k", "n", "u", "p", False, "bot"), want)
