"""Tests for fedserver.handlers.federation.visibility: the pure history visibility rules for servers,
on plain data."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fedserver.events.redaction import redact
from fedserver.handlers.federation.visibility import (
    HISTORY_VISIBILITY_KEY,
    INVITED,
    JOINED,
    SHARED,
    WORLD_READABLE,
    ServerView,
    ServerVisibility,
    federation_pdu,
    history_visibility,
    is_visible,
    needs_state_after,
    summarise_state,
)
from fedserver.room_versions import SPEC_ROOM_VERSIONS, V10
from tests.test_storage_support import make_event

PEER = "peer.test"
ROOM = "!r:us.test"


def hv_event(value, rv=V10):
    return make_event(rv, ROOM, "m.room.history_visibility", "@alice:us.test", {"history_visibility": value}, "")


def member(user, membership, rv=V10):
    return make_event(rv, ROOM, "m.room.member", user, {"membership": membership, "displayname": "x"}, user)


def message(rv=V10):
    return make_event(rv, ROOM, "m.room.message", "@alice:us.test", {"body": "hello", "msgtype": "m.text"})


def state_of(*events):
    """(state map, events by id) for a list of state events."""
    return {e.state_tuple: e.event_id for e in events}, {e.event_id: e for e in events}


class HistoryVisibilityValueTests(SynchronousTestCase):
    """Reading the m.room.history_visibility value."""

    def test_known_values(self):
        """Each of the four spec values is read as itself."""
        for value in (WORLD_READABLE, SHARED, INVITED, JOINED):
            self.assertEqual(history_visibility(hv_event(value)), value)

    def test_default_and_unknown_are_shared(self):
        """No event, an unknown value, a non-string value or no value: shared (spec:
        "if no history_visibility is set, or if the value is not understood")."""
        self.assertEqual(history_visibility(None), SHARED)
        for value in ("secret", "Joined", 1, None, ["joined"]):
            self.assertEqual(history_visibility(hv_event(value)), SHARED, value)
        empty = make_event(V10, ROOM, "m.room.history_visibility", "@alice:us.test", {}, "")
        self.assertEqual(history_visibility(empty), SHARED)


class ServerViewTests(SynchronousTestCase):
    """Rules 1-5 for a server that has a user joined to the room now."""

    def test_rules(self):
        """world_readable and shared always allow; joined needs a joined user at the
        event; invited needs a joined or invited user; leave, ban and knock never
        count."""
        table = [
            (WORLD_READABLE, set(), True),
            (SHARED, set(), True),
            (SHARED, {"leave"}, True),
            (JOINED, {"join"}, True),
            (JOINED, {"invite"}, False),
            (JOINED, {"leave", "ban", "knock"}, False),
            (JOINED, set(), False),
            (INVITED, {"invite"}, True),
            (INVITED, {"join"}, True),
            (INVITED, {"knock", "leave"}, False),
            (INVITED, set(), False),
            (JOINED, {"leave", "join"}, True),  # one of several users is joined
        ]
        for visibility, memberships, allowed in table:
            self.assertEqual(ServerView(visibility, frozenset(memberships)).allows(), allowed, (visibility, memberships))

    def test_server_not_joined_now(self):
        """A server reading a world_readable room without a member now gets no rule 3:
        shared history is hidden from it unless one of its users was joined (or, under
        invited, invited) at the event; world_readable history is visible."""
        table = [
            (WORLD_READABLE, set(), True),
            (SHARED, set(), False),
            (SHARED, {"leave"}, False),
            (SHARED, {"join"}, True),
            (INVITED, {"invite"}, True),
            (JOINED, set(), False),
        ]
        for visibility, memberships, allowed in table:
            view = ServerView(visibility, frozenset(memberships))
            self.assertEqual(view.allows(joined_now=False), allowed, (visibility, memberships))


class SummariseStateTests(SynchronousTestCase):
    """Reducing a state to a ServerView."""

    def test_memberships_of_the_server_only(self):
        """Only users of exactly that server count: not other servers, not look-alike
        domains (peer.test.evil, evil.peer.test), not users of a peer.test port."""
        events = [
            hv_event(JOINED),
            member("@bob:peer.test", "invite"),
            member("@carol:peer.test", "leave"),
            member("@eve:peer.test.evil", "join"),
            member("@eve:evil.peer.test", "join"),
            member("@eve:peer.test:8448", "join"),
            member("@alice:us.test", "join"),
        ]
        state, by_id = state_of(*events)
        view = summarise_state(state, by_id, PEER)
        self.assertEqual(view, ServerView(JOINED, frozenset({"invite", "leave"})))
        users = ["@bob:peer.test", "@carol:peer.test", "@eve:peer.test.evil", "@nobody:peer.test"]
        self.assertEqual(summarise_state(state, by_id, PEER, users), view)

    def test_missing_events_count_as_absent(self):
        """State pointing at events the caller did not load: absent (shared, no
        membership), not an error."""
        state = {HISTORY_VISIBILITY_KEY: "$hv", ("m.room.member", "@bob:peer.test"): "$m"}
        self.assertEqual(summarise_state(state, {}, PEER), ServerView(SHARED, frozenset()))


class BeforeOrAfterTests(SynchronousTestCase):
    """The spec's exceptions for history visibility events and a user's own membership."""

    def test_history_visibility_event_before_or_after(self):
        """A history visibility event is visible if the view before OR after allows; a
        message only looks at the state before it."""
        closed = ServerView(JOINED, frozenset())
        open_ = ServerView(WORLD_READABLE, frozenset())
        hv = hv_event(WORLD_READABLE)
        self.assertTrue(needs_state_after(hv, PEER))
        self.assertTrue(is_visible(hv, closed, open_, PEER))
        self.assertTrue(is_visible(hv, open_, closed, PEER))
        self.assertFalse(is_visible(hv, closed, closed, PEER))
        msg = message()
        self.assertFalse(needs_state_after(msg, PEER))
        self.assertFalse(is_visible(msg, closed, open_, PEER))

    def test_own_membership_before_or_after(self):
        """The server's own user's join is visible under joined (membership after is
        join), and so is their leave (membership before is join); another server's
        user's join is judged on the state before only."""
        closed = ServerView(JOINED, frozenset())
        joined = ServerView(JOINED, frozenset({"join"}))
        left = ServerView(JOINED, frozenset({"leave"}))
        own_join = member("@bob:peer.test", "join")
        own_leave = member("@bob:peer.test", "leave")
        other_join = member("@zed:other.test", "join")
        self.assertTrue(is_visible(own_join, closed, joined, PEER))
        self.assertTrue(is_visible(own_leave, joined, left, PEER))
        self.assertFalse(is_visible(other_join, closed, joined, PEER))
        self.assertFalse(is_visible(own_join, closed, None, PEER))


