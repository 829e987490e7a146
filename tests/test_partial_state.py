"""Partial-state joins between two fedservers over loopback TLS (send_join v2 omit_members,
MSC3706 / MSC3902): the resident's answer, the joiner's partial room and its resync, a
restart in the middle of a resync, and answers the joiner must refuse."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater as _deferLater
from twisted.trial.unittest import TestCase

from fedserver.events.builder import build_from_template
from fedserver.federation.client import HttpResponseError, fed_path
from fedserver.testing import loopback_config, make_unwritable, start_server
from tests.test_remote_rooms import Server


def deferLater(seconds: float) -> defer.Deferred:
    from twisted.internet import reactor

    return _deferLater(reactor, seconds, lambda: None)


class _Gate:
    """Holds B's answers to ``/state_ids`` (the resync's first request) until opened."""

    def __init__(self, server: Server) -> None:
        self.opened: defer.Deferred = defer.Deferred()
        self.asked = 0
        history = server.svc.store.history
        original = history.get_state_ids_at

        async def gated(event_id: str) -> Any:
            self.asked += 1
            await self.opened
            return await original(event_id)

        history.get_state_ids_at = gated

    def open(self) -> None:
        if not self.opened.called:
            self.opened.callback(None)


class PartialStateJoinTests(TestCase):
    timeout = 60

    async def start(self, directory: str | None = None, port: int | None = None, **options: Any) -> Server:
        config = loopback_config(
            directory or os.path.abspath(self.mktemp()), port, federation_client_timeout=10, **options
        )
        return Server(await start_server(self, config))

    async def until(self, predicate, what: str) -> Any:
        for _ in range(2000):
            value = await predicate()
            if value:
                return value
            await deferLater(0.01)
        self.fail(f"timed out waiting for {what}")

    async def room_with_members(self, b: Server, names: list[str]) -> tuple[str, list]:
        users = [await b.user(n) for n in names]
        room = await b.create_room(users[0], "12", preset="public_chat", name="Big room")
        for u in users[1:]:
            await b.rooms.membership.join(u.user_id, room)
        return room, users

    async def test_resident_answer_omits_members(self):
        """send_join v2 with omit_members=true: B answers members_omitted with no member
        event in state but the joiner's own, an auth chain holding none of the state events
        (but the members they need), and servers_in_room; omit_members=maybe is 400
        M_INVALID_PARAM; without it the whole state comes back."""
        a, b = await self.start(), await self.start()
        room, users = await self.room_with_members(b, ["bob", "carol", "dave"])
        alice = await a.user("alice")
        client, key = a.svc.federation_client, a.svc.signing_key
        rv = a.svc.room_versions.get("12")

        async def join_event() -> Any:
            made = await client.get_json(
                b.name, fed_path("/_matrix/federation/v1/make_join/{}/{}", room, alice.user_id), args={"ver": ["12"]}
            )
            return build_from_template(made["event"], rv, origin_server_ts=1, server_name=a.name, signing_key=key)

        event = await join_event()
        path = fed_path("/_matrix/federation/v2/send_join/{}/{}", room, event.event_id)
        e = await self.assertFailure(client.put_json(b.name, path, event.pdu, args={"omit_members": "maybe"}), HttpResponseError)
        self.assertEqual((e.code, e.errcode), (400, "M_INVALID_PARAM"))
        resp = await client.put_json(b.name, path, event.pdu, args={"omit_members": "true"})
        self.assertIs(resp["members_omitted"], True)
        self.assertEqual(resp["servers_in_room"], [b.name])
        types = [p["type"] for p in resp["state"]]
        self.assertNotIn("m.room.member", types)
        self.assertIn("m.room.create", types)
        self.assertIn("m.room.name", types)
        state_ids = {p["hashes"]["sha256"] for p in resp["state"]}
        self.assertFalse(state_ids & {p["hashes"]["sha256"] for p in resp["auth_chain"]})
        self.assertIn(users[0].user_id, [p.get("state_key") for p in resp["auth_chain"]])  # the creator, for PL
        full = await client.put_json(b.name, path, event.pdu)
        self.assertIs(full["members_omitted"], False)
        members = {p["state_key"] for p in full["state"] if p["type"] == "m.room.member"}
        self.assertEqual(members, {u.user_id for u in users})

    async def test_resident_answer_includes_heroes(self):
        """In a room with neither a name nor a canonical alias, the partial send_join answer
        holds the member events of its heroes: the first five members by storing order
        whose membership is join or invite (an early invitee is one), leaving out one who
        left and the joiner, and no other member event."""
        a, b = await self.start(), await self.start()
        names = ["bob", "carol", "dave", "erin", "frank", "gina", "hank"]
        users = [await b.user(n) for n in names]
        ivan = await b.user("ivan")
        room = await b.create_room(users[0], "12", preset="public_chat")
        await b.rooms.membership.invite(users[0].user_id, room, ivan.user_id)
        for u in users[1:]:
            await b.rooms.membership.join(u.user_id, room)
        await b.rooms.membership.leave(users[1].user_id, room)
        alice = await a.user("alice")
        client, key = a.svc.federation_client, a.svc.signing_key
        rv = a.svc.room_versions.get("12")
        made = await client.get_json(
            b.name, fed_path("/_matrix/federation/v1/make_join/{}/{}", room, alice.user_id), args={"ver": ["12"]}
        )
        event = build_from_template(made["event"], rv, origin_server_ts=1, server_name=a.name, signing_key=key)
        path = fed_path("/_matrix/federation/v2/send_join/{}/{}", room, event.event_id)
        resp = await client.put_json(b.name, path, event.pdu, args={"omit_members": "true"})
        self.assertIs(resp["members_omitted"], True)
        heroes = [p["state_key"] for p in resp["state"] if p["type"] == "m.room.member"]
        self.assertEqual(sorted(heroes), sorted(u.user_id for u in (users[0], ivan, users[2], users[3], users[4])))

    async def test_partial_join_resync_and_member_lists(self):
        """A joins B's room with partial state: the join answers at once; until the resync
        ends the room is marked, member lists wait, /sync leaves the room out, and A sends
        to B (servers_in_room); once B answers the resync, A holds every member, the mark
        is gone and /sync shows the room with its members."""
        a, b = await self.start(), await self.start()
        room, users = await self.room_with_members(b, ["bob", "carol", "dave"])
        gate = _Gate(b)
        alice = await a.user("alice")
        await a.rooms.membership.join(alice.user_id, room, server_names=[b.name])
        self.assertIsNotNone(await a.svc.store.partial_state.get_room(room))
        self.assertEqual(await a.svc.store.get_joined_hosts(room), {a.name, b.name})
        waiting = defer.ensureDeferred(a.rooms.timeline.joined_members(alice, room))
        await self.until(lambda: defer.succeed(gate.asked), "the resync to ask B")
        self.assertFalse(waiting.called)
        self.assertNotIn(room, (await a.sync(alice))["rooms"]["join"])
        # A message of ours goes out while partial.
        await a.rooms.rooms.send_event(alice, room, "m.room.message", {"msgtype": "m.text", "body": "early"}, "t1")
        gate.open()
        joined = await waiting
        self.assertEqual(set(joined["joined"]), {u.user_id for u in users} | {alice.user_id})
        self.assertIsNone(await a.svc.store.partial_state.get_room(room))
        entry = (await a.sync(alice))["rooms"]["join"][room]
        shown = {e["state_key"] for e in entry["state"]["events"] + entry["timeline"]["events"]
                 if e["type"] == "m.room.member"}
        self.assertEqual(shown, {u.user_id for u in users} | {alice.user_id})

        async def b_has_message() -> bool:
            page = await b.rooms.timeline.messages(users[0], room, direction="b", limit=20)
            return any(e.get("content", {}).get("body") == "early" for e in page["chunk"])

        await self.until(b_has_message, "B to receive the message sent while partial")

        # The members the resync brought are in A's user directory (they were stored
        # before they entered the room's current state).
        async def carol_found() -> bool:
            found = await a.svc.user_directory.search(alice, {"search_term": "carol"})
            return [r["user_id"] for r in found["results"]] == [users[1].user_id]

        await self.until(carol_found, "carol in A's user directory")

    async def test_device_lists_name_the_members_the_resync_brings(self):
        """Client-server "device_lists.changed" names users who "now share an encrypted
        room with the client": the members a partial-state join's resync brings are
        named in the first incremental /sync after the resync (the room itself is sent
        then, as if just joined), so the client fetches their keys."""
        a, b = await self.start(), await self.start()
        room, users = await self.room_with_members(b, ["bob", "carol"])
        gate = _Gate(b)
        alice = await a.user("alice")
        await a.rooms.membership.join(alice.user_id, room, server_names=[b.name])
        await self.until(lambda: defer.succeed(gate.asked), "the resync to ask B")
        during = await a.sync(alice)
        self.assertNotIn(room, during["rooms"]["join"])
        gate.open()
        await a.svc.pipeline.wait_full_state(room)
        after = await a.sync(alice, since=during["next_batch"])
        self.assertIn(room, after["rooms"]["join"])
        self.assertLessEqual({u.user_id for u in users}, set(after["device_lists"]["changed"]))
        self.assertNotIn(alice.user_id, after["device_lists"]["changed"])

    async def test_restart_in_the_middle_of_a_resync_resumes_it(self):
        """A stops while its resync waits for B; started again on the same database, A
        finds the room still marked, resumes the resync and completes it."""
        directory = os.path.abspath(self.mktemp())
        a, b = await self.start(directory), await self.start()
        room, users = await self.room_with_members(b, ["bob", "carol"])
        gate = _Gate(b)
        alice = await a.user("alice")
        await a.rooms.membership.join(alice.user_id, room, server_names=[b.name])
        await self.until(lambda: defer.succeed(gate.asked), "the resync to ask B")
        await a.svc.stopService()
        gate.open()
        a2 = await self.start(directory, port=int(a.name.rsplit(":", 1)[1]))
        self.assertIsNotNone(await a2.svc.store.partial_state.get_room(room))  # still partial after the restart
        await a2.svc.pipeline.wait_full_state(room)
        self.assertIsNone(await a2.svc.store.partial_state.get_room(room))
        members = await a2.svc.store.get_room_members(room, "join")
        self.assertEqual(set(members), {u.user_id for u in users} | {alice.user_id})

    async def test_partial_answer_not_asked_for_or_inconsistent_is_refused(self):
        """A joiner that did not ask for partial state refuses an answer that omits
        members; one that asked refuses members_omitted without servers_in_room. Both
        joins fail with 502 and the room is not joined."""
        a = await self.start(partial_state_joins=False)
        b = await self.start()
        room, _ = await self.room_with_members(b, ["bob"])
        handshakes = b.svc.handshakes
        original = handshakes.send_membership

        async def always_partial(origin, room_id, event_id, pdu, membership, *, omit_members=False):
            return await original(origin, room_id, event_id, pdu, membership, omit_members=True)

        handshakes.send_membership = always_partial
        alice = await a.user("alice")
        e = await self.assertFailure(defer.ensureDeferred(a.rooms.membership.join(alice.user_id, room, server_names=[b.name])), Exception)
        self.assertEqual(getattr(e, "code", None), 502, e)
        self.assertIn("not asked for", str(e))
        self.assertIsNone(await a.membership(room, alice.user_id))

        c = await self.start()
        original_response = handshakes._join_response

        async def without_servers(*args, **kwargs):
            body = await (await original_response(*args, **kwargs)).collect()
            body.pop("servers_in_room", None)
            return body

        handshakes._join_response = without_servers
        carol = await c.user("carol")
        e = await self.assertFailure(defer.ensureDeferred(c.rooms.membership.join(carol.user_id, room, server_names=[b.name])), Exception)
        self.assertEqual(getattr(e, "code", None), 502, e)
        self.assertIn("servers_in_room", str(e))
        self.assertIsNone(await c.membership(room, carol.user_id))

    async def test_resync_waits_out_an_unwritable_database(self):
        """The database of the joining server becomes unwritable while its resync waits
        for B: the resync logs nothing with a traceback (the database logs the outage),
        keeps the room partial, and tries again after STORAGE_RETRY_S by itself; once the
        database is writable the room gets its full state."""
        import fedserver.background as background
        from tests.test_storage_faults import LogCapture

        self.patch(background, "STORAGE_RETRY_S", 0.2)
        a, b = await self.start(), await self.start()
        room, users = await self.room_with_members(b, ["bob", "carol"])
        gate = _Gate(b)
        alice = await a.user("alice")
        await a.rooms.membership.join(alice.user_id, room, server_names=[b.name])
        await self.until(lambda: defer.succeed(gate.asked), "the resync to ask B")
        db = a.svc.store.database
        await make_unwritable(db)
        log = LogCapture(self)
        gate.open()
        await deferLater(1.0)  # several rounds against the unwritable database
        self.assertIsNotNone(await a.svc.store.partial_state.get_room(room))
        self.assertEqual(
            [f for f in log.formats(log.serious()) if "Database unavailable" not in f], [], log.formats(log.serious())
        )
        await make_unwritable(db, False)
        await a.svc.pipeline.wait_full_state(room)
        self.assertIsNone(await a.svc.store.partial_state.get_room(room))
        members = await a.svc.store.get_room_members(room, "join")
        self.assertEqual(set(members), {u.user_id for u in users} | {alice.user_id})
