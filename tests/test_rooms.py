"""Tests for the room handler: createRoom, sending, state, redaction, /messages, members and events."""

from __future__ import annotations

from fedserver import room_versions
from fedserver.handlers.rooms.rooms import EventFilter, parse_topo_token
from tests.test_rooms_support import HERE, RoomsTestCase, uid


class CreateRoomTests(RoomsTestCase):
    async def test_public_chat_v12_events_in_spec_order(self):
        """createRoom (public_chat, v12) sends create, the creator's join, power levels,
        canonical alias, join rules, history visibility, guest access, initial_state, name
        and topic in that order; v12 power levels leave the creator out and raise the
        tombstone level above state_default; the alias resolves and the room is public."""
        alice = await self.user("alice")
        room_id = await self.create(
            alice, preset="public_chat", visibility="public", room_alias_name="pub", name="Pub", topic="Beer",
            initial_state=[{"type": "m.room.avatar", "content": {"url": "mxc://x/y"}}],
        )
        self.assertFalse(":" in room_id)  # v12: "!" + the create event's hash
        rows = await self.store.rooms.paginate(room_id, (-1, -1), False, 50)
        types = [(e.type, e.state_key) for _, e in rows]
        self.assertEqual(
            types,
            [
                ("m.room.create", ""),
                ("m.room.member", alice.user_id),
                ("m.room.power_levels", ""),
                ("m.room.canonical_alias", ""),
                ("m.room.join_rules", ""),
                ("m.room.history_visibility", ""),
                ("m.room.guest_access", ""),
                ("m.room.avatar", ""),
                ("m.room.name", ""),
                ("m.room.topic", ""),
            ],
        )
        pl = await self.state_content(room_id, "m.room.power_levels")
        self.assertNotIn(alice.user_id, pl["users"])
        self.assertEqual(pl["events"]["m.room.tombstone"], 150)
        self.assertGreater(pl["events"]["m.room.tombstone"], pl["state_default"])
        self.assertEqual((await self.state_content(room_id, "m.room.join_rules"))["join_rule"], "public")
        self.assertEqual((await self.state_content(room_id, "m.room.history_visibility"))["history_visibility"], "shared")
        self.assertEqual((await self.state_content(room_id, "m.room.guest_access"))["guest_access"], "forbidden")
        topic = await self.state_content(room_id, "m.room.topic")
        self.assertEqual(topic["topic"], "Beer")
        self.assertEqual(topic["m.topic"]["m.text"][0]["mimetype"], "text/plain")
        resolved = await self.directory.resolve_alias(f"#pub:{HERE}")
        self.assertEqual(resolved, {"room_id": room_id, "servers": [HERE]})
        self.assertEqual((await self.state_content(room_id, "m.room.canonical_alias"))["alias"], f"#pub:{HERE}")
        self.assertEqual(await self.directory.get_visibility(room_id), "public")
        create = await self.state_content(room_id, "m.room.create")
        self.assertEqual(create["room_version"], "12")
        self.assertNotIn("creator", create)

    async def test_identical_creates_in_one_millisecond_make_two_rooms(self):
        """v12 room ids are create event hashes: two identical createRoom calls at the
        same instant still make two different rooms, each with its own state."""
        alice = await self.user("alice")
        first = await self.create(alice)
        second = await self.create(alice)
        self.assertNotEqual(first, second)
        for room_id in (first, second):
            self.assertEqual(len([k for k in await self.state_ids(room_id) if k[0] == "m.room.member"]), 1)

    async def test_private_chat_v10_with_invite(self):
        """private_chat in v10: the creator is listed at 100, the invite level is 0, the
        creator content names the creator, history is shared, guests can join, and the
        invitee gets an invite with is_direct."""
        alice = await self.user("alice")
        bob = await self.user("bob", displayname="Bob")
        room_id = await self.create(alice, room_version="10", invite=[bob.user_id], is_direct=True)
        pl = await self.state_content(room_id, "m.room.power_levels")
        self.assertEqual(pl["users"], {alice.user_id: 100})
        self.assertEqual(pl["invite"], 0)
        self.assertEqual(pl["events"]["m.room.tombstone"], 100)
        self.assertEqual((await self.state_content(room_id, "m.room.create"))["creator"], alice.user_id)
        self.assertEqual((await self.state_content(room_id, "m.room.join_rules"))["join_rule"], "invite")
        self.assertEqual((await self.state_content(room_id, "m.room.guest_access"))["guest_access"], "can_join")
        invite = await self.state_content(room_id, "m.room.member", bob.user_id)
        self.assertEqual(invite, {"membership": "invite", "is_direct": True, "displayname": "Bob"})
        self.assertEqual(await self.directory.get_visibility(room_id), "private")

    async def test_trusted_private_chat(self):
        """trusted_private_chat gives invitees the creator's power: listed at 100 before
        v12, additional creators from v12."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        old = await self.create(alice, preset="trusted_private_chat", room_version="11", invite=[bob.user_id])
        self.assertEqual((await self.state_content(old, "m.room.power_levels"))["users"], {alice.user_id: 100, bob.user_id: 100})
        new = await self.create(alice, preset="trusted_private_chat", invite=[bob.user_id])
        self.assertEqual((await self.state_content(new, "m.room.create"))["additional_creators"], [bob.user_id])
        self.assertEqual((await self.state_content(new, "m.room.power_levels"))["users"], {})

    async def test_initial_state_overrides_preset_and_names_override_initial_state(self):
        """initial_state takes precedence over the preset (join rules), and the name key
        over an initial_state m.room.name."""
        alice = await self.user("alice")
        room_id = await self.create(
            alice, preset="private_chat", name="Key",
            initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "public"}},
                {"type": "m.room.name", "content": {"name": "Initial"}},
            ],
        )
        self.assertEqual((await self.state_content(room_id, "m.room.join_rules"))["join_rule"], "public")
        self.assertEqual((await self.state_content(room_id, "m.room.name"))["name"], "Key")

    async def test_power_level_override(self):
        """power_level_content_override is applied on top of the default content."""
        alice = await self.user("alice")
        room_id = await self.create(alice, power_level_content_override={"events_default": 10, "ban": 70})
        pl = await self.state_content(room_id, "m.room.power_levels")
        self.assertEqual((pl["events_default"], pl["ban"], pl["kick"]), (10, 70, 50))

    async def test_bad_requests(self):
        """Malformed createRoom bodies are refused with the spec's errors before anything
        is stored: unknown version, preset, visibility, bad invite ids, initial_state,
        alias name, a taken alias, and remote invitees with no federation path."""
        alice = await self.user("alice")
        before = await self.store.rooms.get_stream_position()
        await self.assertMatrixError(self.create(alice, room_version="999"), 400, "M_UNSUPPORTED_ROOM_VERSION")
        await self.assertMatrixError(self.create(alice, preset="party"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.create(alice, visibility="secret"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.create(alice, invite=["bob"]), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.create(alice, initial_state=[{"type": "x"}]), 400, "M_BAD_JSON")
        await self.assertMatrixError(self.create(alice, name=5), 400, "M_BAD_JSON")
        await self.assertMatrixError(self.create(alice, room_alias_name="a b"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.create(alice, room_alias_name="a:b"), 400, "M_INVALID_PARAM")
        e = await self.assertMatrixError(self.create(alice, invite=["@bob:elsewhere.test"]), 400, "M_UNKNOWN")
        self.assertIn("remote invites not supported yet", e.error)
        await self.assertMatrixError(self.create(alice, invite=[uid("nobody")]), 404, "M_NOT_FOUND")
        self.assertEqual(await self.store.rooms.get_stream_position(), before)
        await self.create(alice, room_alias_name="taken")
        await self.assertMatrixError(self.create(alice, room_alias_name="taken"), 400, "M_ROOM_IN_USE")

    async def test_refused_initial_state_is_invalid_room_state(self):
        """An initial_state event the auth rules refuse (the creator gave away power to
        set it) answers 400 M_INVALID_ROOM_STATE."""
        alice = await self.user("alice")
        await self.assertMatrixError(
            self.create(
                alice, room_version="10",
                power_level_content_override={"users": {alice.user_id: 10}, "state_default": 50},
                initial_state=[{"type": "m.room.topic", "content": {"topic": "x"}}],
            ),
            400, "M_INVALID_ROOM_STATE",
        )

    async def test_remote_invitee_goes_through_remote_hook(self):
        """With a remote-membership path, createRoom hands remote invitees to it with
        the room's stripped state, which includes the inviter's membership event and no
        other member's."""
        calls = []

        class Remote:
            async def invite(self, room_id, rv, *, sender, target, prepare, invite_room_state, content):
                calls.append((room_id, sender, target, [s["type"] for s in invite_room_state], invite_room_state))

        self.membership.remote = Remote()
        alice = await self.user("alice")
        room_id = await self.create(alice, name="N", invite=["@bob:elsewhere.test"])
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0][:3], (room_id, alice.user_id, "@bob:elsewhere.test"))
        self.assertIn("m.room.name", calls[0][3])
        self.assertIn("m.room.create", calls[0][3])
        # The inviter's own membership goes along (who invites; Synapse sends it too).
        members = [(s["state_key"], s["content"]["membership"]) for s in calls[0][4] if s["type"] == "m.room.member"]
        self.assertEqual(members, [(alice.user_id, "join")])


