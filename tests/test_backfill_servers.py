"""History across two whole fedservers on loopback TLS: a user of B joins a room of A and
pages back through what was said before the join (fetched with /backfill), as history
visibility allows; /sync marks the timeline limited across the join."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import TestCase

from fedserver.handlers.client.accounts import Requester
from fedserver.testing import loopback_config, start_server
from fedserver.service import FedserverService


class Server:
    """One running fedserver and its users, driven through its room handlers."""

    def __init__(self, svc: FedserverService) -> None:
        self.svc = svc
        self.name = svc.config.server_name
        self._tokens = 0
        self._txn = 0

    @property
    def rooms(self) -> Any:
        return self.svc.rooms

    async def user(self, localpart: str) -> Requester:
        user_id = f"@{localpart}:{self.name}"
        await self.svc.store.accounts.create_user(user_id, None)
        self._tokens += 1
        return Requester(user_id, "DEV", self._tokens)

    async def say(self, requester: Requester, room_id: str, body: str) -> str:
        self._txn += 1
        return await self.rooms.rooms.send_event(
            requester, room_id, "m.room.message", {"msgtype": "m.text", "body": body}, f"t{self._txn}"
        )

    async def page_all(self, requester: Requester, room_id: str, start: Any = None, limit: int = 10) -> tuple[list[dict], int]:
        """Page back with /messages until there is no ``end``; the events, oldest first,
        and the number of pages."""
        events: list[dict] = []
        token = start
        pages = 0
        while True:
            page = await self.rooms.timeline.messages(requester, room_id, from_token=token, limit=limit)
            pages += 1
            events.extend(page["chunk"])
            if "end" not in page or pages > 200:
                break
            token = page["end"]
        return list(reversed(events)), pages


def bodies(events: list[dict]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message" and "body" in e["content"]]


class BackfillTwoServersTests(TestCase):
    """Two fedservers named by loopback IP literals federating over real TLS."""

    timeout = 120

    async def start(self) -> Server:
        config = loopback_config(os.path.abspath(self.mktemp()), federation_client_timeout=10)
        return Server(await start_server(self, config))

    async def test_shared_history_paged_back_in_order_without_gaps(self):
        """120 messages said on A before B's user joins a ``shared`` room: paging back
        from B's /sync ``prev_batch`` (the timeline is ``limited``) returns every one, in
        order, once, with the room's creation at the start; each /backfill brings up to
        100 events, so the 13 pages of 10 cost 2 requests; /sync never shows the
        backfilled events, and a second pass is served from what B now holds."""
        a, b = await self.start(), await self.start()
        alice, bob = await a.user("alice"), await b.user("bob")
        room = (await a.rooms.rooms.create_room(alice, {"preset": "public_chat", "name": "History"}))["room_id"]
        said = [f"m{i}" for i in range(120)]
        for body in said:
            await a.say(alice, room, body)
        await b.rooms.membership.join(bob.user_id, room, server_names=[a.name])
        sync = await b.rooms.sync.sync(bob)
        timeline = sync["rooms"]["join"][room]["timeline"]
        self.assertTrue(timeline["limited"])
        self.assertEqual([e["type"] for e in timeline["events"]], ["m.room.member"])
        events, pages = await b.page_all(bob, room, timeline["prev_batch"])
        self.assertEqual(bodies(events), said)
        ids = [e["event_id"] for e in events]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(events[0]["type"], "m.room.create")
        self.assertEqual((b.svc.backfill.requests, b.svc.backfill.state_requests), (2, 0))
        # Nothing of the history enters the /sync stream.
        again = await b.rooms.sync.sync(bob, since=sync["next_batch"])
        self.assertNotIn(room, again["rooms"]["join"])
        fresh = await b.rooms.sync.sync(bob)
        self.assertEqual([e["type"] for e in fresh["rooms"]["join"][room]["timeline"]["events"]], ["m.room.member"])
        # Held now: paging again asks nobody.
        events2, _ = await b.page_all(bob, room, timeline["prev_batch"], limit=50)
        self.assertEqual(bodies(events2), said)
        self.assertEqual(b.svc.backfill.requests, 2)
        # /context across the join boundary, and the state at a backfilled event.
        m59 = next(e for e in events if e["content"].get("body") == "m59")
        ctx = await b.rooms.timeline.context(bob, room, m59["event_id"], limit=4)
        self.assertEqual(bodies(ctx["events_before"]), ["m58", "m57"])
        self.assertEqual(bodies(ctx["events_after"]), ["m60", "m61"])
        self.assertIn(alice.user_id, [e["state_key"] for e in ctx["state"] if e["type"] == "m.room.member"])
        self.assertNotIn(bob.user_id, [e["state_key"] for e in ctx["state"] if e["type"] == "m.room.member"])

    async def test_state_changes_in_history_are_placed_right(self):
        """A rename in the middle of 300 messages: the page of history holding it cannot
        carry the room's state back past it (m.room.name is no auth event), so B asks
        for that state once with /state_ids; /context then shows each message with the
        name it was said under, and everything is paged back in order."""
        a, b = await self.start(), await self.start()
        alice, bob = await a.user("alice"), await b.user("bob")
        room = (await a.rooms.rooms.create_room(alice, {"preset": "public_chat", "name": "Before"}))["room_id"]
        said = [f"b{i}" for i in range(150)]
        for body in said:
            await a.say(alice, room, body)
        await a.rooms.rooms.set_state(alice, room, "m.room.name", "", {"name": "After"})
        later = [f"a{i}" for i in range(150)]
        for body in later:
            await a.say(alice, room, body)
        await b.rooms.membership.join(bob.user_id, room, server_names=[a.name])
        events, _ = await b.page_all(bob, room, limit=30)
        self.assertEqual(bodies(events), said + later)
        self.assertEqual(b.svc.backfill.state_requests, 1)
        by_body = {e["content"].get("body"): e["event_id"] for e in events}

        async def name_at(body: str) -> str:
            ctx = await b.rooms.timeline.context(bob, room, by_body[body], limit=0)
            return next(e["content"]["name"] for e in ctx["state"] if e["type"] == "m.room.name")

        self.assertEqual([await name_at(x) for x in ("b0", "b149", "a0", "a149")], ["Before", "Before", "After", "After"])

    async def test_visibility_changes_in_history(self):
        """``joined`` then ``shared``: B's user sees what was said once the room became
        ``shared``, not before."""
        a, b = await self.start(), await self.start()
        alice, bob = await a.user("alice"), await b.user("bob")
        room = (await a.rooms.rooms.create_room(alice, {"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]}))["room_id"]
        for i in range(5):
            await a.say(alice, room, f"hidden {i}")
        await a.rooms.rooms.set_state(alice, room, "m.room.history_visibility", "", {"history_visibility": "shared"})
        for i in range(5):
            await a.say(alice, room, f"shown {i}")
        await b.rooms.membership.join(bob.user_id, room, server_names=[a.name])
        events, _ = await b.page_all(bob, room)
        self.assertEqual(bodies(events), [f"shown {i}" for i in range(5)])

    async def test_joined_history_is_not_shown(self):
        """In a ``joined`` room B's user sees nothing said before the join (A serves those
        events redacted, B shows none of them) and paging ends (no ``end``)."""
        a, b = await self.start(), await self.start()
        alice, bob = await a.user("alice"), await b.user("bob")
        room = (await a.rooms.rooms.create_room(alice, {"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]}))["room_id"]
        for i in range(30):
            await a.say(alice, room, f"secret {i}")
        await b.rooms.membership.join(bob.user_id, room, server_names=[a.name])
        await a.say(alice, room, "after the join")
        events, pages = await b.page_all(bob, room)
        self.assertEqual(bodies(events), ["after the join"])
        self.assertEqual((events[-2]["type"], events[-2]["state_key"]), ("m.room.member", bob.user_id))
        self.assertLess(pages, 10)

    async def test_invited_history_from_the_invite(self):
        """In an ``invited`` room B's user sees what was said from their invite on, not
        before."""
        a, b = await self.start(), await self.start()
        alice, bob = await a.user("alice"), await b.user("bob")
        room = (await a.rooms.rooms.create_room(alice, {"preset": "private_chat", "initial_state": [
            {"type": "m.room.history_visibility", "content": {"history_visibility": "invited"}}]}))["room_id"]
        await a.say(alice, room, "before the invite")
        await a.rooms.membership.invite(alice.user_id, room, bob.user_id)
        await a.say(alice, room, "after the invite")
        await b.rooms.membership.join(bob.user_id, room, server_names=[a.name])
        events, _ = await b.page_all(bob, room)
        self.assertEqual(bodies(events), ["after the invite"])

    async def test_history_server_down_answers_with_what_is_held(self):
        """HOSTILE row 38: the room's only other server is down: /messages answers within
        the timeout with what B holds and an ``end`` token to try again."""
        a, b = await self.start(), await self.start()
        alice, bob = await a.user("alice"), await b.user("bob")
        room = (await a.rooms.rooms.create_room(alice, {"preset": "public_chat"}))["room_id"]
        for i in range(5):
            await a.say(alice, room, f"m{i}")
        await b.rooms.membership.join(bob.user_id, room, server_names=[a.name])
        await a.svc.stopService()
        b.svc.backfill.timeout = 2.0
        page = await b.rooms.timeline.messages(bob, room, limit=10)
        self.assertEqual([e["type"] for e in page["chunk"]], ["m.room.member"])
        self.assertIn("end", page)
        again = await b.rooms.timeline.messages(bob, room, from_token=page["end"], limit=10)
        self.assertEqual(again["chunk"], [])
        self.assertIn("end", again)
        await b.svc.backfill.pending()
