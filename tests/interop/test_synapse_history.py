"""History, relations and room upgrades across fedserver and a real Synapse, driven only
through both client APIs: a Synapse user's 120 messages scrolled back through on fedserver
(/backfill), in order, no duplicates, no gaps, and the reverse; a ``joined`` room shows
nothing before the join; an edit, a reaction and a thread reply from Synapse aggregated on
fedserver; a room upgrade started on each side and followed from the other.

One Synapse and one fedserver for the module (tests/interop/peers.py); skipped without
``FEDSERVER_SYNAPSE_PYTHON`` unless ``FEDSERVER_INTEROP=require``.
"""

from __future__ import annotations

import uuid
from typing import Any, Optional

from twisted.trial.unittest import TestCase

from tests.interop.peers import HTTPError, PeerPair, wait_until
from tests.interop.test_synapse_rooms import CONVERGE, Peer, q
from tests.jsclient import account, node_or_skip, run_scenario

_pair = PeerPair("interop-history-")
_peers: dict[str, Peer] = {}


def peers() -> tuple[Peer, Peer]:
    if not _peers:
        synapse, fedserver = _pair.get()
        _peers.update(synapse=Peer(synapse), fedserver=Peer(fedserver))
    return _peers["synapse"], _peers["fedserver"]


def v1(peer: Peer, path: str, *, as_user: str, params: Optional[dict] = None) -> Any:
    return peer.server.client("GET", "/_matrix/client/v1" + path, as_user=as_user, params=params)


def scroll_back(peer: Peer, user: str, room: str, start: Optional[str] = None, limit: int = 20) -> list[dict]:
    """Every event /messages gives paging back from ``start`` until there is no ``end``,
    oldest first."""
    events: list[dict] = []
    token = start
    for _ in range(200):
        params: dict[str, Any] = {"dir": "b", "limit": limit}
        if token:
            params["from"] = token
        page = peer.call("GET", f"/rooms/{q(room)}/messages", as_user=user, params=params)
        events.extend(page["chunk"])
        if "end" not in page or not page["chunk"] and page["end"] == token:
            break
        token = page["end"]
    return list(reversed(events))


