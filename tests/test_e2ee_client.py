"""Tests for the encryption endpoints of the Client-Server API through the real resources
(StubTreq), on a real store: keys, claims, cross-signing, signatures, device lists in
/sync and /keys/changes, device deletion."""

from __future__ import annotations

import copy

from tests.e2ee_support import REMOTE, CrossSigning, Device, E2eeTestCase, SERVER, q


class KeyUploadTests(E2eeTestCase):
    async def test_upload_query_counts(self) -> None:
        """Uploaded device keys come back from /keys/query with the device's display
        name in ``unsigned``; one-time key counts are returned and shown in /sync."""
        alice, token, device = await self.login_user("alice")
        dev = Device(alice, device)
        code, body = await self.call("POST", "/keys/upload", {
            "device_keys": dev.device_keys(), "one_time_keys": dev.one_time_keys(5),
            "fallback_keys": dev.one_time_keys(1, fallback=True),
        }, token=token)
        self.assertEqual((code, body), (200, {"one_time_key_counts": {"signed_curve25519": 5}}))
        code, _ = await self.call("PUT", f"/devices/{q(device)}", {"display_name": "Alice's phone"}, token=token)
        self.assertEqual(code, 200)
        code, body = await self.call("POST", "/keys/query", {"device_keys": {alice: []}}, token=token)
        self.assertEqual(code, 200, body)
        got = body["device_keys"][alice][device]
        self.assertEqual(got["keys"][f"ed25519:{device}"], dev.ed25519)
        self.assertEqual(got["unsigned"]["device_display_name"], "Alice's phone")
        self.assertEqual(body["failures"], {})
        sync = await self.sync(token)
        self.assertEqual(sync["device_one_time_keys_count"], {"signed_curve25519": 5})
        self.assertEqual(sync["device_unused_fallback_key_types"], ["signed_curve25519"])

    async def test_keys_signed_by_another_device_store_nothing(self) -> None:
        """HOSTILE row 34: an upload whose device keys are signed by another device's key
        is answered 400 M_INVALID_SIGNATURE, and nothing of it is stored (not even its
        valid one-time keys); malformed keys get 400 too."""
        alice, token, device = await self.login_user("alice")
        honest = Device(alice, device)
        forger = Device(alice, device)
        forged = forger.device_keys()
        forged["keys"][f"ed25519:{device}"] = honest.ed25519
        from signedjson.sign import sign_json

        forged.pop("signatures")
        forged = sign_json(forged, alice, forger.key)
        code, body = await self.call("POST", "/keys/upload", {"device_keys": forged, "one_time_keys": honest.one_time_keys(3)}, token=token)
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_SIGNATURE"), body)
        code, body = await self.call("POST", "/keys/query", {"device_keys": {alice: []}}, token=token)
        self.assertEqual(body["device_keys"][alice], {})
        self.assertEqual(await self.store.devices.count_one_time_keys(alice, device), {})
        # One-time keys signed by another device, after honest device keys: refused too.
        await self.upload_device(alice, token, device)
        code, body = await self.call("POST", "/keys/upload", {"one_time_keys": forger.one_time_keys(2)}, token=token)
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_SIGNATURE"), body)
        self.assertEqual(await self.store.devices.count_one_time_keys(alice, device), {})
        for bad in ({"device_keys": "x"}, {"one_time_keys": []}, {"device_keys": {**honest.device_keys(), "user_id": "@eve:x"}}):
            code, body = await self.call("POST", "/keys/upload", bad, token=token)
            self.assertEqual(code, 400, body)
            self.assertIn(body["errcode"], ("M_BAD_JSON", "M_INVALID_PARAM"))
        code, body = await self.call("POST", "/keys/upload", raw=b"{not json", token=token)
        self.assertEqual((code, body["errcode"]), (400, "M_NOT_JSON"))

    async def test_claim_one_time_then_fallback(self) -> None:
        """Claims give each one-time key once, oldest upload first, then the fallback
        key (reused, and no longer listed as unused in /sync)."""
        alice, token, device = await self.login_user("alice")
        bob, btoken, _ = await self.login_user("bob")
        dev = Device(alice, device)
        first = dev.one_time_keys(1)
        await self.call("POST", "/keys/upload", {"device_keys": dev.device_keys(), "one_time_keys": first}, token=token)
        second = dev.one_time_keys(1)
        fallback = dev.one_time_keys(1, fallback=True)
        await self.call("POST", "/keys/upload", {"one_time_keys": second, "fallback_keys": fallback}, token=token)
        claimed = []
        for _ in range(4):
            code, body = await self.call("POST", "/keys/claim", {"one_time_keys": {alice: {device: "signed_curve25519"}}}, token=btoken)
            self.assertEqual(code, 200, body)
            claimed.append(body["one_time_keys"][alice][device])
        self.assertEqual([list(c) for c in claimed], [list(first), list(second), list(fallback), list(fallback)])
        sync = await self.sync(token)
        self.assertEqual(sync["device_unused_fallback_key_types"], [])
        self.assertNotIn("signed_curve25519", sync["device_one_time_keys_count"])
        # Unknown devices and users are left out, no failure.
        code, body = await self.call("POST", "/keys/claim", {"one_time_keys": {alice: {"NOPE": "signed_curve25519"}, "@x:" + SERVER: {"D": "a"}}}, token=btoken)
        self.assertEqual((code, body), (200, {"one_time_keys": {}, "failures": {}}))
        code, body = await self.call("POST", "/keys/claim", {"one_time_keys": {"not-a-user": {}}}, token=btoken)
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))


