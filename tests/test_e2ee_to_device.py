"""Tests for to-device messages: /sendToDevice, delivery through /sync (once, in batches,
kept until acknowledged), m.direct_to_device in and out, and HOSTILE rows 35-36."""

from __future__ import annotations

from tests.e2ee_support import REMOTE, E2eeTestCase, SERVER


class ToDeviceTests(E2eeTestCase):
    async def test_send_and_deliver_once(self) -> None:
        """A message to one device and one to all of a user's devices ("*") arrive in
        /sync with sender and type; a retry of the same transaction id sends nothing
        more; the next sync from the answer's token does not repeat them."""
        alice, atoken, adevice = await self.login_user("alice")
        bob, btoken, bdevice = await self.login_user("bob")
        btoken2, bdevice2 = await self.login_again("bob")
        body = {"messages": {bob: {bdevice: {"n": 1}}}}
        for _ in range(2):
            code, resp = await self.call("PUT", "/sendToDevice/m.test/t1", body, token=atoken)
            self.assertEqual((code, resp), (200, {}))
        code, _ = await self.call("PUT", "/sendToDevice/m.test/t2", {"messages": {bob: {"*": {"n": 2}}}}, token=atoken)
        self.assertEqual(code, 200)
        first = await self.sync(btoken)
        self.assertEqual(first["to_device"]["events"], [
            {"sender": alice, "type": "m.test", "content": {"n": 1}},
            {"sender": alice, "type": "m.test", "content": {"n": 2}},
        ])
        other = await self.sync(btoken2)
        self.assertEqual([e["content"] for e in other["to_device"]["events"]], [{"n": 2}])
        second = await self.sync(btoken, first["next_batch"])
        self.assertEqual(second["to_device"]["events"], [])

    async def test_kept_until_acknowledged(self) -> None:
        """A message stays queued until the device syncs with a token at or after the
        answer that carried it: a retried sync (lost answer) gets it again."""
        alice, atoken, _ = await self.login_user("alice")
        bob, btoken, bdevice = await self.login_user("bob")
        start = (await self.sync(btoken))["next_batch"]
        await self.call("PUT", "/sendToDevice/m.test/t1", {"messages": {bob: {bdevice: {"n": 1}}}}, token=atoken)
        lost = await self.sync(btoken, start)
        self.assertEqual(len(lost["to_device"]["events"]), 1)
        retried = await self.sync(btoken, start)
        self.assertEqual(len(retried["to_device"]["events"]), 1)
        after = await self.sync(btoken, retried["next_batch"])
        self.assertEqual(after["to_device"]["events"], [])

    async def test_unknown_devices_and_bad_bodies(self) -> None:
        """Messages for unknown devices or users are dropped; malformed bodies get 400."""
        alice, atoken, _ = await self.login_user("alice")
        code, _ = await self.call("PUT", "/sendToDevice/m.test/t1", {"messages": {alice: {"NOPE": {}}, "@ghost:" + SERVER: {"*": {}}}}, token=atoken)
        self.assertEqual(code, 200)
        self.assertEqual(await self.store.to_device.get_position(), 0)
        for bad in ({}, {"messages": []}, {"messages": {"nope": {}}}, {"messages": {alice: {"D": "x"}}}):
            code, body = await self.call("PUT", "/sendToDevice/m.test/t9", bad, token=atoken)
            self.assertEqual(code, 400, body)

    async def test_remote_users_get_an_edu(self) -> None:
        """Messages for another server's users go out as one m.direct_to_device EDU per
        server (sender, type, a message_id of at most 32 characters, the messages)."""
        alice, atoken, _ = await self.login_user("alice")
        code, _ = await self.call("PUT", "/sendToDevice/m.room_key_request/t1", {
            "messages": {"@zed:" + REMOTE: {"DEV": {"k": 1}, "*": {"k": 2}}, "@yan:" + REMOTE: {"D2": {"k": 3}}}
        }, token=atoken)
        self.assertEqual(code, 200)
        edus = await self.outbound(REMOTE)
        self.assertEqual(len(edus), 1)
        content = edus[0]["content"]
        self.assertEqual(edus[0]["edu_type"], "m.direct_to_device")
        self.assertEqual((content["sender"], content["type"]), (alice, "m.room_key_request"))
        self.assertLessEqual(len(content["message_id"]), 32)
        self.assertEqual(content["messages"], {"@zed:" + REMOTE: {"DEV": {"k": 1}, "*": {"k": 2}}, "@yan:" + REMOTE: {"D2": {"k": 3}}})
        self.assertEqual(self.woken, [[REMOTE]])

    async def test_edu_in_once_per_message_id(self) -> None:
        """An m.direct_to_device EDU delivers to our users' devices once per message_id;
        a repeat (a replayed or re-sent EDU) delivers nothing more; messages for users of
        other servers are ignored."""
        bob, btoken, bdevice = await self.login_user("bob")
        content = {
            "sender": "@zed:" + REMOTE, "type": "m.room.encrypted", "message_id": "m1",
            "messages": {bob: {bdevice: {"ciphertext": "x"}}, "@other:elsewhere.test": {"D": {}}},
        }
        await self.e2ee.to_device.on_edu(REMOTE, content)
        await self.e2ee.to_device.on_edu(REMOTE, dict(content))
        sync = await self.sync(btoken)
        self.assertEqual(sync["to_device"]["events"], [{"sender": "@zed:" + REMOTE, "type": "m.room.encrypted", "content": {"ciphertext": "x"}}])

    async def test_edu_about_another_server_ignored(self) -> None:
        """HOSTILE row 35: an m.direct_to_device EDU whose sender is not a user of the
        origin server is ignored."""
        bob, btoken, bdevice = await self.login_user("bob")
        for sender in ("@mallory:elsewhere.test", "@bob:" + SERVER, "not-a-user"):
            result = self.e2ee.to_device.on_edu(REMOTE, {
                "sender": sender, "type": "m.test", "message_id": "m-" + sender, "messages": {bob: {bdevice: {}}},
            })
            if result is not None:
                await result
        self.assertEqual((await self.sync(btoken))["to_device"]["events"], [])


