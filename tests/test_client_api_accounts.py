"""Client API account endpoints through StubTreq on a real SQLite store: versions, register,
login, logout, whoami, passwords, tokens, routing and errors."""

from __future__ import annotations

import hashlib
import sqlite3

from fedserver.http.client.api import SUPPORTED_VERSIONS
from tests.test_client_api_support import SERVER, ClientApiTestCase

C = "/_matrix/client"


class VersionsAndRoutingTests(ClientApiTestCase):
    """/versions, unknown paths, methods, aliases, trailing slashes."""

    async def test_versions(self):
        """GET /versions needs no token and lists v1.1 to v1.12 with empty unstable_features."""
        code, body = await self.call("GET", C + "/versions")
        self.assertEqual(code, 200)
        self.assertEqual(body["versions"], [f"v1.{n}" for n in range(1, 13)])
        self.assertEqual(list(SUPPORTED_VERSIONS), body["versions"])
        self.assertEqual(body["unstable_features"], {})

    async def test_unknown_path_and_method(self):
        """An unknown path is 404 M_UNRECOGNIZED, a known path with another method 405."""
        self.assertError(await self.call("GET", C + "/v3/nonsense"), 404, "M_UNRECOGNIZED")
        self.assertError(await self.call("DELETE", C + "/v3/login"), 405, "M_UNRECOGNIZED")
        self.assertError(await self.call("GET", "/_matrix/other"), 404, "M_UNRECOGNIZED")

    async def test_login_flows(self):
        """GET /login offers m.login.password, under v3 and r0."""
        for prefix in ("/v3", "/r0"):
            code, body = await self.call("GET", C + prefix + "/login")
            self.assertEqual((code, body), (200, {"flows": [{"type": "m.login.password"}]}))

    async def test_r0_alias_and_query_token(self):
        """/r0/account/whoami answers like /v3, and the token may come as a query parameter."""
        reg = await self.register("alias")
        code, body = await self.call("GET", C + "/r0/account/whoami", token=reg["access_token"], query_token=True)
        self.assertEqual((code, body["user_id"]), (200, f"@alias:{SERVER}"))

    async def test_trailing_slash(self):
        """A trailing slash (as SDKs send for /pushrules/) is ignored: /v3/account/whoami/
        answers like /v3/account/whoami."""
        reg = await self.register("pushy")
        code, body = await self.call("GET", C + "/v3/account/whoami/", token=reg["access_token"])
        self.assertEqual((code, body["user_id"]), (200, f"@pushy:{SERVER}"))

    async def test_capabilities(self):
        """/capabilities lists the registry's room versions (stable), default 10, and the
        account capabilities; it needs a token."""
        reg = await self.register("caps")
        self.assertError(await self.call("GET", C + "/v3/capabilities"), 401, "M_MISSING_TOKEN")
        code, body = await self.call("GET", C + "/v3/capabilities", token=reg["access_token"])
        self.assertEqual(code, 200)
        caps = body["capabilities"]
        self.assertEqual(caps["m.room_versions"]["default"], "10")
        self.assertEqual(caps["m.room_versions"]["available"], dict(self.api.room_versions.capabilities()))
        self.assertEqual(caps["m.room_versions"]["available"]["11"], "stable")
        self.assertEqual(caps["m.change_password"], {"enabled": True})
        self.assertEqual(caps["m.set_displayname"], {"enabled": True})

    async def test_turn_server(self):
        """/voip/turnServer answers {} (no TURN server) for an authenticated user."""
        reg = await self.register("turn")
        self.assertEqual(await self.call("GET", C + "/v3/voip/turnServer", token=reg["access_token"]), (200, {}))

    async def test_add_authed_route(self):
        """Routes added by other modules get the Requester; a duplicate route is refused;
        without a token the handler never runs."""
        seen = []

        async def handler(request, requester, room_id):
            seen.append((requester, room_id))
            return {"room_id": room_id}

        self.api.add_authed_route("POST", "/v3/rooms/{room_id}/thing", handler)
        self.assertRaises(ValueError, self.api.add_authed_route, "POST", "/v3/rooms/{room_id}/thing", handler)
        self.assertError(await self.call("POST", C + "/v3/rooms/!r:x/thing", {}), 401, "M_MISSING_TOKEN")
        self.assertEqual(seen, [])
        reg = await self.register("router")
        code, body = await self.call("POST", C + "/r0/rooms/%21r%3Ax/thing", {}, token=reg["access_token"])
        self.assertEqual((code, body), (200, {"room_id": "!r:x"}))
        (requester, room_id), = seen
        self.assertEqual((requester.user_id, requester.device_id), (reg["user_id"], reg["device_id"]))