class SendTests(RoomsTestCase):
    async def test_transaction_ids_are_idempotent_per_device(self):
        """A repeated txn id from the same device gets the first event back and stores
        nothing new; the same txn id from another device is a new event; the sender's
        device sees transaction_id in unsigned, other devices do not."""
        alice = await self.user("alice")
        room_id = await self.create(alice)
        first = await self.send_text(alice, room_id, "hi", txn_id="abc")
        pos = await self.store.rooms.get_stream_position()
        again = await self.send_text(alice, room_id, "hi", txn_id="abc")
        self.assertEqual(again, first)
        self.assertEqual(await self.store.rooms.get_stream_position(), pos)
        other_device = await self.user("alice", device_id="OTHER")
        third = await self.send_text(other_device, room_id, "hi", txn_id="abc")
        self.assertNotEqual(third, first)
        served = await self.timeline.get_event(alice, room_id, first)
        self.assertEqual(served["unsigned"]["transaction_id"], "abc")
        served = await self.timeline.get_event(other_device, room_id, first)
        self.assertNotIn("transaction_id", served["unsigned"])

    async def test_transaction_ids_are_scoped_to_the_path(self):
        """Spec "Transaction identifiers": a retransmission has the same txn id AND the same
        path. The same txn id in another room, with another event type, or on /redact is a
        new request with its own event; each repeated on its own path gets its own first
        event back, and every event shows the txn id to the sending device."""
        alice = await self.user("alice")
        room_a = await self.create(alice)
        room_b = await self.create(alice)
        in_a = await self.send_text(alice, room_a, "in a", txn_id="t1")
        in_b = await self.send_text(alice, room_b, "in b", txn_id="t1")
        self.assertNotEqual(in_a, in_b)
        self.assertEqual((await self.store.get_event(in_b)).room_id, room_b)
        reaction = await self.rooms.send_event(alice, room_a, "m.reaction", {}, "t1")
        self.assertNotIn(reaction, (in_a, in_b))
        self.assertEqual((await self.store.get_event(reaction)).type, "m.reaction")
        redaction = await self.rooms.redact(alice, room_a, in_a, "t1")
        self.assertEqual((await self.store.get_event(redaction)).type, "m.room.redaction")
        self.assertEqual(len({in_a, in_b, reaction, redaction}), 4)
        pos = await self.store.rooms.get_stream_position()
        self.assertEqual(await self.send_text(alice, room_a, "in a", txn_id="t1"), in_a)
        self.assertEqual(await self.send_text(alice, room_b, "in b", txn_id="t1"), in_b)
        self.assertEqual(await self.rooms.send_event(alice, room_a, "m.reaction", {}, "t1"), reaction)
        self.assertEqual(await self.rooms.redact(alice, room_a, in_a, "t1"), redaction)
        self.assertEqual(await self.store.rooms.get_stream_position(), pos)
        for room_id, event_id in ((room_b, in_b), (room_a, reaction)):
            served = await self.timeline.get_event(alice, room_id, event_id)
            self.assertEqual(served["unsigned"]["transaction_id"], "t1")

    async def test_concurrent_same_txn_makes_one_event(self):
        """Two concurrent requests with the same txn id produce one event."""
        from twisted.internet import defer

        alice = await self.user("alice")
        room_id = await self.create(alice)
        a, b = await defer.gatherResults([
            defer.ensureDeferred(self.send_text(alice, room_id, "x", txn_id="same")),
            defer.ensureDeferred(self.send_text(alice, room_id, "x", txn_id="same")),
        ])
        self.assertEqual(a, b)

    async def test_non_member_forbidden_unknown_room_404(self):
        """A user not in the room gets 403 M_FORBIDDEN with the auth rule's reason, an
        unknown room 404; bad event types 400; an oversized event 413."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice)
        e = await self.assertMatrixError(self.send_text(bob, room_id, "hi"), 403, "M_FORBIDDEN")
        self.assertTrue(e.error)
        await self.assertMatrixError(self.send_text(alice, "!nope:here.test", "hi"), 404, "M_NOT_FOUND")
        await self.assertMatrixError(self.rooms.send_event(alice, room_id, "", {}, "t1"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.rooms.send_event(alice, room_id, "x" * 300, {}, "t2"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(
            self.rooms.send_event(alice, room_id, "m.room.message", {"body": "x" * 70_000}, "t3"), 413, "M_TOO_LARGE"
        )
        await self.assertMatrixError(
            self.rooms.send_event(alice, room_id, "m.room.message", {"n": 1.5}, "t4"), 400, "M_BAD_JSON"
        )

    async def test_power_levels_forbid_then_allow_topic(self):
        """A member below state_default cannot set the topic (403); after the creator
        raises them, they can; setting the same content again returns the same event."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice, preset="public_chat")
        await self.membership.join(bob.user_id, room_id)
        await self.assertMatrixError(
            self.rooms.set_state(bob, room_id, "m.room.topic", "", {"topic": "bob's"}), 403, "M_FORBIDDEN"
        )
        pl = dict(await self.state_content(room_id, "m.room.power_levels"))
        pl["users"] = {bob.user_id: 50}
        await self.rooms.set_state(alice, room_id, "m.room.power_levels", "", pl)
        first = await self.rooms.set_state(bob, room_id, "m.room.topic", "", {"topic": "bob's"})
        second = await self.rooms.set_state(bob, room_id, "m.room.topic", "", {"topic": "bob's"})
        self.assertEqual(first, second)
        self.assertEqual(await self.rooms.get_state_event(bob, room_id, "m.room.topic", ""), {"topic": "bob's"})

    async def test_invite_through_state_api_uses_membership_rules(self):
        """An invite sent as a state event goes through the membership handler: a local
        invitee is invited (with is_direct), a remote one needs the federation path."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice)
        event_id = await self.rooms.set_state(
            alice, room_id, "m.room.member", bob.user_id, {"membership": "invite", "is_direct": True}
        )
        ev = await self.store.get_event(event_id)
        self.assertEqual((ev.state_key, ev.content["membership"], ev.content["is_direct"]), (bob.user_id, "invite", True))
        await self.assertMatrixError(
            self.rooms.set_state(alice, room_id, "m.room.member", "@x:far.test", {"membership": "invite"}), 400, "M_UNKNOWN"
        )

    async def test_canonical_alias_must_point_to_room(self):
        """A new canonical alias must be ours and point to the room (400 M_BAD_ALIAS)."""
        alice = await self.user("alice")
        room_id = await self.create(alice)
        other = await self.create(alice, room_alias_name="other")
        await self.assertMatrixError(
            self.rooms.set_state(alice, room_id, "m.room.canonical_alias", "", {"alias": f"#other:{HERE}"}), 400, "M_BAD_ALIAS"
        )
        await self.assertMatrixError(
            self.rooms.set_state(alice, room_id, "m.room.canonical_alias", "", {"alias": "nonsense"}), 400, "M_BAD_ALIAS"
        )
        await self.directory.create_alias(alice.user_id, f"#mine:{HERE}", room_id)
        await self.rooms.set_state(alice, room_id, "m.room.canonical_alias", "", {"alias": f"#mine:{HERE}"})
        self.assertTrue(other)


class RedactionTests(RoomsTestCase):
    async def test_redact_own_and_others(self):
        """A user redacts their own message; redacting another's needs the redact level
        (403 without it, even though the auth rules of v3+ rooms would accept the event);
        a redacted event is served with redacted content and redacted_because."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice, preset="public_chat")
        await self.membership.join(bob.user_id, room_id)
        mine = await self.send_text(bob, room_id, "oops")
        theirs = await self.send_text(alice, room_id, "alice's")
        redaction = await self.rooms.redact(bob, room_id, mine, "r1", reason="typo")
        served = await self.timeline.get_event(alice, room_id, mine)
        self.assertEqual(served["content"], {})
        self.assertEqual(served["unsigned"]["redacted_because"]["event_id"], redaction)
        self.assertEqual(served["unsigned"]["redacted_because"]["content"]["reason"], "typo")
        await self.assertMatrixError(self.rooms.redact(bob, room_id, theirs, "r2"), 403, "M_FORBIDDEN")
        self.assertEqual((await self.timeline.get_event(bob, room_id, theirs))["content"]["body"], "alice's")
        # The creator (infinite power in v12) may redact Bob's next message.
        other = await self.send_text(bob, room_id, "spam")
        await self.rooms.redact(alice, room_id, other, "r3")
        page = await self.timeline.messages(bob, room_id, limit=3)
        by_id = {e["event_id"]: e for e in page["chunk"]}
        self.assertEqual(by_id[other]["content"], {})
        # The redaction event names its target at top level for clients.
        self.assertEqual(by_id[[e for e in by_id if by_id[e]["type"] == "m.room.redaction"][0]]["redacts"], other)
        # Idempotent per transaction id.
        self.assertEqual(await self.rooms.redact(bob, room_id, mine, "r1"), redaction)

    async def test_redaction_v10_top_level(self):
        """In a v10 room the redaction carries redacts at top level and still applies."""
        alice = await self.user("alice")
        room_id = await self.create(alice, room_version="10")
        msg = await self.send_text(alice, room_id, "secret")
        rid = await self.rooms.redact(alice, room_id, msg, "r")
        ev = await self.store.get_event(rid)
        self.assertEqual(ev.pdu["redacts"], msg)
        self.assertEqual((await self.timeline.get_event(alice, room_id, msg))["content"], {})

    async def test_redaction_indexing_survives_restart(self):
        """Redactions are indexed from the events table with a stored position: an index
        run that never happened (crash after persisting) is caught up by the next one."""
        alice = await self.user("alice")
        room_id = await self.create(alice)
        msg = await self.send_text(alice, room_id, "x")
        self.pipeline.on_persisted.remove(self.rooms.on_persisted)
        rv = await self.store.get_room_version(room_id)
        redaction, _ = await self.creator.send(room_id, rv, type="m.room.redaction", sender=alice.user_id, content={}, redacts=msg)
        self.assertEqual(await self.store.rooms.get_redactions([msg]), {})
        self.assertEqual(await self.store.rooms.index_redactions(), 1)
        self.assertEqual(await self.store.rooms.get_redactions([msg]), {msg: [redaction.event_id]})
        self.assertEqual(await self.store.rooms.index_redactions(), 0)