class ToDeviceFloodTests(E2eeTestCase):
    """HOSTILE row 36 with a small cap, to see both sides of it."""

    max_pending_to_device = 250

    async def test_cap_and_batches(self) -> None:
        """300 messages to one device: 250 (the cap) are stored and the rest dropped;
        /sync hands them out 100 at a time, in order, each once, none lost."""
        alice, atoken, _ = await self.login_user("alice")
        bob, btoken, bdevice = await self.login_user("bob")
        for i in range(3):
            code, _ = await self.call("PUT", f"/sendToDevice/m.test/t{i}", {"messages": {bob: {bdevice: {"batch": i}}}}, token=atoken)
            self.assertEqual(code, 200)
        # One request can only carry one message per device: queue the rest directly, as
        # many senders (or EDUs) would.
        for n in range(297):
            await self.e2ee.to_device.on_edu(REMOTE, {
                "sender": "@zed:" + REMOTE, "type": "m.test", "message_id": f"m{n}", "messages": {bob: {bdevice: {"n": n}}},
            })
        got = []
        token = None
        sizes = []
        for _ in range(10):
            sync = await self.sync(btoken, token)
            events = sync["to_device"]["events"]
            sizes.append(len(events))
            got.extend(events)
            token = sync["next_batch"]
            if not events:
                break
        self.assertEqual(sizes[:4], [100, 100, 50, 0])
        self.assertEqual([e["content"] for e in got[:3]], [{"batch": 0}, {"batch": 1}, {"batch": 2}])
        self.assertEqual([e["content"]["n"] for e in got[3:]], list(range(247)))

    async def test_retry_while_held_back(self) -> None:
        """While a long queue is handed out in batches, a sync retried from the same token
        (its answer lost) gets the same batch again, and nothing is skipped."""
        bob, btoken, bdevice = await self.login_user("bob")
        await self.store.run_write(lambda txn: self.store.to_device.add_messages_txn(
            txn, [(bob, bdevice, {"sender": "@zed:" + REMOTE, "type": "m.test", "content": {"n": n}}) for n in range(150)]
        ))
        first = await self.sync(btoken)
        self.assertEqual([e["content"]["n"] for e in first["to_device"]["events"]], list(range(100)))
        lost = await self.sync(btoken, first["next_batch"])
        retried = await self.sync(btoken, first["next_batch"])
        self.assertEqual([e["content"]["n"] for e in retried["to_device"]["events"]], list(range(100, 150)))
        self.assertEqual(lost["to_device"]["events"], retried["to_device"]["events"])
        self.assertEqual((await self.sync(btoken, retried["next_batch"]))["to_device"]["events"], [])


class ToDeviceTenThousandTests(E2eeTestCase):
    """HOSTILE row 36 at its size, with the default cap (10,000 per device)."""

    async def test_ten_thousand_messages(self) -> None:
        """10,000 messages waiting for one device are all delivered, in order, in batches
        of 100, none twice; one more beyond the cap is dropped, not stored."""
        bob, btoken, bdevice = await self.login_user("bob")
        await self.store.run_write(lambda txn: self.store.to_device.add_messages_txn(
            txn, [(bob, bdevice, {"sender": "@zed:" + REMOTE, "type": "m.test", "content": {"n": n}}) for n in range(10_000)]
        ))
        await self.e2ee.to_device.on_edu(REMOTE, {
            "sender": "@zed:" + REMOTE, "type": "m.test", "message_id": "over", "messages": {bob: {bdevice: {"n": "over"}}},
        })
        seen: list = []
        token = None
        for _ in range(102):
            sync = await self.sync(btoken, token)
            events = sync["to_device"]["events"]
            self.assertLessEqual(len(events), 100)
            seen.extend(e["content"]["n"] for e in events)
            token = sync["next_batch"]
            if not events:
                break
        self.assertEqual(seen, list(range(10_000)))