class CrossSigningTests(E2eeTestCase):
    async def test_upload_and_uia(self) -> None:
        """The first cross-signing keys need no UIA; uploading them again unchanged needs
        none either; new keys need the password (401 with the flows, then 200)."""
        alice, token, device = await self.login_user("alice")
        cs = CrossSigning(alice)
        code, body = await self.call("POST", "/keys/device_signing/upload", cs.upload_body(), token=token)
        self.assertEqual((code, body), (200, {}))
        code, body = await self.call("POST", "/keys/device_signing/upload", cs.upload_body(), token=token)
        self.assertEqual((code, body), (200, {}))
        new = CrossSigning(alice)
        code, body = await self.call("POST", "/keys/device_signing/upload", new.upload_body(), token=token)
        self.assertEqual(code, 401, body)
        self.assertEqual(body["flows"], [{"stages": ["m.login.password"]}])
        auth = {"type": "m.login.password", "session": body["session"], "identifier": {"type": "m.id.user", "user": alice}, "password": "pw-alice"}
        code, body = await self.call("POST", "/keys/device_signing/upload", new.upload_body(auth=auth), token=token)
        self.assertEqual((code, body), (200, {}))
        code, body = await self.call("POST", "/keys/query", {"device_keys": {alice: []}}, token=token)
        self.assertEqual(body["master_keys"][alice]["keys"], new.key_json("master")["keys"])
        self.assertEqual(body["user_signing_keys"][alice]["keys"], new.key_json("user_signing")["keys"])

    async def test_refusals(self) -> None:
        """A self-signing key not signed by the master key: 400 M_INVALID_SIGNATURE; no
        master key at all: 400 M_MISSING_PARAM; a key whose public key is a device id:
        403 M_FORBIDDEN. Nothing is stored."""
        alice, token, device = await self.login_user("alice")
        cs = CrossSigning(alice)
        body = cs.upload_body()
        body["self_signing_key"] = cs.key_json("self_signing", signed_by="user_signing")
        code, resp = await self.call("POST", "/keys/device_signing/upload", body, token=token)
        self.assertEqual((code, resp["errcode"]), (400, "M_INVALID_SIGNATURE"))
        code, resp = await self.call("POST", "/keys/device_signing/upload", {"self_signing_key": cs.key_json("self_signing")}, token=token)
        self.assertEqual((code, resp["errcode"]), (400, "M_MISSING_PARAM"))
        # A device whose id is the master public key.
        await self.login_again_with_device("alice", cs.public("master"))
        code, resp = await self.call("POST", "/keys/device_signing/upload", cs.upload_body(), token=token)
        self.assertEqual((code, resp["errcode"]), (403, "M_FORBIDDEN"))
        self.assertEqual(await self.store.devices.get_cross_signing_keys([alice]), {})

    async def login_again_with_device(self, localpart: str, device_id: str) -> str:
        code, body = await self.call("POST", "/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
            "password": "pw-" + localpart, "device_id": device_id,
        })
        self.assertEqual(code, 200, body)
        return body["access_token"]

    async def test_signatures_and_visibility(self) -> None:
        """Alice's self-signing key signs her device and Bob sees the signature; Alice's
        user-signing key signs Bob's master key and only Alice sees that signature; a
        bad signature is reported in ``failures`` and not stored."""
        alice, atoken, adevice = await self.login_user("alice")
        bob, btoken, bdevice = await self.login_user("bob")
        adev = await self.upload_device(alice, atoken, adevice)
        acs, bcs = CrossSigning(alice), CrossSigning(bob)
        for token, cs in ((atoken, acs), (btoken, bcs)):
            code, body = await self.call("POST", "/keys/device_signing/upload", cs.upload_body(), token=token)
            self.assertEqual(code, 200, body)
        code, query = await self.call("POST", "/keys/query", {"device_keys": {alice: [], bob: []}}, token=atoken)
        device_json = query["device_keys"][alice][adevice]
        signed_device = acs.sign(copy.deepcopy(device_json), "self_signing")
        signed_bob_master = acs.sign(copy.deepcopy(query["master_keys"][bob]), "user_signing", as_user=alice)
        forged = bcs.sign(copy.deepcopy(query["master_keys"][alice]), "master", as_user=alice)  # not a device of alice
        code, body = await self.call("POST", "/keys/signatures/upload", {
            alice: {adevice: signed_device, acs.public("master"): forged},
            bob: {bcs.public("master"): signed_bob_master},
        }, token=atoken)
        self.assertEqual(code, 200, body)
        self.assertEqual(list(body["failures"]), [alice])
        self.assertEqual(body["failures"][alice][acs.public("master")]["errcode"], "M_INVALID_SIGNATURE")
        ssk_id = "ed25519:" + acs.public("self_signing")
        usk_id = "ed25519:" + acs.public("user_signing")
        _, seen_by_bob = await self.call("POST", "/keys/query", {"device_keys": {alice: [], bob: []}}, token=btoken)
        self.assertIn(ssk_id, seen_by_bob["device_keys"][alice][adevice]["signatures"][alice])
        self.assertNotIn(alice, seen_by_bob["master_keys"][bob].get("signatures", {}))
        self.assertNotIn(alice, seen_by_bob.get("user_signing_keys", {}))
        _, seen_by_alice = await self.call("POST", "/keys/query", {"device_keys": {bob: []}}, token=atoken)
        self.assertIn(usk_id, seen_by_alice["master_keys"][bob]["signatures"][alice])
        # Alice's devices sign her master key: accepted.
        mine = adev.key
        from signedjson.sign import sign_json

        master = {k: v for k, v in query["master_keys"][alice].items() if k != "unsigned"}
        code, body = await self.call("POST", "/keys/signatures/upload", {alice: {acs.public("master"): sign_json(master, alice, mine)}}, token=atoken)
        self.assertEqual((code, body), (200, {"failures": {}}))
        _, seen = await self.call("POST", "/keys/query", {"device_keys": {alice: []}}, token=btoken)
        self.assertIn(f"ed25519:{adevice}", seen["master_keys"][alice]["signatures"][alice])


