"""Client API per-user data through StubTreq: filters, account data and devices."""

from __future__ import annotations

from tests.test_client_api_support import ClientApiTestCase, q

C = "/_matrix/client/v3"


class FilterTests(ClientApiTestCase):
    """POST /user/{userId}/filter and GET /user/{userId}/filter/{filterId}."""

    async def test_round_trip(self):
        """A filter is stored and read back as sent; ids are strings not starting with "{";
        the same filter uploaded twice gets the same id, another one a new id."""
        reg = await self.register("fil")
        base = f"{C}/user/{q(reg['user_id'])}/filter"
        f1 = {"room": {"timeline": {"limit": 10}}, "presence": {"types": []}}
        code, body = await self.call("POST", base, f1, token=reg["access_token"])
        self.assertEqual(code, 200)
        fid = body["filter_id"]
        self.assertIsInstance(fid, str)
        self.assertFalse(fid.startswith("{"))
        self.assertEqual(await self.call("GET", f"{base}/{fid}", token=reg["access_token"]), (200, f1))
        self.assertEqual((await self.call("POST", base, f1, token=reg["access_token"]))[1]["filter_id"], fid)
        other = (await self.call("POST", base, {"room": {}}, token=reg["access_token"]))[1]["filter_id"]
        self.assertNotEqual(other, fid)
        self.assertEqual(await self.store.accounts.get_filter(reg["user_id"], int(other)), {"room": {}})

    async def test_errors(self):
        """Other users' filters are 403; unknown or non-numeric ids 404 M_NOT_FOUND; a body
        that is not an object 400 M_BAD_JSON; an oversized filter 413 M_TOO_LARGE."""
        a = await self.register("fa")
        b = await self.register("fb")
        base_b = f"{C}/user/{q(b['user_id'])}/filter"
        self.assertError(await self.call("POST", base_b, {}, token=a["access_token"]), 403, "M_FORBIDDEN")
        fid = (await self.call("POST", base_b, {}, token=b["access_token"]))[1]["filter_id"]
        self.assertError(await self.call("GET", f"{base_b}/{fid}", token=a["access_token"]), 403, "M_FORBIDDEN")
        base_a = f"{C}/user/{q(a['user_id'])}/filter"
        for bad in ("99", "abc", "-1", "1" * 40, "%7B%7D"):
            self.assertError(await self.call("GET", f"{base_a}/{bad}", token=a["access_token"]), 404, "M_NOT_FOUND")
        self.assertError(await self.call("POST", base_a, [1], token=a["access_token"]), 400, "M_BAD_JSON")
        self.assertError(await self.call("POST", base_a, {"x": "y" * 70000}, token=a["access_token"]), 413, "M_TOO_LARGE")


class AccountDataTests(ClientApiTestCase):
    """PUT/GET /user/{userId}[/rooms/{roomId}]/account_data/{type}."""

    async def test_global_and_room(self):
        """Global and per-room data are kept apart and replaced on PUT; every write moves
        the account data stream on."""
        reg = await self.register("acc")
        uid, tok = q(reg["user_id"]), reg["access_token"]
        g = f"{C}/user/{uid}/account_data/org.example.cfg"
        r = f"{C}/user/{uid}/rooms/{q('!room:x')}/account_data/org.example.cfg"
        self.assertEqual(await self.call("PUT", g, {"a": 1}, token=tok), (200, {}))
        self.assertEqual(await self.call("PUT", r, {"b": 2}, token=tok), (200, {}))
        self.assertEqual(await self.call("GET", g, token=tok), (200, {"a": 1}))
        self.assertEqual(await self.call("GET", r, token=tok), (200, {"b": 2}))
        self.assertEqual(await self.call("PUT", g, {"a": 3}, token=tok), (200, {}))
        self.assertEqual(await self.call("GET", g, token=tok), (200, {"a": 3}))
        changes = await self.store.accounts.get_account_data_since(reg["user_id"], 0)
        self.assertEqual(changes.global_data, {"org.example.cfg": {"a": 3}})
        self.assertEqual(changes.rooms, {"!room:x": {"org.example.cfg": {"b": 2}}})
        self.assertEqual(changes.stream_id, 3)
        later = await self.store.accounts.get_account_data_since(reg["user_id"], 2)
        self.assertEqual((later.global_data, later.rooms), ({"org.example.cfg": {"a": 3}}, {}))

    async def test_errors(self):
        """Missing data 404 M_NOT_FOUND; other users 403; m.fully_read 405 M_BAD_JSON; a bad
        room id 400 M_INVALID_PARAM; a body that is not an object 400 M_BAD_JSON."""
        a = await self.register("ada")
        b = await self.register("bea")
        ua, tok = q(a["user_id"]), a["access_token"]
        self.assertError(await self.call("GET", f"{C}/user/{ua}/account_data/none", token=tok), 404, "M_NOT_FOUND")
        self.assertError(await self.call("GET", f"{C}/user/{ua}/rooms/{q('!r:x')}/account_data/none", token=tok), 404, "M_NOT_FOUND")
        self.assertError(await self.call("PUT", f"{C}/user/{q(b['user_id'])}/account_data/t", {}, token=tok), 403, "M_FORBIDDEN")
        self.assertError(await self.call("GET", f"{C}/user/{q(b['user_id'])}/account_data/t", token=tok), 403, "M_FORBIDDEN")
        self.assertError(await self.call("PUT", f"{C}/user/{ua}/account_data/m.fully_read", {}, token=tok), 405, "M_BAD_JSON")
        self.assertError(await self.call("PUT", f"{C}/user/{ua}/rooms/{q('!r:x')}/account_data/m.fully_read", {}, token=tok), 405, "M_BAD_JSON")
        self.assertError(await self.call("PUT", f"{C}/user/{ua}/rooms/{q('@notaroom:x')}/account_data/t", {}, token=tok), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("GET", f"{C}/user/{ua}/rooms/{q('@notaroom:x')}/account_data/t", token=tok), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("PUT", f"{C}/user/{ua}/account_data/t", [1], token=tok), 400, "M_BAD_JSON")
        self.assertError(await self.call("PUT", f"{C}/user/{ua}/account_data/t", raw=b"nope", token=tok), 400, "M_NOT_JSON")
        self.assertError(await self.call("PUT", f"{C}/user/{ua}/account_data/{'t' * 300}", {}, token=tok), 400, "M_INVALID_PARAM")


