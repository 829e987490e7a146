"""Tests for the federation side of encryption, on a real store with a fake federation
client: queries and claims of other servers' users, the device-list cache (updates,
prev_id gaps and resyncs), signing key updates, and what we answer other servers."""

from __future__ import annotations

import copy

from fedserver.federation.client import RequestTimedOut
from tests.e2ee_support import REMOTE, CrossSigning, Device, E2eeTestCase, q

ZED = "@zed:" + REMOTE
QUERY = ("POST", REMOTE, "/_matrix/federation/v1/user/keys/query")
CLAIM = ("POST", REMOTE, "/_matrix/federation/v1/user/keys/claim")
DEVICES = ("GET", REMOTE, "/_matrix/federation/v1/user/devices/" + q(ZED))


class RemoteQueryTests(E2eeTestCase):
    async def asyncSetUpRemote(self) -> None:
        self.alice, self.atoken, self.adevice = await self.login_user("alice")
        self.zdev = Device(ZED, "ZDEV")
        self.zcs = CrossSigning(ZED)
        forged = Device(ZED, "FORGED").device_keys()
        forged["keys"]["ed25519:FORGED"] = self.zdev.ed25519  # not signed by that key
        self.zkeys = self.zdev.device_keys(unsigned={"device_display_name": "zed's laptop"})
        self.federation.answers[QUERY] = {
            "device_keys": {ZED: {"ZDEV": self.zkeys, "FORGED": forged}, "@eve:elsewhere.test": {"E": {}}},
            "master_keys": {ZED: self.zcs.key_json("master")},
            "self_signing_keys": {ZED: self.zcs.key_json("self_signing")},
        }

    async def test_query_checks_and_caches(self) -> None:
        """A query for another server's user goes to that server; device keys not signed
        by their device and users of other servers are left out; the answer is cached
        while we share a room with the user, so the next query is answered from it."""
        await self.asyncSetUpRemote()
        room = await self.public_room(self.atoken)
        await self.remote_join(room, ZED)
        code, body = await self.call("POST", "/keys/query", {"device_keys": {ZED: []}}, token=self.atoken)
        self.assertEqual(code, 200, body)
        self.assertEqual(list(body["device_keys"]), [ZED])
        self.assertEqual(list(body["device_keys"][ZED]), ["ZDEV"])
        self.assertEqual(body["device_keys"][ZED]["ZDEV"]["unsigned"]["device_display_name"], "zed's laptop")
        self.assertEqual(body["master_keys"][ZED]["keys"], self.zcs.key_json("master")["keys"])
        self.assertIn(ZED, body["self_signing_keys"])
        self.assertEqual(body["failures"], {})
        self.assertEqual(len(self.federation.requests), 1)
        again = await self.call("POST", "/keys/query", {"device_keys": {ZED: ["ZDEV"]}}, token=self.atoken)
        self.assertEqual(again[1]["device_keys"], {ZED: {"ZDEV": body["device_keys"][ZED]["ZDEV"]}})
        self.assertEqual(len(self.federation.requests), 1)

    async def test_not_cached_without_a_shared_room(self) -> None:
        """Without a shared room nothing is cached: each query asks the server."""
        await self.asyncSetUpRemote()
        for _ in range(2):
            code, body = await self.call("POST", "/keys/query", {"device_keys": {ZED: []}}, token=self.atoken)
            self.assertEqual(list(body["device_keys"][ZED]), ["ZDEV"])
        self.assertEqual(len(self.federation.requests), 2)

    async def test_unreachable_server_in_failures(self) -> None:
        """A server that cannot be reached is listed in ``failures``; the rest answers."""
        await self.asyncSetUpRemote()
        self.federation.answers[("POST", "down.test", "/_matrix/federation/v1/user/keys/query")] = RequestTimedOut("timed out")
        await self.upload_device(self.alice, self.atoken, self.adevice)
        code, body = await self.call("POST", "/keys/query", {"device_keys": {"@x:down.test": [], self.alice: []}, "timeout": 5000}, token=self.atoken)
        self.assertEqual(code, 200, body)
        self.assertEqual(list(body["failures"]), ["down.test"])
        self.assertEqual(list(body["device_keys"][self.alice]), [self.adevice])

    async def test_remote_claim(self) -> None:
        """A claim for another server's device goes to its server; only what was asked
        for is passed on."""
        await self.asyncSetUpRemote()
        key = self.zdev.one_time_keys(1)
        self.federation.answers[CLAIM] = {"one_time_keys": {ZED: {"ZDEV": key, "OTHER": key}, "@eve:elsewhere.test": {"E": key}}}
        code, body = await self.call("POST", "/keys/claim", {"one_time_keys": {ZED: {"ZDEV": "signed_curve25519"}}}, token=self.atoken)
        self.assertEqual((code, body), (200, {"one_time_keys": {ZED: {"ZDEV": key}}, "failures": {}}))
        self.assertEqual(self.federation.requests[-1][3], {"one_time_keys": {ZED: {"ZDEV": "signed_curve25519"}}})