class ServerVisibilityTests(SynchronousTestCase):
    """Memoised evaluation over many events."""

    def test_each_state_summarised_once(self):
        """300 events over 3 states summarise 3 states; a state given as a callable is
        only built on a memo miss; the state after is only looked at when needed."""
        s1, e1 = state_of(hv_event(JOINED), member("@bob:peer.test", "join"))
        s2, e2 = state_of(hv_event(JOINED))
        s3, e3 = state_of(hv_event(SHARED))
        events = {**e1, **e2, **e3}
        vis = ServerVisibility(PEER, events)
        built = []

        def lazy(state, name):
            def make():
                built.append(name)
                return state
            return make

        results = []
        for i in range(300):
            key, state = [(1, s1), (2, s2), (3, s3)][i % 3]
            results.append(vis.is_visible(message(), key, lazy(state, key), 99, lazy({}, 99)))
        self.assertEqual(results, [True, False, True] * 100)
        self.assertEqual(vis.summarised, 3)
        self.assertEqual(sorted(built), [1, 2, 3])

    def test_after_consulted_for_own_membership(self):
        """Through the memo, bob's join under joined is visible via the state after it."""
        before, e1 = state_of(hv_event(JOINED))
        join = member("@bob:peer.test", "join")
        after = {**before, join.state_tuple: join.event_id}
        vis = ServerVisibility(PEER, {**e1, join.event_id: join}, ["@bob:peer.test"])
        self.assertTrue(vis.is_visible(join, "b", before, "a", after))
        self.assertFalse(vis.is_visible(message(), "b", before, "a", after))


class FederationPduTests(SynchronousTestCase):
    """What is served: the PDU, or its redacted copy."""

    def test_redacted_copy_per_room_version(self):
        """Visible events are served as stored; hidden ones as the redaction algorithm of
        their room version leaves them, keeping hashes and signatures-bearing fields."""
        for rv in SPEC_ROOM_VERSIONS:
            if rv.room_id_from_create_event:
                room = "!" + "a" * 43
            else:
                room = ROOM
            e = make_event(rv, room, "m.room.member", "@bob:peer.test",
                           {"membership": "join", "displayname": "Bob"}, "@bob:peer.test")
            self.assertIs(federation_pdu(e, True), e.pdu)
            hidden = federation_pdu(e, False)
            self.assertEqual(hidden, redact(e.pdu, rv))
            self.assertEqual(hidden["content"], {"membership": "join"})
            self.assertEqual(hidden["hashes"], e.pdu["hashes"])
            self.assertEqual(e.pdu["content"]["displayname"], "Bob")  # the stored event is untouched