class DeviceTests(ClientApiTestCase):
    """GET/PUT/DELETE /devices and POST /delete_devices."""

    async def test_list_get_rename(self):
        """The user sees only its own devices, with display names and last-seen data, and
        can rename one; unknown ids are 404 M_NOT_FOUND."""
        reg = await self.register("dev", device_id="AAA", initial_device_display_name="Laptop")
        await self.register("other", device_id="ZZZ")
        tok = reg["access_token"]
        code, body = await self.call("GET", f"{C}/devices", token=tok)
        self.assertEqual(code, 200)
        (device,) = body["devices"]
        self.assertEqual((device["device_id"], device["display_name"], device["last_seen_ip"]), ("AAA", "Laptop", "127.0.0.1"))
        self.assertIsInstance(device["last_seen_ts"], int)
        self.assertEqual(await self.call("PUT", f"{C}/devices/AAA", {"display_name": "Desk"}, token=tok), (200, {}))
        self.assertEqual((await self.call("GET", f"{C}/devices/AAA", token=tok))[1]["display_name"], "Desk")
        self.assertError(await self.call("GET", f"{C}/devices/ZZZ", token=tok), 404, "M_NOT_FOUND")
        self.assertError(await self.call("PUT", f"{C}/devices/ZZZ", {"display_name": "x"}, token=tok), 404, "M_NOT_FOUND")
        self.assertError(await self.call("PUT", f"{C}/devices/AAA", {"display_name": 5}, token=tok), 400, "M_BAD_JSON")

    async def test_delete_needs_password(self):
        """Deleting a device asks for the password (401 flows); with it the device and its
        token go; POST /delete_devices does the same for several."""
        reg = await self.register("del", "pw", device_id="ONE")
        _, two = await self.login("del", "pw", device_id="TWO")
        _, three = await self.login("del", "pw", device_id="THREE")
        tok = reg["access_token"]
        code, challenge = await self.call("DELETE", f"{C}/devices/TWO", token=tok)
        self.assertEqual((code, challenge["flows"]), (401, [{"stages": ["m.login.password"]}]))
        auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "del"}, "password": "pw", "session": challenge["session"]}
        self.assertEqual(await self.call("DELETE", f"{C}/devices/TWO", {"auth": auth}, token=tok), (200, {}))
        self.assertError(await self.call("GET", f"{C}/account/whoami", token=two["access_token"]), 401, "M_UNKNOWN_TOKEN")
        auth.pop("session")
        self.assertEqual(await self.call("POST", f"{C}/delete_devices", {"devices": ["THREE"], "auth": auth}, token=tok), (200, {}))
        self.assertError(await self.call("GET", f"{C}/account/whoami", token=three["access_token"]), 401, "M_UNKNOWN_TOKEN")
        self.assertEqual([d["device_id"] for d in (await self.call("GET", f"{C}/devices", token=tok))[1]["devices"]], ["ONE"])
        self.assertError(await self.call("POST", f"{C}/delete_devices", {"devices": "ONE"}, token=tok), 400, "M_BAD_JSON")