class RemoteDeviceListTests(E2eeTestCase):
    async def cached_zed(self) -> tuple[str, str, str]:
        """Alice shares a room with @zed, whose list is cached at stream_id 5."""
        alice, atoken, adevice = await self.login_user("alice")
        self.room = await self.public_room(atoken)
        await self.remote_join(self.room, ZED)
        self.zdev = Device(ZED, "ZDEV")
        # The first query caches the list (without a stream id); the first update then
        # resyncs, through /user/devices, to stream_id 5.
        self.federation.answers[QUERY] = {"device_keys": {ZED: {"ZDEV": self.zdev.device_keys()}}}
        self.assertEqual(await self.devices_of_zed(atoken), ["ZDEV"])
        self.assertIsNone((await self.store.devices.get_remote_lists([ZED]))[ZED].stream_id)
        self.federation.answers[DEVICES] = {"user_id": ZED, "stream_id": 5, "devices": [{"device_id": "ZDEV", "keys": self.zdev.device_keys()}]}
        await self.e2ee.remote_lists.on_device_list_update(REMOTE, {"user_id": ZED, "device_id": "ZDEV", "stream_id": 5, "prev_id": [4]})
        self.assertEqual(self.federation.requests[-1][:3], DEVICES)
        state = (await self.store.devices.get_remote_lists([ZED]))[ZED]
        self.assertEqual((state.stream_id, state.stale), (5, False))
        return alice, atoken, adevice

    async def devices_of_zed(self, token: str) -> list[str]:
        code, body = await self.call("POST", "/keys/query", {"device_keys": {ZED: []}}, token=token)
        self.assertEqual(code, 200, body)
        return sorted(body["device_keys"].get(ZED, {}))

    async def test_updates_in_sequence_and_gaps(self) -> None:
        """An update whose prev_id we know is applied (a new device appears, a deleted one
        goes) and the user shows as changed in /sync; an old or repeated one is ignored;
        one whose prev_id we do not know makes us resync through /user/devices."""
        alice, atoken, _ = await self.cached_zed()
        since = (await self.sync(atoken))["next_batch"]
        requests = len(self.federation.requests)
        new = Device(ZED, "NEW")
        await self.e2ee.remote_lists.on_device_list_update(REMOTE, {
            "user_id": ZED, "device_id": "NEW", "stream_id": 6, "prev_id": [5], "keys": new.device_keys(), "device_display_name": "n",
        })
        self.assertEqual(await self.devices_of_zed(atoken), ["NEW", "ZDEV"])
        self.assertEqual(len(self.federation.requests), requests)
        self.assertEqual((await self.sync(atoken, since))["device_lists"]["changed"], [ZED])
        await self.e2ee.remote_lists.on_device_list_update(REMOTE, {"user_id": ZED, "device_id": "ZDEV", "stream_id": 7, "prev_id": [6], "deleted": True})
        self.assertEqual(await self.devices_of_zed(atoken), ["NEW"])
        await self.e2ee.remote_lists.on_device_list_update(REMOTE, {"user_id": ZED, "device_id": "ZDEV", "stream_id": 6, "prev_id": [5], "keys": self.zdev.device_keys()})
        self.assertEqual(await self.devices_of_zed(atoken), ["NEW"])
        # A gap: we never saw 8. The server's answer now lists ZDEV only.
        await self.e2ee.remote_lists.on_device_list_update(REMOTE, {"user_id": ZED, "device_id": "X", "stream_id": 9, "prev_id": [8], "deleted": True})
        self.assertEqual(self.federation.requests[-1][:3], DEVICES)
        self.assertEqual(await self.devices_of_zed(atoken), ["ZDEV"])
        state = (await self.store.devices.get_remote_lists([ZED]))[ZED]
        self.assertEqual(state.stream_id, 5)

    async def test_failed_resync_stays_stale(self) -> None:
        """When the resync fails the list stays stale and the next query asks again."""
        alice, atoken, _ = await self.cached_zed()
        self.federation.answers[DEVICES] = RequestTimedOut("down")
        await self.e2ee.remote_lists.on_device_list_update(REMOTE, {"user_id": ZED, "device_id": "X", "stream_id": 50, "prev_id": [49]})
        self.assertTrue((await self.store.devices.get_remote_lists([ZED]))[ZED].stale)
        self.federation.answers[DEVICES] = {"user_id": ZED, "stream_id": 50, "devices": []}
        self.assertEqual(await self.devices_of_zed(atoken), [])
        self.assertFalse((await self.store.devices.get_remote_lists([ZED]))[ZED].stale)

    async def test_updates_about_other_servers_users_ignored(self) -> None:
        """HOSTILE row 35: an m.device_list_update or m.signing_key_update about a user of
        another server than the origin changes nothing and fetches nothing."""
        alice, atoken, _ = await self.cached_zed()
        requests = len(self.federation.requests)
        evil = Device(ZED, "EVIL")
        await self.e2ee.remote_lists.on_device_list_update("evil.test", {
            "user_id": ZED, "device_id": "EVIL", "stream_id": 6, "prev_id": [5], "keys": evil.device_keys(),
        })
        cs = CrossSigning(ZED)
        await self.e2ee.remote_lists.on_signing_key_update("evil.test", {"user_id": ZED, "master_key": cs.key_json("master")})
        self.assertEqual(await self.devices_of_zed(atoken), ["ZDEV"])
        self.assertEqual(await self.store.devices.get_cross_signing_keys([ZED]), {})
        self.assertEqual(len(self.federation.requests), requests)

    async def test_no_shared_room_no_cache(self) -> None:
        """Updates about a user none of ours shares a room with are dropped (and a cache
        of them forgotten)."""
        alice, atoken, _ = await self.cached_zed()
        await self.remote_leave(self.room, ZED)
        await self.e2ee.remote_lists.on_device_list_update(REMOTE, {"user_id": ZED, "device_id": "N", "stream_id": 6, "prev_id": [5]})
        self.assertEqual(await self.store.devices.get_remote_lists([ZED]), {})

    async def test_signing_key_update(self) -> None:
        """m.signing_key_update stores the new master and self-signing keys (the latter
        only if signed by the master key) and marks the user changed."""
        alice, atoken, _ = await self.cached_zed()
        since = (await self.sync(atoken))["next_batch"]
        cs = CrossSigning(ZED)
        await self.e2ee.remote_lists.on_signing_key_update(REMOTE, {
            "user_id": ZED, "master_key": cs.key_json("master"), "self_signing_key": cs.key_json("self_signing", signed_by="user_signing"),
        })
        keys = (await self.store.devices.get_cross_signing_keys([ZED])).get(ZED, {})
        self.assertEqual(list(keys), ["master"])
        await self.e2ee.remote_lists.on_signing_key_update(REMOTE, {"user_id": ZED, "self_signing_key": cs.key_json("self_signing")})
        keys = (await self.store.devices.get_cross_signing_keys([ZED])).get(ZED, {})
        self.assertEqual(sorted(keys), ["master", "self_signing"])
        self.assertEqual((await self.sync(atoken, since))["device_lists"]["changed"], [ZED])