class RegisterTests(ClientApiTestCase):
    """POST /register with the dummy UIA flow, and /register/available."""

    async def test_uia_round_trip(self):
        """Without auth the server answers 401 with the m.login.dummy flow and a session;
        completing the stage with that session registers the user and logs it in."""
        body = {"username": "alice", "password": "pw1", "initial_device_display_name": "Phone"}
        code, challenge = await self.call("POST", C + "/v3/register", body)
        self.assertEqual(code, 401)
        self.assertEqual(challenge["flows"], [{"stages": ["m.login.dummy"]}])
        self.assertEqual(challenge["params"], {})
        self.assertIsInstance(challenge["session"], str)
        self.assertNotIn("errcode", challenge)
        body["auth"] = {"type": "m.login.dummy", "session": challenge["session"]}
        code, reg = await self.call("POST", C + "/v3/register", body)
        self.assertEqual(code, 200, reg)
        self.assertEqual(reg["user_id"], f"@alice:{SERVER}")
        self.assertEqual(reg["home_server"], SERVER)
        self.assertTrue(reg["access_token"].startswith("fst_"))
        devices = await self.store.accounts.get_devices(reg["user_id"])
        self.assertEqual([(d.device_id, d.display_name) for d in devices], [(reg["device_id"], "Phone")])
        code, me = await self.call("GET", C + "/v3/account/whoami", token=reg["access_token"])
        self.assertEqual((code, me), (200, {"user_id": reg["user_id"], "device_id": reg["device_id"], "is_guest": False}))

    async def test_dummy_without_session(self):
        """A dummy stage without a session (what matrix-nio sends) registers directly,
        with the client's device_id."""
        reg = await self.register("bob", device_id="MYDEVICE")
        self.assertEqual(reg["device_id"], "MYDEVICE")

    async def test_unknown_session_restarts(self):
        """An unknown session id gets a fresh 401 challenge with an errcode."""
        body = {"username": "carol", "password": "pw", "auth": {"type": "m.login.dummy", "session": "nope"}}
        code, challenge = await self.call("POST", C + "/v3/register", body)
        self.assertEqual(code, 401)
        self.assertNotEqual(challenge["session"], "nope")
        self.assertIn("errcode", challenge)

    async def test_unsupported_stage(self):
        """A stage type not in the flows is answered 401 with the flows and an errcode."""
        body = {"username": "dave", "password": "pw", "auth": {"type": "m.login.recaptcha"}}
        code, challenge = await self.call("POST", C + "/v3/register", body)
        self.assertEqual((code, challenge["errcode"]), (401, "M_UNRECOGNIZED"))
        self.assertEqual(challenge["flows"], [{"stages": ["m.login.dummy"]}])

    async def test_username_checks_come_before_uia(self):
        """Invalid or taken usernames are refused with 400 before any UIA round (spec)."""
        await self.register("taken")
        for bad in ("Upper", "has:colon", "", "sp ace", "é", "x" * 300):
            self.assertError(await self.call("POST", C + "/v3/register", {"username": bad, "password": "p"}), 400, "M_INVALID_USERNAME")
        self.assertError(await self.call("POST", C + "/v3/register", {"username": 5, "password": "p"}), 400, "M_INVALID_USERNAME")
        self.assertError(await self.call("POST", C + "/v3/register", {"username": "taken", "password": "p"}), 400, "M_USER_IN_USE")

    async def test_allowed_localpart_characters(self):
        """Every character the spec allows in a new localpart (a-z 0-9 . _ = - / +) works."""
        reg = await self.register("a.b_c=d-e/f+g9")
        self.assertEqual(reg["user_id"], f"@a.b_c=d-e/f+g9:{SERVER}")

    async def test_inhibit_login(self):
        """inhibit_login: the user is created but no token or device is returned or made."""
        reg = await self.register("quiet", inhibit_login=True)
        self.assertEqual(reg, {"user_id": f"@quiet:{SERVER}", "home_server": SERVER})
        self.assertEqual(await self.store.accounts.get_devices(reg["user_id"]), [])
        self.assertEqual((await self.login("quiet"))[0], 200)

    async def test_generated_username(self):
        """Without a username the server picks a valid localpart."""
        code, reg = await self.call("POST", C + "/v3/register", {"password": "pw", "auth": {"type": "m.login.dummy"}})
        self.assertEqual(code, 200)
        localpart = reg["user_id"][1:].split(":")[0]
        self.assertRegex(localpart, r"^[a-z0-9]+$")

    async def test_password_required_and_checked(self):
        """No password: 400 M_MISSING_PARAM after UIA; a non-string, empty or huge password
        is refused with 400 before it."""
        self.assertError(await self.call("POST", C + "/v3/register", {"username": "nopw", "auth": {"type": "m.login.dummy"}}), 400, "M_MISSING_PARAM")
        self.assertError(await self.call("POST", C + "/v3/register", {"username": "nopw", "password": 1}), 400, "M_BAD_JSON")
        self.assertError(await self.call("POST", C + "/v3/register", {"username": "nopw", "password": ""}), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("POST", C + "/v3/register", {"username": "nopw", "password": "x" * 513}), 400, "M_INVALID_PARAM")
        self.assertIsNone(await self.store.accounts.get_user(f"@nopw:{SERVER}"))

    async def test_guest_and_bad_kind(self):
        """kind=guest is 403 M_FORBIDDEN (no guest accounts); an unknown kind 400."""
        self.assertError(await self.call("POST", C + "/v3/register?kind=guest", {}), 403, "M_FORBIDDEN")
        self.assertError(await self.call("POST", C + "/v3/register?kind=robot", {}), 400, "M_INVALID_PARAM")

    async def test_bad_bodies(self):
        """Not JSON: 400 M_NOT_JSON; JSON but not an object: 400 M_BAD_JSON; bad device
        fields: 400 M_INVALID_PARAM; auth not an object: 400 M_BAD_JSON."""
        self.assertError(await self.call("POST", C + "/v3/register", raw=b"{nope"), 400, "M_NOT_JSON")
        self.assertError(await self.call("POST", C + "/v3/register", [1]), 400, "M_BAD_JSON")
        self.assertError(await self.call("POST", C + "/v3/register", {"device_id": 7}), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("POST", C + "/v3/register", {"initial_device_display_name": "x" * 600}), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("POST", C + "/v3/register", {"inhibit_login": "yes"}), 400, "M_BAD_JSON")
        self.assertError(await self.call("POST", C + "/v3/register", {"username": "z", "password": "p", "auth": "x"}), 400, "M_BAD_JSON")

    async def test_available(self):
        """/register/available: true for a free valid name, M_USER_IN_USE, M_INVALID_USERNAME,
        M_MISSING_PARAM without a username."""
        await self.register("exists")
        self.assertEqual(await self.call("GET", C + "/v3/register/available?username=free"), (200, {"available": True}))
        self.assertError(await self.call("GET", C + "/v3/register/available?username=exists"), 400, "M_USER_IN_USE")
        self.assertError(await self.call("GET", C + "/v3/register/available?username=Bad"), 400, "M_INVALID_USERNAME")
        self.assertError(await self.call("GET", C + "/v3/register/available"), 400, "M_MISSING_PARAM")