def texts(events: list[dict]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message" and "body" in e.get("content", {})]


class HistoryAcrossServers(TestCase):
    timeout = 600

    def setUp(self) -> None:
        self.synapse, self.fedserver = peers()

    def send(self, peer: Peer, user: str, room: str, content: dict, type_: str = "m.room.message") -> str:
        return peer.call("PUT", f"/rooms/{q(room)}/send/{type_}/{uuid.uuid4().hex}", content, as_user=user)["event_id"]

    def test_history_before_the_join_both_ways(self):
        """A Synapse user says 120 things in a ``shared`` room; a fedserver user joins,
        /sync shows a limited timeline, and paging back from its prev_batch returns all
        120 in order, once each, down to the room's creation. The same the other way: a
        Synapse user joining a fedserver room scrolls back through our history."""
        for host, guest in ((self.synapse, self.fedserver), (self.fedserver, self.synapse)):
            h, g = host.user("talker"), guest.user("reader")
            room = host.create_room(h, "12", preset="public_chat", name="History")
            said = [f"{host.kind} {i}" for i in range(120)]
            for body in said:
                host.send_text(h, room, body)
            guest.join(g, room, via=[host.name])
            sync = guest.sync(g)
            timeline = sync["rooms"]["join"][room]["timeline"]
            if guest is self.fedserver:
                self.assertTrue(timeline["limited"])
            events = scroll_back(guest, g, room, timeline["prev_batch"])
            ids = [e["event_id"] for e in events]
            self.assertEqual(len(ids), len(set(ids)), "duplicates")
            got = texts(events)
            self.assertEqual(got, said, f"{guest.kind} reading {host.kind}'s room")
            self.assertEqual(events[0]["type"], "m.room.create")

    def test_joined_room_shows_nothing_before_the_join(self):
        """In a Synapse room with history visibility ``joined``, the fedserver user sees
        no message from before their join, and what is said after."""
        h, g = self.synapse.user("keeper"), self.fedserver.user("newcomer")
        room = self.synapse.create_room(h, "12", preset="public_chat", initial_state=[
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}])
        for i in range(20):
            self.synapse.send_text(h, room, f"before {i}")
        self.fedserver.join(g, room, via=[self.synapse.name])
        self.synapse.send_text(h, room, "after")
        wait_until(lambda: "after" in self.fedserver.bodies(g, room), CONVERGE, "the message after the join")
        self.assertEqual(texts(scroll_back(self.fedserver, g, room)), ["after"])

    def test_edit_reaction_thread_from_synapse_aggregated(self):
        """A Synapse user edits a message, reacts to it and replies in its thread: on
        fedserver the message carries the edit (m.replace) and the thread (count,
        latest_event) in unsigned.m.relations, /relations lists all three, /threads
        lists the root; a reply from fedserver in the thread is counted on Synapse."""
        h, g = self.synapse.user("author"), self.fedserver.user("viewer")
        room = self.synapse.create_room(h, "12", preset="public_chat")
        self.fedserver.join(g, room, via=[self.synapse.name])
        root = self.synapse.send_text(h, room, "original")
        edit = self.send(self.synapse, h, room, {"msgtype": "m.text", "body": "* edited", "m.new_content": {
            "msgtype": "m.text", "body": "edited"}, "m.relates_to": {"rel_type": "m.replace", "event_id": root}})
        reaction = self.send(self.synapse, h, room, {"m.relates_to": {
            "rel_type": "m.annotation", "event_id": root, "key": "👍"}}, "m.reaction")
        reply = self.send(self.synapse, h, room, {"msgtype": "m.text", "body": "in thread", "m.relates_to": {
            "rel_type": "m.thread", "event_id": root}})
        wait_until(lambda: "in thread" in self.fedserver.bodies(g, room), CONVERGE, "the thread reply on fedserver")
        served = self.fedserver.call("GET", f"/rooms/{q(room)}/event/{q(root)}", as_user=g)
        rel = served["unsigned"]["m.relations"]
        self.assertEqual(rel["m.replace"]["event_id"], edit)
        self.assertEqual((rel["m.thread"]["count"], rel["m.thread"]["latest_event"]["event_id"]), (1, reply))
        self.assertFalse(rel["m.thread"]["current_user_participated"])
        listed = v1(self.fedserver, f"/rooms/{q(room)}/relations/{q(root)}", as_user=g)
        self.assertEqual({e["event_id"] for e in listed["chunk"]}, {edit, reaction, reply})
        reactions = v1(self.fedserver, f"/rooms/{q(room)}/relations/{q(root)}/m.annotation/m.reaction", as_user=g)
        self.assertEqual([e["event_id"] for e in reactions["chunk"]], [reaction])
        threads = v1(self.fedserver, f"/rooms/{q(room)}/threads", as_user=g)
        self.assertEqual([e["event_id"] for e in threads["chunk"]], [root])
        ours = self.send(self.fedserver, g, room, {"msgtype": "m.text", "body": "from fedserver", "m.relates_to": {
            "rel_type": "m.thread", "event_id": root}})

        def counted_on_synapse():
            ev = self.synapse.call("GET", f"/rooms/{q(room)}/event/{q(root)}", as_user=h)
            thread = ev.get("unsigned", {}).get("m.relations", {}).get("m.thread", {})
            return thread.get("count") == 2 and thread["latest_event"]["event_id"] == ours

        wait_until(counted_on_synapse, CONVERGE, "Synapse to count fedserver's thread reply")
        mine = self.fedserver.call("GET", f"/rooms/{q(room)}/event/{q(root)}", as_user=g)
        self.assertTrue(mine["unsigned"]["m.relations"]["m.thread"]["current_user_participated"])

    def test_matrix_js_sdk_scrolls_back_across_the_join(self):
        """matrix-js-sdk on fedserver, lazy-loading members as Element does, joins a
        Synapse room after 60 messages (one of them edited, with a display name set) and
        scrolls back to the room's creation: every message once, in order, the edit
        applied, the writer known by name."""
        node_or_skip()
        h = self.synapse.user("jswriter")
        self.synapse.call("PUT", f"/profile/{q(h)}/displayname", {"displayname": "Writer"}, as_user=h)
        room = self.synapse.create_room(h, "12", preset="public_chat", name="js history")
        said = [f"js {i}" for i in range(60)]
        ids = [self.synapse.send_text(h, room, body) for body in said]
        self.send(self.synapse, h, room, {"msgtype": "m.text", "body": "* js 10 (edited)", "m.new_content": {
            "msgtype": "m.text", "body": "js 10 (edited)"}, "m.relates_to": {"rel_type": "m.replace", "event_id": ids[10]}})
        reader = self.fedserver.user("jsreader")
        out = run_scenario("history", {"b": account(self.fedserver.server, reader), "roomId": room,
                                       "via": self.synapse.name, "editedId": ids[10]})
        self.assertEqual(out["bodies"], said)
        self.assertTrue(out["createSeen"])
        self.assertEqual(out["editedBody"], "js 10 (edited)")
        self.assertEqual(out["writerName"], "Writer")

    def _state_content(self, peer: Peer, user: str, room: str, type_: str) -> Optional[dict]:
        return peer.get_state_event(user, room, type_)

    def test_upgrade_started_on_each_side(self):
        """A room upgraded on one server is followed from the other: the tombstone
        arrives, the other server's user joins the replacement room (via the tombstone's
        sender's server), whose create event names the predecessor; a fedserver user's
        room tags follow them into Synapse's replacement room."""
        for host, guest in ((self.fedserver, self.synapse), (self.synapse, self.fedserver)):
            h, g = host.user("upgrader"), guest.user("follower")
            room = host.create_room(h, "11", preset="public_chat", name="Before the upgrade")
            guest.join(g, room, via=[host.name])
            wait_until(lambda: host.membership(h, room, g) == "join", CONVERGE, "the guest's join")
            if guest is self.fedserver:
                guest.call("PUT", f"/user/{q(g)}/rooms/{q(room)}/account_data/m.tag", {"tags": {"u.work": {}}}, as_user=g)
            new = host.call("POST", f"/rooms/{q(room)}/upgrade", {"new_version": "12"}, as_user=h)["replacement_room"]
            tomb = wait_until(lambda: self._state_content(guest, g, room, "m.room.tombstone"), CONVERGE,
                              f"the tombstone on {guest.kind}")
            self.assertEqual(tomb["replacement_room"], new)
            guest.join(g, new, via=[host.name])
            create = self._state_content(guest, g, new, "m.room.create")
            self.assertEqual(create["predecessor"]["room_id"], room)
            self.assertEqual(create["room_version"], "12")
            self.assertEqual(self._state_content(guest, g, new, "m.room.name"), {"name": "Before the upgrade"})
            wait_until(lambda: host.membership(h, new, g) == "join", CONVERGE, "the follower in the new room")
            if guest is self.fedserver:
                tags = guest.call("GET", f"/user/{q(g)}/rooms/{q(new)}/account_data/m.tag", as_user=g)
                self.assertEqual(tags, {"tags": {"u.work": {}}})
            # The old room is quiet: a plain member may no longer speak there.
            wait_until(lambda: (self._state_content(guest, g, room, "m.room.power_levels") or {}).get("events_default") == 50,
                       CONVERGE, f"the restricted power levels on {guest.kind}")
            try:
                guest.send_text(g, room, "still here?")
                spoke = True
            except HTTPError as e:
                spoke = False
                self.assertEqual(e.status, 403)
            self.assertFalse(spoke, f"{guest.kind} let a member speak in the tombstoned room")
