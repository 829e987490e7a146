"""Relations: the pure aggregation rules, and /relations, /threads and bundled aggregations
through the room handlers on a real store (edits, threads, references, redactions)."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from fedserver.handlers.rooms.relations import RelationsHandler
from fedserver.relations.aggregation import (
    EventFacts,
    Relation,
    bundle,
    is_valid_replacement,
    latest_replacement,
    may_start_thread,
    parse_relation,
)
from tests.test_rooms_support import RoomsTestCase


def facts(event_id: str, *, sender: str = "@a:x", type: str = "m.room.message", ts: int = 1, state_key=None, **content: Any) -> EventFacts:
    return EventFacts(event_id, type, sender, ts, state_key, content)


class AggregationRulesTests(unittest.TestCase):
    """The pure rules of fedserver.relations.aggregation."""

    def test_parse_relation(self):
        """A relation needs m.relates_to with a string rel_type and an event id; rich
        replies (no rel_type) and malformed ones are not relations; annotation keys are
        kept."""
        self.assertEqual(parse_relation({"m.relates_to": {"rel_type": "m.thread", "event_id": "$r"}}),
                         Relation("m.thread", "$r", None))
        self.assertEqual(parse_relation({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$r", "key": "👍"}}),
                         Relation("m.annotation", "$r", "👍"))
        for bad in ({}, {"m.relates_to": {"m.in_reply_to": {"event_id": "$r"}}},
                    {"m.relates_to": {"rel_type": 3, "event_id": "$r"}}, {"m.relates_to": {"rel_type": "x", "event_id": "r"}},
                    {"m.relates_to": "no"}, {"m.relates_to": {"rel_type": "x", "event_id": "$" + "a" * 300}}, None):
            self.assertIsNone(parse_relation(bad), bad)

    def test_valid_replacements(self):
        """Spec "Validity of replacement events": same sender and type, no state key, the
        original not an edit, m.new_content present (encrypted edits cannot be checked)."""
        original = facts("$o", body="x")
        good = facts("$e", **{"m.new_content": {"body": "y"}})
        self.assertTrue(is_valid_replacement(original, good))
        self.assertFalse(is_valid_replacement(original, good._replace(sender="@b:x")))
        self.assertFalse(is_valid_replacement(original, good._replace(type="m.sticker")))
        self.assertFalse(is_valid_replacement(original, good._replace(state_key="")))
        self.assertFalse(is_valid_replacement(original._replace(state_key=""), good))
        self.assertFalse(is_valid_replacement(original, facts("$e", body="no new content")))
        edit_of_edit = facts("$o", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$z"}})
        self.assertFalse(is_valid_replacement(edit_of_edit, good))
        self.assertTrue(is_valid_replacement(facts("$o", type="m.room.encrypted"), facts("$e", type="m.room.encrypted")))

    def test_latest_replacement(self):
        """The most recent valid edit: largest origin_server_ts, then largest event id."""
        original = facts("$o")
        new = {"m.new_content": {"body": "n"}}
        edits = [facts("$b", ts=5, **new), facts("$a", ts=5, **new), facts("$c", ts=4, **new),
                 facts("$z", ts=9, sender="@other:x", **new)]
        self.assertEqual(latest_replacement(original, edits).event_id, "$b")
        self.assertIsNone(latest_replacement(original, []))

    def test_threads_and_bundle(self):
        """A thread may not start from an event with a relation; bundle() builds the
        spec's m.relations shapes and leaves out what has nothing."""
        self.assertTrue(may_start_thread({"body": "root"}))
        self.assertFalse(may_start_thread({"m.relates_to": {"rel_type": "m.thread", "event_id": "$r"}}))
        self.assertEqual(bundle(), {})
        self.assertEqual(
            bundle(replacement={"event_id": "$e"}, thread=({"event_id": "$t"}, 3, True), references=["$1", "$2"]),
            {
                "m.replace": {"event_id": "$e"},
                "m.thread": {"latest_event": {"event_id": "$t"}, "count": 3, "current_user_participated": True},
                "m.reference": {"chunk": [{"event_id": "$1"}, {"event_id": "$2"}]},
            },
        )