class ServingOtherServersTests(E2eeTestCase):
    async def test_query_claim_devices(self) -> None:
        """Other servers get our users' device keys (with the owner's signatures), master
        and self-signing keys, never the user-signing key nor signatures made with it;
        users of other servers are left out; claims consume one-time keys."""
        alice, atoken, adevice = await self.login_user("alice")
        bob, btoken, bdevice = await self.login_user("bob")
        dev = await self.upload_device(alice, atoken, adevice, otks=1)
        acs, bcs = CrossSigning(alice), CrossSigning(bob)
        await self.call("POST", "/keys/device_signing/upload", acs.upload_body(), token=atoken)
        await self.call("POST", "/keys/device_signing/upload", bcs.upload_body(), token=btoken)
        _, q1 = await self.call("POST", "/keys/query", {"device_keys": {alice: []}}, token=btoken)
        signed = bcs.sign(copy.deepcopy(q1["master_keys"][alice]), "user_signing", as_user=bob)
        code, body = await self.call("POST", "/keys/signatures/upload", {alice: {acs.public("master"): signed}}, token=btoken)
        self.assertEqual(body, {"failures": {}})
        answer = await self.e2ee.keys.on_federation_query(REMOTE, {"device_keys": {alice: [], ZED: []}})
        self.assertEqual(list(answer["device_keys"]), [alice])
        self.assertEqual(answer["device_keys"][alice][adevice]["keys"], dev.device_keys()["keys"] | answer["device_keys"][alice][adevice]["keys"])
        self.assertNotIn("user_signing_keys", answer)
        self.assertNotIn(bob, answer["master_keys"][alice].get("signatures", {}))
        self.assertIn(alice, answer["self_signing_keys"])
        claimed = await self.e2ee.keys.on_federation_claim(REMOTE, {"one_time_keys": {alice: {adevice: "signed_curve25519"}}})
        self.assertEqual(len(claimed["one_time_keys"][alice][adevice]), 1)
        devices = await self.e2ee.local_lists.user_devices(alice)
        self.assertEqual([d["device_id"] for d in devices["devices"]], [adevice])
        self.assertEqual(devices["master_key"]["keys"], acs.key_json("master")["keys"])
        self.assertNotIn("user_signing_key", devices)
