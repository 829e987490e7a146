"""Receiving events from a peer that withholds some, or cites rejected auth events: two whole
fedservers in-process on loopback TLS; B's users are in a room hosted on A."""

from __future__ import annotations

from fedserver.auth.selection import select_auth_events
from fedserver.events.builder import build_event
from fedserver.federation.client import fed_path
from fedserver.handlers.federation.failures import CODE_AUTH_REJECTED, FAILURE_EDU_TYPE
from fedserver.room_versions import V10
from tests.test_federation_service import ServersTestCase, free_port


class ReceiveGapTests(ServersTestCase):
    """Receipt of PDUs (server-server spec "Checks performed on receipt of a PDU" and
    "Retrieving missing events") between two running servers."""

    async def setUp(self):
        self.a = await self.start(self.make_config("a", free_port()))
        self.b = await self.start(self.make_config("b", free_port()))
        self.alice = f"@alice:{self.a.config.server_name}"
        self.bob = f"@bob:{self.b.config.server_name}"
        a = self.a
        content = {"creator": self.alice, "room_version": "10"}
        create, _ = await a.creator.create_room_event(V10, sender=self.alice, content=content)
        self.room = create.room_id
        for t, c, k in (("m.room.member", {"membership": "join"}, self.alice),
                        ("m.room.power_levels", {"users": {self.alice: 100}}, ""),
                        ("m.room.join_rules", {"join_rule": "public"}, ""),
                        ("m.room.history_visibility", {"history_visibility": "shared"}, "")):
            await a.creator.send(self.room, V10, type=t, sender=self.alice, content=c, state_key=k)
        # Bob (on B) joins through the real handshake.
        await self.b.remote_membership.join(self.bob, self.room, [a.config.server_name])
        # From now on B does not pass its events on by itself (its sender stops; what it
        # queues stays queued): the tests decide what A gets.
        await self.b.sender.stop()

    async def bob_says(self, body):
        ev, outcome = await self.b.creator.send(
            self.room, V10, type="m.room.message", sender=self.bob, content={"msgtype": "m.text", "body": body}
        )
        self.assertTrue(outcome.accepted)
        return ev

    async def push(self, *events, txn):
        """B sends ``events`` to A in one signed transaction; returns the per-PDU results."""
        b = self.b
        body = {"origin": b.config.server_name, "origin_server_ts": 1, "pdus": [e.pdu for e in events]}
        resp = await b.federation_client.put_json(
            self.a.config.server_name, fed_path("/_matrix/federation/v1/send/{}", txn), body
        )
        return resp["pdus"]

    async def status(self, event_id):
        meta = (await self.a.store.get_event_meta([event_id])).get(event_id)
        if meta is None:
            return None
        return "rejected" if meta.rejected else "soft_failed" if meta.soft_failed else "outlier" if meta.outlier else "accepted"

    async def test_withheld_prev_events_are_fetched(self):
        """A peer sends only the last of five messages: the receiver asks it for the missing
        ones (/get_missing_events), checks them like any PDU, and takes all five in, in
        order; the last becomes the room's forward extremity."""
        msgs = [await self.bob_says(f"m{i}") for i in range(5)]
        results = await self.push(msgs[-1], txn="w1")
        self.assertEqual(results, {msgs[-1].event_id: {}})
        for m in msgs:
            self.assertEqual(await self.status(m.event_id), "accepted", m)
        self.assertEqual(await self.a.store.get_forward_extremities(self.room), [msgs[-1].event_id])

    async def test_wide_gap_uses_the_state_at_the_gap(self):
        """When the gap is wider than one /get_missing_events brings, the receiver takes the
        state after the missing prev event from the sender (/state_ids, /event), checks it,
        and accepts the event on that state."""
        msgs = [await self.bob_says(f"g{i}") for i in range(45)]
        results = await self.push(msgs[-1], txn="w2")
        self.assertEqual(results, {msgs[-1].event_id: {}})
        self.assertEqual(await self.status(msgs[-1].event_id), "accepted")
        self.assertIsNone(await self.status(msgs[0].event_id))  # not fetched: beyond the window

    async def test_rejected_auth_event_rejects_what_cites_it(self):
        """A peer's power-levels change its user may not make is rejected (and B is told,
        through the failures EDU); an event citing it among its auth events is rejected too
        (auth rule: auth events that were themselves rejected), and neither becomes state."""
        a, b = self.a, self.b
        received = []
        b.transactions.register_edu_handler(FAILURE_EDU_TYPE, lambda origin, content: received.append(content))
        state = dict(await a.pipeline.current_state(self.room))
        ext = sorted(await a.pipeline.forward_extremities(self.room))
        meta = await a.store.get_event_meta(ext)
        depth = max(m.depth for m in meta.values()) + 1
        fields = {"type": "m.room.power_levels", "state_key": "", "sender": self.bob,
                  "content": {"users": {self.alice: 100, self.bob: 100}}}
        grab = build_event(
            V10, room_id=self.room, prev_event_ids=ext, auth_event_ids=select_auth_events(V10, fields, state),
            depth=depth, origin_server_ts=2, server_name=b.config.server_name, signing_key=b.signing_key, **fields,
        )
        results = await self.push(grab, txn="r1")
        self.assertIn("error", results[grab.event_id])
        self.assertEqual(await self.status(grab.event_id), "rejected")
        msg_fields = {"type": "m.room.message", "sender": self.bob, "content": {"body": "I am in charge"}}
        auth = [state[("m.room.create", "")], grab.event_id, state[("m.room.member", self.bob)]]
        cites = build_event(
            V10, room_id=self.room, prev_event_ids=[grab.event_id], auth_event_ids=auth, depth=depth + 1,
            origin_server_ts=3, server_name=b.config.server_name, signing_key=b.signing_key, **msg_fields,
        )
        results = await self.push(cites, txn="r2")
        self.assertIn("error", results[cites.event_id])
        self.assertEqual(await self.status(cites.event_id), "rejected")
        refusal = await a.store.get_rejection(cites.event_id)
        self.assertIn("rejected", refusal.reason)
        current = await a.store.get_current_state_ids(self.room)
        self.assertNotEqual(current[("m.room.power_levels", "")], grab.event_id)

        async def told():
            return received

        await self.until(told, "the failure report to reach B")
        codes = {f["code"] for content in received for f in content["failures"]}
        self.assertIn(CODE_AUTH_REJECTED, codes)
        sent = await a.failures.list("sent")
        self.assertIn(grab.event_id, {f.affected for f in sent})

    async def test_soft_failed_event_is_stored_not_current(self):
        """An event allowed by the state before it but not by the current state (its sender
        was banned meanwhile) is soft-failed: stored, never the extremity."""
        a = self.a
        before_ban = await self.bob_says("before the ban")
        await self.push(before_ban, txn="s0")
        await a.creator.send(self.room, V10, type="m.room.member", sender=self.alice,
                             content={"membership": "ban"}, state_key=self.bob)
        late = build_event(
            V10, room_id=self.room, prev_event_ids=[before_ban.event_id], auth_event_ids=before_ban.auth_event_ids,
            depth=before_ban.depth + 1, origin_server_ts=4, server_name=self.b.config.server_name,
            signing_key=self.b.signing_key, type="m.room.message", sender=self.bob, content={"body": "late"},
        )
        results = await self.push(late, txn="s1")
        self.assertEqual(results, {late.event_id: {}})
        self.assertEqual(await self.status(late.event_id), "soft_failed")
        self.assertNotIn(late.event_id, await a.store.get_forward_extremities(self.room))

