"""Profiles: the client endpoints, the handler's local view (federation /query/profile) and remote lookups."""

from __future__ import annotations

from twisted.internet import defer

from fedserver.federation.client import FederationUnreachable, HttpResponseError
from fedserver.handlers.client.accounts import Requester
from fedserver.errors import MatrixError
from tests.test_client_api_support import SERVER, ClientApiTestCase, q

C = "/_matrix/client/v3"


class FakeFederationClient:
    """Answers ``get_json`` from a table ``{server: result or exception}`` and records calls."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def get_json(self, destination, path, args=None, **kw):
        self.calls.append((destination, path, dict(args or {})))
        answer = self.answers[destination]
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


class ProfileEndpointTests(ClientApiTestCase):
    """GET/PUT/DELETE /profile/{userId}[/{keyName}]."""

    async def test_set_and_get(self):
        """A user sets a display name and an avatar, and anyone can read them (no token)."""
        reg = await self.register("ann")
        uid = q(reg["user_id"])
        self.assertEqual(await self.call("PUT", f"{C}/profile/{uid}/displayname", {"displayname": "Ann A."}, token=reg["access_token"]), (200, {}))
        self.assertEqual(await self.call("PUT", f"{C}/profile/{uid}/avatar_url", {"avatar_url": "mxc://x/y"}, token=reg["access_token"]), (200, {}))
        self.assertEqual(await self.call("GET", f"{C}/profile/{uid}/displayname"), (200, {"displayname": "Ann A."}))
        self.assertEqual(await self.call("GET", f"{C}/profile/{uid}/avatar_url"), (200, {"avatar_url": "mxc://x/y"}))
        self.assertEqual(await self.call("GET", f"{C}/profile/{uid}"), (200, {"displayname": "Ann A.", "avatar_url": "mxc://x/y"}))

    async def test_default_displayname_and_missing_avatar(self):
        """A new user's display name is its localpart; an unset avatar is 404 M_NOT_FOUND."""
        reg = await self.register("ben")
        uid = q(reg["user_id"])
        self.assertEqual(await self.call("GET", f"{C}/profile/{uid}"), (200, {"displayname": "ben"}))
        self.assertError(await self.call("GET", f"{C}/profile/{uid}/avatar_url"), 404, "M_NOT_FOUND")

    async def test_delete_and_clear(self):
        """DELETE removes a field; PUT of null or "" clears it too."""
        reg = await self.register("cat")
        uid, tok = q(reg["user_id"]), reg["access_token"]
        self.assertEqual(await self.call("DELETE", f"{C}/profile/{uid}/displayname", token=tok), (200, {}))
        self.assertError(await self.call("GET", f"{C}/profile/{uid}/displayname"), 404, "M_NOT_FOUND")
        await self.call("PUT", f"{C}/profile/{uid}/displayname", {"displayname": "C"}, token=tok)
        self.assertEqual(await self.call("PUT", f"{C}/profile/{uid}/displayname", {"displayname": None}, token=tok), (200, {}))
        self.assertEqual(await self.call("GET", f"{C}/profile/{uid}"), (200, {}))

    async def test_unknown_and_malformed_users(self):
        """An unknown local user is 404 M_NOT_FOUND; a malformed id 400 M_INVALID_PARAM; a
        remote user with no federation client 404."""
        self.assertError(await self.call("GET", f"{C}/profile/{q('@ghost:' + SERVER)}"), 404, "M_NOT_FOUND")
        self.assertError(await self.call("GET", f"{C}/profile/{q('@ghost:' + SERVER)}/displayname"), 404, "M_NOT_FOUND")
        self.assertError(await self.call("GET", f"{C}/profile/notauser"), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("GET", f"{C}/profile/{q('@a:elsewhere.example')}"), 404, "M_NOT_FOUND")

    async def test_only_own_profile(self):
        """Changing someone else's profile is 403 M_FORBIDDEN and changes nothing; without a
        token it is 401."""
        a = await self.register("dan")
        b = await self.register("eva")
        path = f"{C}/profile/{q(b['user_id'])}/displayname"
        self.assertError(await self.call("PUT", path, {"displayname": "pwned"}, token=a["access_token"]), 403, "M_FORBIDDEN")
        self.assertError(await self.call("DELETE", path, token=a["access_token"]), 403, "M_FORBIDDEN")
        self.assertError(await self.call("PUT", path, {"displayname": "pwned"}), 401, "M_MISSING_TOKEN")
        self.assertEqual(await self.call("GET", path), (200, {"displayname": "eva"}))

    async def test_bad_values(self):
        """Non-string values are 400 M_BAD_JSON; a body without the key 400 M_BAD_JSON; an
        avatar that is not mxc:// and an overlong name 400 M_INVALID_PARAM; an invalid key
        name 400 M_INVALID_PARAM; custom keys 403 (not supported)."""
        reg = await self.register("fay")
        uid, tok = q(reg["user_id"]), reg["access_token"]
        self.assertError(await self.call("PUT", f"{C}/profile/{uid}/displayname", {"displayname": 5}, token=tok), 400, "M_BAD_JSON")
        self.assertError(await self.call("PUT", f"{C}/profile/{uid}/displayname", {"other": "x"}, token=tok), 400, "M_BAD_JSON")
        self.assertError(await self.call("PUT", f"{C}/profile/{uid}/displayname", ["x"], token=tok), 400, "M_BAD_JSON")
        self.assertError(await self.call("PUT", f"{C}/profile/{uid}/displayname", {"displayname": "x" * 257}, token=tok), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("PUT", f"{C}/profile/{uid}/avatar_url", {"avatar_url": "http://x/y"}, token=tok), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("PUT", f"{C}/profile/{uid}/Bad-Key", {"Bad-Key": 1}, token=tok), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("GET", f"{C}/profile/{uid}/Bad-Key"), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("PUT", f"{C}/profile/{uid}/m.custom", {"m.custom": 1}, token=tok), 403, "M_FORBIDDEN")
        self.assertError(await self.call("GET", f"{C}/profile/{uid}/m.custom"), 404, "M_NOT_FOUND")
        self.assertEqual(await self.call("GET", f"{C}/profile/{uid}"), (200, {"displayname": "fay"}))