class MessagesTests(RoomsTestCase):
    async def test_paginate_backwards_and_forwards(self):
        """Paging back 10 at a time returns every message once, newest first, with an
        end token until the start of the room; paging forward from the first page's end
        returns them oldest first."""
        alice = await self.user("alice")
        room_id = await self.create(alice)
        sent = [await self.send_text(alice, room_id, f"m{i}") for i in range(25)]
        seen = []
        token = None
        pages = 0
        while True:
            page = await self.timeline.messages(alice, room_id, from_token=token, limit=10)
            seen.extend(e["event_id"] for e in page["chunk"])
            pages += 1
            if "end" not in page:
                break
            token = page["end"]
            self.assertIsNotNone(parse_topo_token(token))
        messages = [e for e in seen if e in sent]
        self.assertEqual(messages, sent[::-1])
        self.assertEqual(len(seen), len(set(seen)))
        self.assertGreaterEqual(pages, 3)
        first = await self.timeline.messages(alice, room_id, limit=5)
        forward = await self.timeline.messages(alice, room_id, from_token=first["end"], direction="f", limit=5)
        self.assertEqual([e["event_id"] for e in forward["chunk"]], sent[-5:])
        to_limited = await self.timeline.messages(
            alice, room_id, from_token=first["end"], to_token=first["end"], direction="f", limit=5
        )
        self.assertEqual(to_limited["chunk"], [])

    async def test_filter_and_bad_parameters(self):
        """A types filter keeps only those types; bad dir or token is 400."""
        alice = await self.user("alice")
        room_id = await self.create(alice, name="N")
        await self.send_text(alice, room_id, "hello")
        page = await self.timeline.messages(alice, room_id, limit=50, event_filter=EventFilter({"types": ["m.room.*"]}))
        self.assertTrue(page["chunk"])
        only = await self.timeline.messages(alice, room_id, limit=50, event_filter=EventFilter({"types": ["m.room.message"]}))
        self.assertEqual([e["content"]["body"] for e in only["chunk"]], ["hello"])
        await self.assertMatrixError(self.timeline.messages(alice, room_id, direction="x"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.timeline.messages(alice, room_id, from_token="garbage"), 400, "M_INVALID_PARAM")

    async def test_history_visibility_joined_hides_earlier_events(self):
        """With history_visibility joined, a user who joins later sees nothing from before
        their join (but their own join and later events); with shared they see the
        earlier messages; a stranger is refused with 403."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room_id = await self.create(
            alice, preset="public_chat",
            initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}],
        )
        early = await self.send_text(alice, room_id, "before bob")
        await self.membership.join(bob.user_id, room_id)
        late = await self.send_text(alice, room_id, "after bob")
        page = await self.timeline.messages(bob, room_id, limit=50)
        ids = [e["event_id"] for e in page["chunk"]]
        self.assertIn(late, ids)
        self.assertNotIn(early, ids)
        self.assertIn(bob.user_id, [e.get("state_key") for e in page["chunk"]])
        await self.assertMatrixError(self.timeline.get_event(bob, room_id, early), 404, "M_NOT_FOUND")
        await self.assertMatrixError(self.timeline.messages(carol, room_id), 403, "M_FORBIDDEN")
        shared = await self.create(alice, preset="public_chat")
        early2 = await self.send_text(alice, shared, "before carol")
        await self.membership.join(carol.user_id, shared)
        ids = [e["event_id"] for e in (await self.timeline.messages(carol, shared, limit=50))["chunk"]]
        self.assertIn(early2, ids)

    async def test_left_user_sees_until_leave(self):
        """A user who left sees (shared history) the events up to their leave, not after."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice, preset="public_chat")
        await self.membership.join(bob.user_id, room_id)
        before = await self.send_text(alice, room_id, "while bob is here")
        await self.membership.leave(bob.user_id, room_id)
        after = await self.send_text(alice, room_id, "after bob left")
        ids = [e["event_id"] for e in (await self.timeline.messages(bob, room_id, limit=50))["chunk"]]
        self.assertIn(before, ids)
        self.assertNotIn(after, ids)


class StateAndMembersTests(RoomsTestCase):
    async def test_state_members_and_access(self):
        """Members read the full state, member lists (filtered by membership), joined
        members with profiles and their joined rooms; a stranger gets 403; a user who left
        reads the state as it was when they left."""
        alice = await self.user("alice", displayname="Alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room_id = await self.create(alice, preset="public_chat", name="Room", invite=[carol.user_id])
        await self.membership.join(bob.user_id, room_id)
        state = await self.rooms.get_state(bob, room_id)
        types = {(e["type"], e["state_key"]) for e in state}
        self.assertIn(("m.room.name", ""), types)
        self.assertIn(("m.room.member", carol.user_id), types)
        self.assertTrue(all(e["room_id"] == room_id for e in state))
        members = await self.timeline.members(bob, room_id)
        self.assertEqual(len(members["chunk"]), 3)
        invited = await self.timeline.members(bob, room_id, membership="invite")
        self.assertEqual([e["state_key"] for e in invited["chunk"]], [carol.user_id])
        not_joined = await self.timeline.members(bob, room_id, not_membership="join")
        self.assertEqual([e["state_key"] for e in not_joined["chunk"]], [carol.user_id])
        joined = await self.timeline.joined_members(bob, room_id)
        self.assertEqual(joined["joined"], {alice.user_id: {"display_name": "Alice"}, bob.user_id: {}})
        self.assertEqual((await self.rooms.joined_rooms(bob))["joined_rooms"], [room_id])
        stranger = await self.user("dave")
        await self.assertMatrixError(self.rooms.get_state(stranger, room_id), 403, "M_FORBIDDEN")
        await self.assertMatrixError(self.timeline.joined_members(carol, room_id), 403, "M_FORBIDDEN")
        await self.membership.leave(bob.user_id, room_id)
        await self.rooms.set_state(alice, room_id, "m.room.name", "", {"name": "Renamed"})
        self.assertEqual(await self.rooms.get_state_event(bob, room_id, "m.room.name", ""), {"name": "Room"})
        self.assertEqual(await self.rooms.get_state_event(alice, room_id, "m.room.name", ""), {"name": "Renamed"})
        await self.assertMatrixError(self.rooms.get_state_event(alice, room_id, "m.room.topic", ""), 404, "M_NOT_FOUND")
        self.assertEqual((await self.rooms.joined_rooms(bob))["joined_rooms"], [])

    async def test_world_readable_room_for_strangers(self):
        """A world-readable room's state and messages can be read by anyone."""
        alice = await self.user("alice")
        stranger = await self.user("zed")
        room_id = await self.create(
            alice, initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}]
        )
        msg = await self.send_text(alice, room_id, "public words")
        self.assertTrue(await self.rooms.get_state(stranger, room_id))
        ids = [e["event_id"] for e in (await self.timeline.messages(stranger, room_id))["chunk"]]
        self.assertIn(msg, ids)

    async def test_context(self):
        """/context returns the event, events before and after, tokens and the state."""
        alice = await self.user("alice")
        room_id = await self.create(alice)
        ids = [await self.send_text(alice, room_id, f"m{i}") for i in range(7)]
        ctx = await self.timeline.context(alice, room_id, ids[3], limit=4)
        self.assertEqual(ctx["event"]["event_id"], ids[3])
        self.assertEqual([e["event_id"] for e in ctx["events_before"]], [ids[2], ids[1]])
        self.assertEqual([e["event_id"] for e in ctx["events_after"]], [ids[4], ids[5]])
        self.assertIn("m.room.create", [e["type"] for e in ctx["state"]])
        back = await self.timeline.messages(alice, room_id, from_token=ctx["start"], limit=1)
        self.assertEqual(back["chunk"][0]["event_id"], ids[0])
        await self.assertMatrixError(self.timeline.context(alice, room_id, "$nope"), 404, "M_NOT_FOUND")


class VersionsTests(RoomsTestCase):
    async def test_every_spec_version_supports_the_basics(self):
        """In every spec room version a room can be created, joined, spoken in, and its
        messages paged back."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        for rv in room_versions.SPEC_ROOM_VERSIONS:
            room_id = await self.create(alice, preset="public_chat", room_version=rv.identifier)
            await self.membership.join(bob.user_id, room_id)
            msg = await self.send_text(bob, room_id, "hi " + rv.identifier)
            page = await self.timeline.messages(alice, room_id, limit=2)
            self.assertEqual(page["chunk"][0]["event_id"], msg, rv.identifier)