class DeviceListTests(E2eeTestCase):
    async def test_changed_and_left_in_sync(self) -> None:
        """Bob, sharing a room with Alice, sees her in device_lists.changed when she
        uploads keys; Carol, sharing nothing, does not; a user who joins shows as changed;
        one who leaves the last shared room shows as left; /keys/changes agrees."""
        alice, atoken, adevice = await self.login_user("alice")
        bob, btoken, _ = await self.login_user("bob")
        carol, ctoken, _ = await self.login_user("carol")
        room = await self.public_room(atoken)
        code, _ = await self.call("POST", f"/join/{q(room)}", {}, token=btoken)
        self.assertEqual(code, 200)
        bob_first = (await self.sync(btoken))["next_batch"]
        carol_first = (await self.sync(ctoken))["next_batch"]
        await self.upload_device(alice, atoken, adevice)
        bob_next = await self.sync(btoken, bob_first)
        self.assertEqual(bob_next["device_lists"]["changed"], [alice])
        carol_next = await self.sync(ctoken, carol_first)
        self.assertEqual(carol_next["device_lists"], {"changed": [], "left": []})
        # Carol joins: Bob sees her as changed; she sees Alice and Bob.
        code, _ = await self.call("POST", f"/join/{q(room)}", {}, token=ctoken)
        self.assertEqual(code, 200)
        bob_3 = await self.sync(btoken, bob_next["next_batch"])
        self.assertEqual(bob_3["device_lists"]["changed"], [carol])
        carol_3 = await self.sync(ctoken, carol_next["next_batch"])
        self.assertEqual(sorted(carol_3["device_lists"]["changed"]), [alice, bob])
        # Carol leaves: Bob sees her in left.
        code, _ = await self.call("POST", f"/rooms/{q(room)}/leave", {}, token=ctoken)
        self.assertEqual(code, 200)
        bob_4 = await self.sync(btoken, bob_3["next_batch"])
        self.assertEqual(bob_4["device_lists"]["left"], [carol])
        code, changes = await self.call("GET", f"/keys/changes?from={q(bob_first)}&to={q(bob_4['next_batch'])}", token=btoken)
        self.assertEqual(code, 200, changes)
        self.assertEqual(changes, {"changed": [alice], "left": [carol]})
        code, body = await self.call("GET", "/keys/changes?from=nonsense&to=x", token=btoken)
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))

    async def test_long_poll_wakes_on_key_upload(self) -> None:
        """A /sync long-poll of a user sharing a room returns when the other user
        uploads new device keys."""
        alice, atoken, adevice = await self.login_user("alice")
        bob, btoken, _ = await self.login_user("bob")
        room = await self.public_room(atoken)
        await self.call("POST", f"/join/{q(room)}", {}, token=btoken)
        since = (await self.sync(btoken))["next_batch"]
        from twisted.internet import defer

        poll = defer.ensureDeferred(self.call("GET", f"/sync?since={q(since)}&timeout=60000", token=btoken))
        await self.upload_device(alice, atoken, adevice)
        code, body = await poll
        self.assertEqual(code, 200)
        self.assertEqual(body["device_lists"]["changed"], [alice])

    async def test_device_deletion(self) -> None:
        """Deleting a device (with the password) deletes its keys and one-time keys,
        shows the owner as changed to users sharing a room, and queues an
        m.device_list_update with ``deleted: true`` for a server sharing a room; its
        prev_id is the stream_id of the update before it."""
        alice, atoken, adevice = await self.login_user("alice")
        token2, device2 = await self.login_again("alice")
        bob, btoken, _ = await self.login_user("bob")
        room = await self.public_room(atoken)
        await self.call("POST", f"/join/{q(room)}", {}, token=btoken)
        await self.remote_join(room, "@zed:" + REMOTE)
        await self.upload_device(alice, atoken, adevice, otks=2)
        await self.upload_device(alice, token2, device2, otks=2)
        since = (await self.sync(btoken))["next_batch"]
        code, body = await self.call("DELETE", f"/devices/{q(device2)}", {}, token=atoken)
        self.assertEqual(code, 401)
        auth = {"type": "m.login.password", "session": body["session"], "identifier": {"type": "m.id.user", "user": alice}, "password": "pw-alice"}
        code, body = await self.call("DELETE", f"/devices/{q(device2)}", {"auth": auth}, token=atoken)
        self.assertEqual((code, body), (200, {}))
        _, query = await self.call("POST", "/keys/query", {"device_keys": {alice: []}}, token=btoken)
        self.assertEqual(list(query["device_keys"][alice]), [adevice])
        self.assertEqual(await self.store.devices.count_one_time_keys(alice, device2), {})
        self.assertEqual((await self.sync(btoken, since))["device_lists"]["changed"], [alice])
        updates = [e["content"] for e in await self.outbound(REMOTE) if e["edu_type"] == "m.device_list_update"]
        self.assertEqual([(u["device_id"], u["deleted"]) for u in updates], [(adevice, False), (device2, False), (device2, True)])
        self.assertEqual(updates[0]["prev_id"], [])
        for before, after in zip(updates, updates[1:]):
            self.assertEqual(after["prev_id"], [before["stream_id"]])
            self.assertGreater(after["stream_id"], before["stream_id"])
        self.assertIn(REMOTE, sum(self.woken, []))
        # What /user/devices answers other servers.
        devices = await self.e2ee.local_lists.user_devices(alice)
        self.assertEqual([d["device_id"] for d in devices["devices"]], [adevice])
        self.assertEqual(devices["stream_id"], updates[-1]["stream_id"])

    async def test_logout_deletes_keys(self) -> None:
        """Logging out deletes the device's keys in the same transaction."""
        alice, atoken, adevice = await self.login_user("alice")
        await self.upload_device(alice, atoken, adevice, otks=1)
        code, _ = await self.call("POST", "/logout", {}, token=atoken)
        self.assertEqual(code, 200)
        self.assertIsNone(await self.store.devices.get_device_keys(alice, adevice))
        self.assertEqual(await self.store.devices.count_one_time_keys(alice, adevice), {})