class RegistrationDisabledTests(ClientApiTestCase):
    """enable_registration false (the default)."""

    enable_registration = False

    async def test_register_forbidden(self):
        """POST /register is 403 M_FORBIDDEN, even with a complete auth dict; no user is made."""
        body = {"username": "eve", "password": "pw", "auth": {"type": "m.login.dummy"}}
        self.assertError(await self.call("POST", C + "/v3/register", body), 403, "M_FORBIDDEN")
        self.assertIsNone(await self.store.accounts.get_user(f"@eve:{SERVER}"))


class LoginTests(ClientApiTestCase):
    """POST /login, whoami, logout and tokens."""

    async def test_login_forms(self):
        """Localpart, full user id, the legacy `user` field and any localpart case log in;
        each login makes a new device and token."""
        await self.register("frank", "pw")
        tokens = set()
        for body in (
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "frank"}, "password": "pw"},
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": f"@frank:{SERVER}"}, "password": "pw"},
            {"type": "m.login.password", "user": "frank", "password": "pw"},
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "FRANK"}, "password": "pw"},
        ):
            code, resp = await self.call("POST", C + "/v3/login", body)
            self.assertEqual(code, 200, resp)
            self.assertEqual(resp["user_id"], f"@frank:{SERVER}")
            self.assertEqual(resp["home_server"], SERVER)
            tokens.add(resp["access_token"])
        self.assertEqual(len(tokens), 4)
        self.assertEqual(len(await self.store.accounts.get_devices(f"@frank:{SERVER}")), 5)

    async def test_login_failures(self):
        """Wrong password, unknown user or another server's user: 403 M_FORBIDDEN; unknown
        login or identifier type: 400 M_UNKNOWN; missing password 400 M_MISSING_PARAM;
        no identifier 400 M_MISSING_PARAM; bodies not JSON 400 M_NOT_JSON."""
        await self.register("gina", "pw")
        self.assertError(await self.login("gina", "wrong"), 403, "M_FORBIDDEN")
        self.assertError(await self.login("nobody", "pw"), 403, "M_FORBIDDEN")
        self.assertError(await self.login("@gina:elsewhere.example", "pw"), 403, "M_FORBIDDEN")
        self.assertError(await self.login("@bad", "pw"), 403, "M_FORBIDDEN")
        self.assertError(await self.call("POST", C + "/v3/login", {"type": "m.login.token", "token": "x"}), 400, "M_UNKNOWN")
        body = {"type": "m.login.password", "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "a@b"}, "password": "pw"}
        self.assertError(await self.call("POST", C + "/v3/login", body), 400, "M_UNKNOWN")
        self.assertError(await self.call("POST", C + "/v3/login", {"type": "m.login.password", "user": "gina"}), 400, "M_MISSING_PARAM")
        self.assertError(await self.call("POST", C + "/v3/login", {"type": "m.login.password", "password": "pw"}), 400, "M_MISSING_PARAM")
        self.assertError(await self.call("POST", C + "/v3/login", {"type": "m.login.password", "user": 5, "password": "pw"}), 400, "M_BAD_JSON")
        self.assertError(await self.call("POST", C + "/v3/login", raw=b""), 400, "M_NOT_JSON")
        self.assertError(await self.call("POST", C + "/v3/login", raw=b"\xff\xfe"), 400, "M_NOT_JSON")

    async def test_login_with_existing_device_revokes_its_old_token(self):
        """Logging in again with the same device_id keeps one device and revokes the older
        token of that device (spec "Relationship between access tokens and devices")."""
        await self.register("hank", "pw", device_id="DEV1")
        code, first = await self.login("hank", "pw", device_id="DEV2")
        code, second = await self.login("hank", "pw", device_id="DEV2")
        self.assertEqual(second["device_id"], "DEV2")
        self.assertError(await self.call("GET", C + "/v3/account/whoami", token=first["access_token"]), 401, "M_UNKNOWN_TOKEN")
        self.assertEqual((await self.call("GET", C + "/v3/account/whoami", token=second["access_token"]))[0], 200)
        devices = [d.device_id for d in await self.store.accounts.get_devices(f"@hank:{SERVER}")]
        self.assertEqual(devices, ["DEV1", "DEV2"])

    async def test_token_errors(self):
        """No token: 401 M_MISSING_TOKEN; unknown token: 401 M_UNKNOWN_TOKEN with
        soft_logout false; a non-Bearer Authorization header: 401 M_MISSING_TOKEN."""
        self.assertError(await self.call("GET", C + "/v3/account/whoami"), 401, "M_MISSING_TOKEN")
        body = self.assertError(await self.call("GET", C + "/v3/account/whoami", token="fst_nope"), 401, "M_UNKNOWN_TOKEN")
        self.assertIs(body["soft_logout"], False)
        hdrs = {"Authorization": ["Basic dXNlcjpwYXNz"]}
        self.assertError(await self.call("GET", C + "/v3/account/whoami", headers=hdrs), 401, "M_MISSING_TOKEN")

    async def test_logout(self):
        """POST /logout (with no body, as matrix-nio sends it) revokes that token and deletes
        its device; the user's other sessions keep working."""
        reg = await self.register("ivan", "pw")
        _, other = await self.login("ivan", "pw")
        self.assertEqual(await self.call("POST", C + "/v3/logout", token=reg["access_token"]), (200, {}))
        self.assertError(await self.call("GET", C + "/v3/account/whoami", token=reg["access_token"]), 401, "M_UNKNOWN_TOKEN")
        self.assertEqual((await self.call("GET", C + "/v3/account/whoami", token=other["access_token"]))[0], 200)
        devices = [d.device_id for d in await self.store.accounts.get_devices(reg["user_id"])]
        self.assertEqual(devices, [other["device_id"]])
        self.assertError(await self.call("POST", C + "/v3/logout", token=reg["access_token"]), 401, "M_UNKNOWN_TOKEN")

    async def test_logout_all(self):
        """POST /logout/all revokes every token and deletes every device of the user only."""
        reg = await self.register("judy", "pw")
        _, other = await self.login("judy", "pw")
        bystander = await self.register("kate", "pw")
        self.assertEqual(await self.call("POST", C + "/v3/logout/all", {}, token=other["access_token"]), (200, {}))
        for token in (reg["access_token"], other["access_token"]):
            self.assertError(await self.call("GET", C + "/v3/account/whoami", token=token), 401, "M_UNKNOWN_TOKEN")
        self.assertEqual(await self.store.accounts.get_devices(reg["user_id"]), [])
        self.assertEqual((await self.call("GET", C + "/v3/account/whoami", token=bystander["access_token"]))[0], 200)

    async def test_deactivated_user(self):
        """A deactivated user's tokens stop working and a correct password gets 403
        M_USER_DEACTIVATED (a wrong one still M_FORBIDDEN)."""
        reg = await self.register("leo", "pw")
        await self.store.accounts.set_deactivated(reg["user_id"])
        self.assertError(await self.call("GET", C + "/v3/account/whoami", token=reg["access_token"]), 401, "M_UNKNOWN_TOKEN")
        self.assertError(await self.login("leo", "pw"), 403, "M_USER_DEACTIVATED")
        self.assertError(await self.login("leo", "nope"), 403, "M_FORBIDDEN")


class SecretsAtRestTests(ClientApiTestCase):
    """What the database holds: hashes, never tokens or passwords."""

    def _all_bytes(self) -> bytes:
        data = b""
        for suffix in ("", "-wal"):
            try:
                with open(self.db_path + suffix, "rb") as f:
                    data += f.read()
            except FileNotFoundError:
                pass
        return data

    async def test_tokens_stored_hashed(self):
        """The database files never contain an access token; access_tokens holds its SHA-256."""
        reg = await self.register("mona", "hunter2-secret")
        _, again = await self.login("mona", "hunter2-secret")
        blob = self._all_bytes()
        for token in (reg["access_token"], again["access_token"]):
            self.assertNotIn(token.encode(), blob)
            self.assertNotIn(token[4:].encode(), blob)
        self.assertNotIn(b"hunter2-secret", blob)
        conn = sqlite3.connect(self.db_path)
        self.addCleanup(conn.close)
        hashes = {r[0] for r in conn.execute("SELECT token_hash FROM access_tokens")}
        self.assertEqual(hashes, {hashlib.sha256(t.encode()).hexdigest() for t in (reg["access_token"], again["access_token"])})

    async def test_password_hash_format(self):
        """Passwords are stored as salted scrypt strings with their parameters; the same
        password gives different hashes for two users."""
        await self.register("nina", "same")
        await self.register("omar", "same")
        conn = sqlite3.connect(self.db_path)
        self.addCleanup(conn.close)
        rows = dict(conn.execute("SELECT user_id, password_hash FROM users"))
        a, b = rows[f"@nina:{SERVER}"], rows[f"@omar:{SERVER}"]
        self.assertRegex(a, r"^\$scrypt\$ln=4,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$")
        self.assertNotEqual(a, b)
        self.assertTrue(self.hasher.verify_sync("same", a))
        self.assertFalse(self.hasher.verify_sync("Same", a))


class ChangePasswordTests(ClientApiTestCase):
    """POST /account/password with m.login.password UIA."""

    async def test_change_password(self):
        """401 with the password flow first; a wrong password gives 401 M_FORBIDDEN; the
        right one changes it, logs out the other devices and keeps this one."""
        reg = await self.register("pat", "old")
        _, other = await self.login("pat", "old")
        path = C + "/v3/account/password"
        code, challenge = await self.call("POST", path, {"new_password": "new"}, token=reg["access_token"])
        self.assertEqual((code, challenge["flows"]), (401, [{"stages": ["m.login.password"]}]))
        auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "pat"}, "password": "bad", "session": challenge["session"]}
        code, failed = await self.call("POST", path, {"new_password": "new", "auth": auth}, token=reg["access_token"])
        self.assertEqual((code, failed["errcode"]), (401, "M_FORBIDDEN"))
        auth = dict(auth, password="old", session=failed["session"])
        self.assertEqual(await self.call("POST", path, {"new_password": "new", "auth": auth}, token=reg["access_token"]), (200, {}))
        self.assertError(await self.login("pat", "old"), 403, "M_FORBIDDEN")
        self.assertEqual((await self.login("pat", "new"))[0], 200)
        self.assertEqual((await self.call("GET", C + "/v3/account/whoami", token=reg["access_token"]))[0], 200)
        self.assertError(await self.call("GET", C + "/v3/account/whoami", token=other["access_token"]), 401, "M_UNKNOWN_TOKEN")

    async def test_someone_elses_password_does_not_count(self):
        """Naming another user in the auth dict (with that user's correct password) fails."""
        reg = await self.register("quinn", "mine")
        await self.register("rita", "hers")
        auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "rita"}, "password": "hers"}
        code, body = await self.call("POST", C + "/v3/account/password", {"new_password": "x", "auth": auth}, token=reg["access_token"])
        self.assertEqual((code, body["errcode"]), (401, "M_FORBIDDEN"))
        self.assertEqual((await self.login("quinn", "mine"))[0], 200)

    async def test_bad_new_password(self):
        """A missing new_password is 400 M_MISSING_PARAM; a non-string 400 M_BAD_JSON."""
        reg = await self.register("sam", "pw")
        self.assertError(await self.call("POST", C + "/v3/account/password", {}, token=reg["access_token"]), 400, "M_MISSING_PARAM")
        self.assertError(await self.call("POST", C + "/v3/account/password", {"new_password": 3}, token=reg["access_token"]), 400, "M_BAD_JSON")