class LocalProfileTests(ClientApiTestCase):
    """ProfileHandler.get_local_profile, as the federation /query/profile endpoint uses it."""

    async def test_fields(self):
        """Without a field: every set field; with one: only it, or {} when unset."""
        reg = await self.register("gus")
        uid = reg["user_id"]
        await self.profiles.set_avatar_url(Requester(uid, None, 0), uid, "mxc://s/a")
        self.assertEqual(await self.profiles.get_local_profile(uid), {"displayname": "gus", "avatar_url": "mxc://s/a"})
        self.assertEqual(await self.profiles.get_local_profile(uid, "displayname"), {"displayname": "gus"})
        await self.profiles.set_displayname(Requester(uid, None, 0), uid, None)
        self.assertEqual(await self.profiles.get_local_profile(uid, "displayname"), {})
        self.assertEqual(await self.profiles.get_local_profile(uid, "m.other"), {})

    async def test_errors(self):
        """Unknown users and other servers' users are 404 M_NOT_FOUND; malformed ids 400."""
        for user_id, code in ((f"@nobody:{SERVER}", 404), ("@x:other.example", 404), ("nope", 400), ("@:" + SERVER, 400)):
            with self.assertRaises(MatrixError) as cm:
                await self.profiles.get_local_profile(user_id)
            self.assertEqual(cm.exception.code, code, user_id)


class RemoteProfileTests(ClientApiTestCase):
    """GET /profile for remote users goes over federation."""

    federation_client = FakeFederationClient(
        {
            "remote.example": {"displayname": "Remote R.", "avatar_url": "mxc://remote.example/a", "junk": [1], "m.tz": "x"},
            "weird.example": {"displayname": 5},
            "gone.example": HttpResponseError(404, "M_NOT_FOUND", "no", b"{}"),
            "broken.example": HttpResponseError(500, "M_UNKNOWN", "oops", b"{}"),
            "down.example": FederationUnreachable("connection refused"),
        }
    )

    async def test_remote_profile(self):
        """The remote server is asked /_matrix/federation/v1/query/profile with user_id;
        only string displayname/avatar_url are passed on."""
        code, body = await self.call("GET", f"{C}/profile/{q('@r:remote.example')}")
        self.assertEqual((code, body), (200, {"displayname": "Remote R.", "avatar_url": "mxc://remote.example/a"}))
        self.assertIn(("remote.example", "/_matrix/federation/v1/query/profile", {"user_id": "@r:remote.example"}), self.federation_client.calls)
        self.assertEqual(await self.call("GET", f"{C}/profile/{q('@r:weird.example')}"), (200, {}))
        self.assertEqual(await self.call("GET", f"{C}/profile/{q('@r:remote.example')}/displayname"), (200, {"displayname": "Remote R."}))

    async def test_remote_errors(self):
        """A remote 404 is 404 M_NOT_FOUND; a remote 500 or an unreachable server is 502."""
        self.assertError(await self.call("GET", f"{C}/profile/{q('@r:gone.example')}"), 404, "M_NOT_FOUND")
        self.assertError(await self.call("GET", f"{C}/profile/{q('@r:broken.example')}"), 502, "M_UNKNOWN")
        self.assertError(await self.call("GET", f"{C}/profile/{q('@r:down.example')}"), 502, "M_UNKNOWN")