class RelationsHandlerTests(RoomsTestCase):
    """/relations, /threads and bundled aggregations on a real store and pipeline."""

    async def _set_up(self) -> None:
        await super()._set_up()
        self.relations = RelationsHandler(self.store, self.source, self.timeline)
        self.rooms.relations = self.relations

    async def send(self, requester, room_id: str, content: dict, type: str = "m.room.message") -> str:
        self._token_ids += 1
        return await self.rooms.send_event(requester, room_id, type, content, f"rel{self._token_ids}")

    async def test_edits_threads_references_bundled_and_listed(self):
        """Two edits: the newest is bundled (m.replace); three thread replies by two users:
        count 3, the newest as latest_event (with its own edit bundled), participation per
        user; references listed; /relations pages newest first with next_batch and
        filters by type; /threads lists the root; /messages and /event carry the bundles."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create(alice, preset="public_chat")
        await self.membership.join(bob.user_id, room)
        await self.membership.join(carol.user_id, room)
        root = await self.send_text(alice, room, "root")
        self.clock.advance(1)
        await self.send(alice, room, {"body": "* r1", "m.new_content": {"body": "r1"},
                                      "m.relates_to": {"rel_type": "m.replace", "event_id": root}})
        self.clock.advance(1)
        edit2 = await self.send(alice, room, {"body": "* r2", "m.new_content": {"body": "r2"},
                                              "m.relates_to": {"rel_type": "m.replace", "event_id": root}})
        await self.send(bob, room, {"body": "* not yours", "m.new_content": {"body": "x"},
                                    "m.relates_to": {"rel_type": "m.replace", "event_id": root}})
        thread = {"rel_type": "m.thread", "event_id": root}
        t1 = await self.send(bob, room, {"body": "t1", "m.relates_to": thread})
        t2 = await self.send(alice, room, {"body": "t2", "m.relates_to": thread})
        t3 = await self.send(bob, room, {"body": "t3", "m.relates_to": thread})
        self.clock.advance(1)
        t3_edit = await self.send(bob, room, {"body": "* t3!", "m.new_content": {"body": "t3!"},
                                              "m.relates_to": {"rel_type": "m.replace", "event_id": t3}})
        ref = await self.send(carol, room, {"body": "see", "m.relates_to": {"rel_type": "m.reference", "event_id": root}})

        served = await self.timeline.get_event(carol, room, root)
        rel = served["unsigned"]["m.relations"]
        self.assertEqual(rel["m.replace"]["event_id"], edit2)
        self.assertEqual(rel["m.replace"]["content"]["m.new_content"], {"body": "r2"})
        self.assertEqual(served["content"]["body"], "root")  # the original's content is left intact
        self.assertEqual(rel["m.thread"]["count"], 3)
        self.assertEqual(rel["m.thread"]["latest_event"]["event_id"], t3)
        self.assertEqual(rel["m.thread"]["latest_event"]["unsigned"]["m.relations"]["m.replace"]["event_id"], t3_edit)
        self.assertFalse(rel["m.thread"]["current_user_participated"])
        self.assertEqual(rel["m.reference"], {"chunk": [{"event_id": ref}]})
        for who in (alice, bob):
            mine = (await self.timeline.get_event(who, room, root))["unsigned"]["m.relations"]["m.thread"]
            self.assertTrue(mine["current_user_participated"], who.user_id)
        page = await self.timeline.messages(carol, room, limit=50)
        in_page = next(e for e in page["chunk"] if e["event_id"] == root)
        self.assertEqual(in_page["unsigned"]["m.relations"]["m.thread"]["count"], 3)

        all_rel = await self.relations.relations(carol, room, root)
        self.assertEqual(len(all_rel["chunk"]), 7)
        self.assertNotIn("next_batch", all_rel)
        threads_only = await self.relations.relations(carol, room, root, rel_type="m.thread", limit=2)
        self.assertEqual([e["event_id"] for e in threads_only["chunk"]], [t3, t2])
        more = await self.relations.relations(carol, room, root, rel_type="m.thread", from_token=threads_only["next_batch"], limit=2)
        self.assertEqual([e["event_id"] for e in more["chunk"]], [t1])
        self.assertEqual(more["prev_batch"], threads_only["next_batch"])
        forward = await self.relations.relations(carol, room, root, rel_type="m.thread", direction="f")
        self.assertEqual([e["event_id"] for e in forward["chunk"]], [t1, t2, t3])
        typed = await self.relations.relations(carol, room, root, rel_type="m.thread", event_type="m.sticker")
        self.assertEqual(typed["chunk"], [])
        self.assertNotIn("recursion_depth", typed)
        recursed = await self.relations.relations(carol, room, root, rel_type="m.replace", recurse=True)
        self.assertEqual(recursed["recursion_depth"], 3)
        deep = await self.relations.relations(carol, room, root, recurse=True)
        self.assertIn(t3_edit, [e["event_id"] for e in deep["chunk"]])  # an edit of a thread reply

        threads = await self.relations.threads(carol, room)
        self.assertEqual([e["event_id"] for e in threads["chunk"]], [root])
        self.assertEqual(threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 3)
        self.assertEqual((await self.relations.threads(carol, room, include="participated"))["chunk"], [])
        self.assertEqual(len((await self.relations.threads(bob, room, include="participated"))["chunk"]), 1)
        await self.assertMatrixError(self.relations.threads(carol, room, include="mine"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.relations.relations(carol, room, "$unknown"), 404, "M_NOT_FOUND")

    async def test_redacted_children_stop_counting(self):
        """A redacted edit falls back to the one before; a redacted thread reply stops
        counting (and stops being the latest); a redacted original gets no m.replace."""
        alice = await self.user("alice")
        room = await self.create(alice)
        root = await self.send_text(alice, room, "root")
        self.clock.advance(1)
        e1 = await self.send(alice, room, {"body": "* a", "m.new_content": {"body": "a"},
                                           "m.relates_to": {"rel_type": "m.replace", "event_id": root}})
        self.clock.advance(1)
        e2 = await self.send(alice, room, {"body": "* b", "m.new_content": {"body": "b"},
                                           "m.relates_to": {"rel_type": "m.replace", "event_id": root}})
        t1 = await self.send(alice, room, {"body": "t1", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
        t2 = await self.send(alice, room, {"body": "t2", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
        await self.rooms.redact(alice, room, e2, "r1")
        await self.rooms.redact(alice, room, t2, "r2")
        rel = (await self.timeline.get_event(alice, room, root))["unsigned"]["m.relations"]
        self.assertEqual(rel["m.replace"]["event_id"], e1)
        self.assertEqual((rel["m.thread"]["count"], rel["m.thread"]["latest_event"]["event_id"]), (1, t1))
        listed = await self.relations.relations(alice, room, root, rel_type="m.thread")
        self.assertEqual([e["event_id"] for e in listed["chunk"]], [t1])
        await self.rooms.redact(alice, room, root, "r3")
        rel = (await self.timeline.get_event(alice, room, root))["unsigned"].get("m.relations", {})
        self.assertNotIn("m.replace", rel)

    async def test_thread_and_annotation_checks_on_send(self):
        """A thread off an event with a relation is refused (400 M_UNKNOWN); a second
        identical annotation is refused (400 M_DUPLICATE_ANNOTATION) until the first is
        redacted; another key is fine."""
        alice = await self.user("alice")
        room = await self.create(alice)
        root = await self.send_text(alice, room, "root")
        reply = await self.send(alice, room, {"body": "t", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
        await self.assertMatrixError(
            self.send(alice, room, {"body": "x", "m.relates_to": {"rel_type": "m.thread", "event_id": reply}}), 400, "M_UNKNOWN")
        like = {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}}
        first = await self.send(alice, room, like, type="m.reaction")
        await self.assertMatrixError(self.send(alice, room, like, type="m.reaction"), 400, "M_DUPLICATE_ANNOTATION")
        await self.send(alice, room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "🎉"}},
                        type="m.reaction")
        await self.rooms.redact(alice, room, first, "undo")
        await self.send(alice, room, like, type="m.reaction")

    async def test_relations_follow_visibility(self):
        """A thread reply the user may not see (said after they left) is neither listed
        nor the bundled latest event."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create(alice, preset="public_chat", initial_state=[
            {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}])
        await self.membership.join(bob.user_id, room)
        root = await self.send_text(alice, room, "root")
        t1 = await self.send(alice, room, {"body": "t1", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
        await self.membership.leave(bob.user_id, room)
        await self.send(alice, room, {"body": "t2", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
        listed = await self.relations.relations(bob, room, root)
        self.assertEqual([e["event_id"] for e in listed["chunk"]], [t1])
        rel = (await self.timeline.get_event(bob, room, root))["unsigned"]["m.relations"]["m.thread"]
        self.assertEqual(rel["latest_event"]["event_id"], t1)

    async def test_relations_indexed_for_events_stored_before(self):
        """Events stored before relations were indexed (schema 006) are indexed once by
        catch_up, from the newest down."""
        alice = await self.user("alice")
        room = await self.create(alice)
        root = await self.send_text(alice, room, "root")
        t1 = await self.send(alice, room, {"body": "t1", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})

        def forget(txn):
            txn.execute("DELETE FROM event_relations")
            top = txn.execute("SELECT MAX(event_nid) FROM events").fetchone()[0]
            txn.execute("INSERT INTO room_indexers (name, position) VALUES ('relations_catchup', ?)", (top,))

        await self.store.run_write(forget)
        self.assertEqual((await self.relations.relations(alice, room, root))["chunk"], [])
        self.assertEqual(await self.store.relations.catch_up(batch=2), 1)
        self.assertEqual([e["event_id"] for e in (await self.relations.relations(alice, room, root))["chunk"]], [t1])
        self.assertEqual(await self.store.relations.catch_up(), 0)