class RateLimitedLoginTests(ClientApiTestCase):
    """Rate limits on /login and /register, on the test clock."""

    async def test_failed_logins_per_user(self):
        """After 5 failed logins for a user, even the right password is 429 M_LIMIT_EXCEEDED
        with retry_after_ms; after the wait it works again."""
        await self.register("tom", "pw")
        for _ in range(5):
            self.assertError(await self.login("tom", "bad"), 403, "M_FORBIDDEN")
        body = self.assertError(await self.login("tom", "pw"), 429, "M_LIMIT_EXCEEDED")
        self.assertEqual(body["retry_after_ms"], 10_000)
        self.clock.advance(10)
        self.assertEqual((await self.login("tom", "pw"))[0], 200)

    async def test_logins_per_ip(self):
        """More than the burst of login attempts from one address is 429 whatever the user."""
        for i in range(20):
            self.assertError(await self.login(f"nobody{i}", "x"), 403, "M_FORBIDDEN")
        self.assertError(await self.login("someone", "x"), 429, "M_LIMIT_EXCEEDED")

    async def test_register_per_ip(self):
        """More than the burst of registration requests from one address is 429."""
        for i in range(20):
            self.assertError(await self.call("POST", C + "/v3/register", {"username": "BAD"}), 400, "M_INVALID_USERNAME")
        self.assertError(await self.call("POST", C + "/v3/register", {"username": "ok"}), 429, "M_LIMIT_EXCEEDED")
