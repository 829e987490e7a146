"""HOSTILE.md rows 34-36 and the federation encryption endpoints against a whole fedserver
on loopback, spoken to over real TLS with X-Matrix signatures as a peer would."""

from __future__ import annotations

from urllib.parse import quote

from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.e2ee_support import Device
from tests.test_federation_support import FED
from tests.test_hostile_federation import ALICE, RunningServerCase


def q(value: str) -> str:
    return quote(value, safe="")


class E2eeFederationHostileTests(RunningServerCase):
    async def setUp(self):
        await super().setUp()
        store = self.service.store
        await store.accounts.create_user(ALICE, None, device_id="ADEV")
        self.alice_dev = Device(ALICE, "ADEV")
        await store.run_write(lambda txn: store.devices.set_device_keys_txn(txn, ALICE, "ADEV", self.alice_dev.device_keys()))
        self.peer_user = "@u:" + self.peer.name

    async def until(self, predicate, what: str):
        for _ in range(500):
            value = await predicate()
            if value:
                return value
            await deferLater(reactor, 0.01, lambda: None)
        self.fail(f"timed out waiting for {what}")

    async def test_row35_edus_about_other_servers_users(self):
        """Row 35: m.direct_to_device and m.device_list_update EDUs about users of another
        server than the origin are ignored (the transaction is still 200), while the same
        EDUs about the origin's own user take effect."""
        store = self.service.store
        edus = [
            {"edu_type": "m.direct_to_device", "content": {
                "sender": "@mallory:elsewhere.test", "type": "m.test", "message_id": "bad",
                "messages": {ALICE: {"ADEV": {"from": "mallory"}}}}},
            {"edu_type": "m.device_list_update", "content": {
                "user_id": "@mallory:elsewhere.test", "device_id": "M", "stream_id": 1, "prev_id": []}},
            {"edu_type": "m.signing_key_update", "content": {"user_id": "@mallory:elsewhere.test"}},
            {"edu_type": "m.direct_to_device", "content": {
                "sender": self.peer_user, "type": "m.test", "message_id": "good",
                "messages": {ALICE: {"ADEV": {"from": "u"}}, "@mallory:elsewhere.test": {"X": {}}}}},
            {"edu_type": "m.device_list_update", "content": {
                "user_id": self.peer_user, "device_id": "UDEV", "stream_id": 1, "prev_id": []}},
        ]
        status, body, raw = await self.request("PUT", FED + "/send/e2ee-35", self.txn(edus=edus))
        self.assertEqual(status, 200, raw)
        delivery = await self.until(
            lambda: store.to_device.deliver(ALICE, "ADEV", None, 10**9, 100).addCallback(lambda d: d.messages or None),
            "the legitimate to-device message",
        )
        self.assertEqual(delivery, [{"sender": self.peer_user, "type": "m.test", "content": {"from": "u"}}])
        changed = await self.until(
            lambda: store.run_read(lambda txn: store.devices.get_changed_users_txn(txn, 0, 10**9) or None),
            "the legitimate device list update",
        )
        self.assertEqual(changed, {self.peer_user})
        self.assertEqual(await store.devices.get_cross_signing_keys(["@mallory:elsewhere.test"]), {})

    async def test_row34_malformed_keys_over_federation_do_not_stick(self):
        """Row 34 (federation side): an m.device_list_update carrying keys not signed by
        their device is not cached."""
        store = self.service.store
        forged = Device(self.peer_user, "UDEV").device_keys()
        forged["keys"]["ed25519:UDEV"] = Device(self.peer_user, "OTHER").ed25519
        await store.run_write(lambda txn: store.devices.replace_remote_list_txn(txn, self.peer_user, 1, []))
        edu = {"edu_type": "m.device_list_update", "content": {
            "user_id": self.peer_user, "device_id": "UDEV", "stream_id": 2, "prev_id": [1], "keys": forged}}
        status, _, raw = await self.request("PUT", FED + "/send/e2ee-34", self.txn(edus=[edu]))
        self.assertEqual(status, 200, raw)
        state = await self.until(
            lambda: store.devices.get_remote_lists([self.peer_user]).addCallback(
                lambda s: s.get(self.peer_user) if s.get(self.peer_user) and s[self.peer_user].stream_id == 2 else None),
            "the update to be processed",
        )
        self.assertEqual(state.stream_id, 2)
        devices = await store.run_read(lambda txn: store.devices.get_remote_devices_txn(txn, [self.peer_user]))
        self.assertIsNone(devices[self.peer_user]["UDEV"].keys)

    async def test_federation_endpoints(self):
        """/user/devices and /user/keys/* answer signed requests about our users; a user
        of another server is 403; no signature is 401; bodies that are not JSON, not an
        object, or of the wrong shape are 400 M_NOT_JSON / M_BAD_JSON."""
        status, body, raw = await self.request("GET", FED + "/user/devices/" + q(ALICE))
        self.assertEqual(status, 200, raw)
        self.assertEqual((body["user_id"], [d["device_id"] for d in body["devices"]]), (ALICE, ["ADEV"]))
        self.assertIsInstance(body["stream_id"], int)
        await self.assertError(await self.request("GET", FED + "/user/devices/" + q("@x:elsewhere.test")), 403, "M_FORBIDDEN")
        await self.assertError(await self.request("GET", FED + "/user/devices/" + q(ALICE), sign=False), 401, "M_UNAUTHORIZED")
        status, body, raw = await self.request("POST", FED + "/user/keys/query", {"device_keys": {ALICE: [], "@x:elsewhere.test": []}})
        self.assertEqual(status, 200, raw)
        self.assertEqual(list(body["device_keys"]), [ALICE])
        self.assertEqual(list(body["device_keys"][ALICE]), ["ADEV"])
        status, body, raw = await self.request("POST", FED + "/user/keys/claim", {"one_time_keys": {ALICE: {"ADEV": "signed_curve25519"}}})
        self.assertEqual((status, body), (200, {"one_time_keys": {}}), raw)
        for path in ("/user/keys/query", "/user/keys/claim"):
            await self.assertError(await self.request("POST", FED + path, b"{nope", sign_content=b""), 400, "M_NOT_JSON")
            await self.assertError(await self.request("POST", FED + path, [1, 2]), 400, "M_BAD_JSON")
            await self.assertError(await self.request("POST", FED + path, {"device_keys": [], "one_time_keys": []}), 400, "M_BAD_JSON")
