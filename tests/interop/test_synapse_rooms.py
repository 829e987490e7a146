"""Rooms across servers with a real Synapse, for room versions 10, 11 and 12, in both
directions: joins by alias, invites accepted and rejected, messages, leave, kick, ban,
power levels, knock, restricted joins and a matrix-nio client on fedserver.

Every scenario is driven only through the client-server API of the two servers (users of
both servers act in a room hosted on one of them) and ends by checking that both servers
hold the same current state of the room: the sets of ``(type, state_key, event_id)`` from
``GET /rooms/{roomId}/state`` on both sides, polled until they converge.

Both servers run as child processes (tests/interop/peers.py), started once for this module
and shared by its tests; each test makes its own users and rooms. Skipped without
``FEDSERVER_SYNAPSE_PYTHON`` unless ``FEDSERVER_INTEROP=require``.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
import uuid
from typing import Any, Iterable, Optional
from urllib.parse import quote

from twisted.trial.unittest import TestCase

from tests.interop.peers import (
    HTTPError,
    PeerPair,
    PeerUnavailable,
    Synapse,
    unavailable,
    wait_until,
)

#: Seconds to wait for anything to cross between the servers. Every wait is bounded
#: (this, or the 60 s of a request), so a hung scenario fails instead of blocking CI.
CONVERGE = 30

_peers: dict[str, Any] = {}
_names = itertools.count(1)


def q(value: str) -> str:
    """``value`` quoted for a URL path segment."""
    return quote(value, safe="")


def interop_base() -> str:
    """A fresh directory for servers' files (under trial's _trial_temp, cleaned next run)."""
    return tempfile.mkdtemp(prefix="interop-rooms-", dir=os.getcwd())


_pair = PeerPair("interop-rooms-")


def peers() -> tuple["Peer", "Peer"]:
    """Synapse and fedserver, started on first use (once per test process)."""
    if not _peers:
        synapse, fedserver = _pair.get()
        _peers.update(synapse=Peer(synapse), fedserver=Peer(fedserver))
    return _peers["synapse"], _peers["fedserver"]



def _run_on_own_loop(make: Any) -> Any:
    """Run the coroutine ``make()`` to its end on an asyncio loop of its own, in a new
    thread: this thread may have a loop marked as running already (Playwright's
    synchronous API does while the browser tests' shared Chromium is up), and
    ``asyncio.run`` refuses to start inside one."""
    import asyncio
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(make())
        except BaseException as e:  # handed to the test's thread, raised there
            box["error"] = e

    thread = threading.Thread(target=target, name="matrix-nio", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]

class Peer:
    """One of the two servers, seen only through its client-server API."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.kind = "synapse" if isinstance(server, Synapse) else "fedserver"

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"

    @property
    def name(self) -> str:
        return self.server.server_name

    def user(self, prefix: str) -> str:
        """A new user of this server (a unique localpart starting with ``prefix``)."""
        localpart = f"{prefix}{next(_names)}"
        if isinstance(self.server, Synapse):
            return self.server.register(localpart)
        return self.server.admin_user(localpart)

    def call(self, method: str, path: str, body: Any = None, *, as_user: str, params: Optional[dict] = None) -> Any:
        return self.server.client(method, "/_matrix/client/v3" + path, body, as_user=as_user, params=params)

    # -- rooms --------------------------------------------------------------------------------

    def create_room(self, user: str, version: str, **body: Any) -> str:
        return self.call("POST", "/createRoom", {"room_version": version, **body}, as_user=user)["room_id"]

    def join(self, user: str, room: str, via: Iterable[str] = ()) -> str:
        params = {"server_name": list(via)} if via else None
        return self.call("POST", "/join/" + q(room), {}, as_user=user, params=params)["room_id"]

    def send_text(self, user: str, room: str, body: str) -> str:
        content = {"msgtype": "m.text", "body": body}
        return self.call("PUT", f"/rooms/{q(room)}/send/m.room.message/{uuid.uuid4().hex}", content,
                         as_user=user)["event_id"]

    def put_state(self, user: str, room: str, type_: str, content: dict, state_key: str = "") -> str:
        return self.call("PUT", f"/rooms/{q(room)}/state/{q(type_)}/{q(state_key)}", content,
                         as_user=user)["event_id"]

    def get_state_event(self, user: str, room: str, type_: str, state_key: str = "") -> Optional[dict]:
        """A state event's content, or ``None`` if the room has no such state."""
        try:
            return self.call("GET", f"/rooms/{q(room)}/state/{q(type_)}/{q(state_key)}", as_user=user)
        except HTTPError as e:
            if e.status == 404:
                return None
            raise

    def state(self, user: str, room: str) -> list[dict]:
        return self.call("GET", f"/rooms/{q(room)}/state", as_user=user)

    def membership(self, viewer: str, room: str, user: str) -> Optional[str]:
        content = self.get_state_event(viewer, room, "m.room.member", user)
        return None if content is None else content.get("membership")

    def bodies(self, user: str, room: str) -> list[str]:
        """Bodies of the latest text messages of the room, oldest first."""
        chunk = self.call("GET", f"/rooms/{q(room)}/messages", as_user=user,
                          params={"dir": "b", "limit": 50})["chunk"]
        return [e["content"].get("body") for e in reversed(chunk) if e.get("type") == "m.room.message"]

    def sync(self, user: str, since: Optional[str] = None, timeout_ms: int = 0) -> dict:
        params: dict[str, Any] = {"timeout": timeout_ms}
        if since:
            params["since"] = since
        return self.call("GET", "/sync", as_user=user, params=params)

    def joined_rooms(self, user: str) -> list[str]:
        return self.call("GET", "/joined_rooms", as_user=user)["joined_rooms"]


# -- waiting and comparing ----------------------------------------------------------------------


def wait_membership(peer: Peer, viewer: str, room: str, user: str, membership: str, timeout: float = CONVERGE) -> None:
    """Poll until ``peer`` says ``user``'s membership of ``room`` is ``membership``."""
    wait_until(lambda: peer.membership(viewer, room, user) == membership, timeout,
               f"{peer.kind} to see {user} with membership {membership} in {room}")


def wait_body(peer: Peer, user: str, room: str, body: str, timeout: float = CONVERGE) -> None:
    """Poll until ``user`` on ``peer`` can read the message ``body`` in ``room``."""
    wait_until(lambda: body in peer.bodies(user, room), timeout, f"{peer.kind} to show {body!r} to {user}")


def wait_invite(peer: Peer, user: str, room: str, timeout: float = CONVERGE) -> list[dict]:
    """Poll ``/sync`` until it shows ``user`` invited to ``room``; returns the invite state."""
    def invited():
        rooms = peer.sync(user).get("rooms", {})
        entry = rooms.get("invite", {}).get(room)
        return entry["invite_state"]["events"] if entry else None

    return wait_until(invited, timeout, f"{user}'s /sync on {peer.kind} to show the invite to {room}")


def state_set(peer: Peer, viewer: str, room: str) -> frozenset:
    """The room's state as ``viewer`` on ``peer`` sees it: ``{(type, state_key, event_id)}``."""
    return frozenset((e["type"], e["state_key"], e["event_id"]) for e in peer.state(viewer, room))


class Scenarios:
    """The scenarios of the issue; a subclass per room version sets :attr:`version`.

    Each scenario is written once for a room hosted by ``host`` and joined by users of
    ``guest``, and run as two tests: room on Synapse, room on fedserver.
    """

    version: str

    def setUp(self) -> None:
        self.synapse, self.fedserver = peers()
        for peer in (self.synapse, self.fedserver):
            if not peer.server.running():
                raise AssertionError(f"{peer.kind} is not running:\n{peer.server.log_tail()}")
        self.started = time.monotonic()

    def assert_same_state(self, room: str, *views: tuple[Peer, str], timeout: float = CONVERGE) -> frozenset:
        """Poll until every ``(peer, viewer)`` sees the same state of ``room``; fail with
        the difference otherwise. Returns that state."""
        last: list[frozenset] = []

        def same() -> bool:
            last[:] = [state_set(peer, viewer, room) for peer, viewer in views]
            return all(s == last[0] for s in last[1:])

        try:
            wait_until(same, timeout, f"both servers to agree on the state of {room}")
        except AssertionError:
            if len(last) < len(views):
                raise
            first = last[0]
            diffs = []
            for (peer, viewer), s in zip(views[1:], last[1:]):
                diffs.append(f"only on {views[0][0].kind}: {sorted(first - s)}\nonly on {peer.kind}: {sorted(s - first)}")
            self.fail(f"The servers disagree on the state of {room} (v{self.version}):\n" + "\n".join(diffs))
        return last[0]

    def public_room(self, host: Peer, creator: str, **body: Any) -> str:
        return host.create_room(creator, self.version, preset="public_chat", **body)

    # -- public room by alias; messages both ways ---------------------------------------------

    def _alias_join(self, host: Peer, guest: Peer) -> None:
        h, g = host.user("host"), guest.user("guest")
        alias_name = f"lobby{next(_names)}v{self.version}"
        room = self.public_room(host, h, room_alias_name=alias_name, name="Lobby")
        alias = f"#{alias_name}:{host.name}"
        self.assertEqual(guest.join(g, alias), room)
        wait_membership(host, h, room, g, "join")
        self.assertIn(room, guest.joined_rooms(g))
        self.assertEqual((guest.get_state_event(g, room, "m.room.name") or {}).get("name"), "Lobby")
        self.assert_same_state(room, (host, h), (guest, g))

    def test_public_room_by_alias_on_synapse(self):
        """A fedserver user joins a public Synapse room by its alias (resolved over
        federation): both servers list them joined and agree on the room's state."""
        self._alias_join(self.synapse, self.fedserver)

    def test_public_room_by_alias_on_fedserver(self):
        """A Synapse user joins a public fedserver room by its alias (our /query/directory,
        make_join, send_join): both servers agree on the room's state."""
        self._alias_join(self.fedserver, self.synapse)

    def _messages(self, host: Peer, guest: Peer) -> None:
        h, g = host.user("host"), guest.user("guest")
        room = self.public_room(host, h)
        guest.join(g, room, via=[host.name])
        wait_membership(host, h, room, g, "join")
        since = guest.sync(g)["next_batch"]
        for i in range(3):
            host.send_text(h, room, f"host {i}")
            guest.send_text(g, room, f"guest {i}")
        for peer, user in ((host, h), (guest, g)):
            wait_until(lambda: {f"{w} {i}" for w in ("host", "guest") for i in range(3)} <= set(peer.bodies(user, room)),
                       CONVERGE, f"{peer.kind} to show all six messages")
        # Each side's own messages keep their order on the other side.
        for peer, user in ((host, h), (guest, g)):
            bodies = peer.bodies(user, room)
            for w in ("host", "guest"):
                self.assertEqual([b for b in bodies if b.startswith(w)], [f"{w} {i}" for i in range(3)])
        # The guest's incremental /sync carries the host's messages.
        def in_sync():
            timeline = guest.sync(g, since=since).get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {})
            return {e["content"].get("body") for e in timeline.get("events", []) if e["type"] == "m.room.message"}
        seen = wait_until(lambda: {"host 0", "host 1", "host 2"} <= in_sync(), CONVERGE, "the host's messages in /sync")
        self.assertTrue(seen)
        self.assert_same_state(room, (host, h), (guest, g))

    def test_messages_both_ways_on_synapse(self):
        """In a Synapse room, three messages from each server reach the other, each
        side's in order, and our /sync delivers Synapse's messages."""
        self._messages(self.synapse, self.fedserver)

    def test_messages_both_ways_on_fedserver(self):
        """In a fedserver room, three messages from each server reach the other, each
        side's in order, and Synapse's /sync delivers ours."""
        self._messages(self.fedserver, self.synapse)

    # -- invites ---------------------------------------------------------------------------------

    def _invites(self, host: Peer, guest: Peer) -> None:
        h, accepting, rejecting = host.user("host"), guest.user("yes"), guest.user("no")
        room = host.create_room(h, self.version, preset="private_chat", name="Private")
        for invitee in (accepting, rejecting):
            host.call("POST", f"/rooms/{q(room)}/invite", {"user_id": invitee}, as_user=h)
            wait_membership(host, h, room, invitee, "invite", timeout=5)
        # The invitees see the invites (with the room's stripped state) in /sync.
        for invitee in (accepting, rejecting):
            events = wait_invite(guest, invitee, room)
            own = [e for e in events if e["type"] == "m.room.member" and e["state_key"] == invitee]
            self.assertEqual([e["content"]["membership"] for e in own], ["invite"])
            self.assertIn("m.room.create", {e["type"] for e in events})
            for e in events:  # client-server spec "Stripped state": these keys only
                self.assertLessEqual(set(e), {"type", "state_key", "sender", "content"}, e)
        # One rejects while no user of the guest's server is in the room (make_leave and
        # send_leave through the inviting server): the invite leaves their /sync.
        since = guest.sync(rejecting)["next_batch"]
        guest.call("POST", f"/rooms/{q(room)}/leave", {"reason": "no thanks"}, as_user=rejecting)
        wait_membership(host, h, room, rejecting, "leave")
        self.assertNotIn(room, guest.sync(rejecting).get("rooms", {}).get("invite", {}))
        self.assertIn(room, guest.sync(rejecting, since=since).get("rooms", {}).get("leave", {}))
        self.assertNotIn(room, guest.joined_rooms(rejecting))
        # The other accepts: joined through the invite's origin (no server named).
        self.assertEqual(guest.call("POST", f"/rooms/{q(room)}/join", {}, as_user=accepting)["room_id"], room)
        wait_membership(host, h, room, accepting, "join")
        self.assertIn(room, guest.joined_rooms(accepting))
        self.assert_same_state(room, (host, h), (guest, accepting))

    def test_invites_on_synapse(self):
        """A Synapse user invites two fedserver users to a private room (the invites
        arrive by PUT /v2/invite): both see the invite in /sync; one rejects (make_leave
        and send_leave to Synapse) and no longer sees it, the other joins (through the
        inviting server, no server named)."""
        self._invites(self.synapse, self.fedserver)

    def test_invites_on_fedserver(self):
        """A fedserver user invites two Synapse users to a private room: both see it in
        their /sync; one rejects (make_leave/send_leave to us), the other joins."""
        self._invites(self.fedserver, self.synapse)

    # -- leave, kick, ban --------------------------------------------------------------------------

    def _leave(self, host: Peer, guest: Peer) -> None:
        h, g = host.user("host"), guest.user("guest")
        room = self.public_room(host, h)
        guest.join(g, room, via=[host.name])
        wait_membership(host, h, room, g, "join")
        guest.call("POST", f"/rooms/{q(room)}/leave", {}, as_user=g)
        wait_membership(host, h, room, g, "leave")
        self.assertNotIn(room, guest.joined_rooms(g))
        # The guest's view is the state as it was when they left: the host's current one.
        self.assert_same_state(room, (host, h), (guest, g))
        # Invited again to the room their server has left, they see the invite and
        # come back.
        host.call("POST", f"/rooms/{q(room)}/invite", {"user_id": g}, as_user=h)
        wait_invite(guest, g, room)
        guest.call("POST", f"/rooms/{q(room)}/join", {}, as_user=g)
        wait_membership(host, h, room, g, "join")
        self.assert_same_state(room, (host, h), (guest, g))

    def test_leave_on_synapse(self):
        """Our only user in a Synapse room leaves: Synapse sees the leave and both agree
        on the room's state; invited again, the user sees the invite and rejoins."""
        self._leave(self.synapse, self.fedserver)

    def test_leave_on_fedserver(self):
        """Synapse's only user in our room leaves: we see the leave and both agree; our
        user invites them again and they rejoin."""
        self._leave(self.fedserver, self.synapse)

    def _kick(self, host: Peer, guest: Peer) -> None:
        h, g, witness = host.user("host"), guest.user("kicked"), guest.user("witness")
        room = self.public_room(host, h)
        for user in (g, witness):
            guest.join(user, room, via=[host.name])
            wait_membership(host, h, room, user, "join")
        host.call("POST", f"/rooms/{q(room)}/kick", {"user_id": g, "reason": "out"}, as_user=h)
        wait_membership(guest, witness, room, g, "leave")
        event = guest.get_state_event(witness, room, "m.room.member", g)
        self.assertEqual(event.get("reason"), "out")
        self.assertNotIn(room, guest.joined_rooms(g))
        # A kicked user of a public room may come back.
        guest.join(g, room, via=[host.name])
        wait_membership(host, h, room, g, "join")
        self.assert_same_state(room, (host, h), (guest, witness))

    def test_kick_on_synapse(self):
        """A Synapse user kicks one of our two users from a Synapse room: the kick reaches
        us, the kicked user can rejoin, both servers agree on the state."""
        self._kick(self.synapse, self.fedserver)

    def test_kick_on_fedserver(self):
        """Our user kicks one of two Synapse users from our room: Synapse sees it, the
        kicked user can rejoin, both agree."""
        self._kick(self.fedserver, self.synapse)

    def assert_cannot_join(self, guest: Peer, user: str, room: str, host: Peer) -> None:
        """The join is refused with 403 (M_FORBIDDEN from fedserver; Synapse's own check
        of a ban answers M_BAD_STATE)."""
        with self.assertRaises(HTTPError) as cm:
            guest.join(user, room, via=[host.name])
        self.assertEqual(cm.exception.status, 403, cm.exception.body)
        if guest.kind == "fedserver":
            self.assertEqual(cm.exception.body.get("errcode"), "M_FORBIDDEN")

    def assert_join_refused(self, guest: Peer, user: str, room: str, host: Peer, *, private: bool = True) -> None:
        """A join the host refuses at make_join. Synapse as host answers 403 M_FORBIDDEN,
        which fedserver passes on to its user. fedserver as host answers a room the user
        may not see (``private``) as if it did not exist (seed 004: private rooms look
        non-existent), so Synapse, having found no server that knows the room, tells its
        user 502 "Failed to make_join via any server" (M_UNKNOWN); a room anyone may see
        (a knock room: anyone may knock) gets 403 M_FORBIDDEN, passed on by Synapse (see
        docs/federation.md). A 500 or any other answer fails."""
        with self.assertRaises(HTTPError) as cm:
            guest.join(user, room, via=[host.name])
        got = (cm.exception.status, cm.exception.body.get("errcode"))
        hidden = host.kind == "fedserver" and private
        expected = (502, "M_UNKNOWN") if hidden else (403, "M_FORBIDDEN")
        self.assertEqual(got, expected, cm.exception.body)

    def _ban(self, host: Peer, guest: Peer) -> None:
        h, g, witness = host.user("host"), guest.user("banned"), guest.user("witness")
        room = self.public_room(host, h)
        for user in (g, witness):
            guest.join(user, room, via=[host.name])
            wait_membership(host, h, room, user, "join")
        host.call("POST", f"/rooms/{q(room)}/ban", {"user_id": g, "reason": "bad"}, as_user=h)
        wait_membership(guest, witness, room, g, "ban")
        # The guest's server is in the room: its own auth check refuses the join.
        self.assert_cannot_join(guest, g, room, host)
        self.assert_same_state(room, (host, h), (guest, witness))
        # Once it has left the room, the join goes to the host, which refuses it.
        guest.call("POST", f"/rooms/{q(room)}/leave", {}, as_user=witness)
        wait_membership(host, h, room, witness, "leave")
        self.assert_cannot_join(guest, g, room, host)
        self.assertEqual(host.membership(h, room, g), "ban")
        self.assert_same_state(room, (host, h), (guest, witness))

    def test_ban_on_synapse(self):
        """A Synapse user bans one of our two users: we see the ban; the banned user's
        attempt to rejoin gets 403 M_FORBIDDEN, from our auth check while we are in the
        room, then from Synapse's make_join once our other user left; the states agree."""
        self._ban(self.synapse, self.fedserver)

    def test_ban_on_fedserver(self):
        """Our user bans one of two Synapse users: Synapse sees the ban and its user
        cannot rejoin (403), neither while Synapse is in the room nor after (our
        make_join refuses); the states agree."""
        self._ban(self.fedserver, self.synapse)

    # -- power levels ---------------------------------------------------------------------------

    def _power_levels(self, host: Peer, guest: Peer) -> None:
        h, g = host.user("host"), guest.user("guest")
        room = self.public_room(host, h)
        guest.join(g, room, via=[host.name])
        wait_membership(host, h, room, g, "join")
        pl = host.get_state_event(h, room, "m.room.power_levels")
        needed = pl.get("events", {}).get("m.room.topic", pl.get("state_default", 50))
        self.assertEqual(needed, 50)
        with self.assertRaises(HTTPError) as cm:
            guest.put_state(g, room, "m.room.topic", {"topic": "guest's"})
        self.assertEqual((cm.exception.status, cm.exception.body.get("errcode")), (403, "M_FORBIDDEN"))
        pl["users"] = {**pl.get("users", {}), g: 50}
        host.put_state(h, room, "m.room.power_levels", pl)
        wait_until(lambda: (guest.get_state_event(g, room, "m.room.power_levels") or {}).get("users", {}).get(g) == 50,
                   CONVERGE, "the guest's server to see the new power levels")
        guest.put_state(g, room, "m.room.topic", {"topic": "guest's"})
        wait_until(lambda: (host.get_state_event(h, room, "m.room.topic") or {}).get("topic") == "guest's",
                   CONVERGE, "the host to see the guest's topic")
        self.assert_same_state(room, (host, h), (guest, g))

    def test_power_levels_on_synapse(self):
        """In a Synapse room our user may not set the topic (power 0 < 50: 403 from our
        own auth check); once Synapse's user gives them 50, they can, and Synapse accepts
        it."""
        self._power_levels(self.synapse, self.fedserver)

    def test_power_levels_on_fedserver(self):
        """In our room a Synapse user gets 403 setting the topic, then succeeds once our
        user raised them to 50; we accept the event."""
        self._power_levels(self.fedserver, self.synapse)

    # -- knock -----------------------------------------------------------------------------------

    def _knock(self, host: Peer, guest: Peer) -> None:
        h, g, shy = host.user("host"), guest.user("knocker"), guest.user("shy")
        room = host.create_room(h, self.version, preset="private_chat",
                                initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}])
        # Not invited: no join (a server that is not in the room never hears of it). The
        # room is not private to anyone: its door is open to knock on.
        self.assert_join_refused(guest, g, room, host, private=False)
        for user in (shy, g):
            self.assertEqual(guest.call("POST", "/knock/" + q(room), {"reason": "let me in"}, as_user=user,
                                        params={"server_name": host.name})["room_id"], room)
            wait_membership(host, h, room, user, "knock")
        # One knock is withdrawn: fedserver sends the leave through make_leave/send_leave
        # (no server named). Synapse 1.163 only withdraws it locally (it does not tell
        # the room), so the host cannot see it then.
        guest.call("POST", f"/rooms/{q(room)}/leave", {}, as_user=shy)
        if guest.kind == "fedserver":
            wait_membership(host, h, room, shy, "leave")
        self.assertNotIn(room, guest.sync(shy).get("rooms", {}).get("knock", {}))
        self.assertEqual(host.get_state_event(h, room, "m.room.member", g).get("reason"), "let me in")
        knocks = guest.sync(g).get("rooms", {}).get("knock", {})
        self.assertIn(room, knocks)
        events = knocks[room]["knock_state"]["events"]
        self.assertIn("m.room.create", {e["type"] for e in events})
        for e in events:  # client-server spec "Stripped state": these keys only
            self.assertLessEqual(set(e), {"type", "state_key", "sender", "content"}, e)
        host.call("POST", f"/rooms/{q(room)}/invite", {"user_id": g}, as_user=h)
        wait_invite(guest, g, room)
        guest.join(g, room, via=[host.name])
        wait_membership(host, h, room, g, "join")
        self.assert_same_state(room, (host, h), (guest, g))

    def test_knock_on_synapse(self):
        """Two of our users knock on a Synapse room with join rule knock (make_knock,
        send_knock); one withdraws the knock (make_leave/send_leave); the other sees the
        knock in /sync, Synapse's user sees it and invites them, and they join."""
        self._knock(self.synapse, self.fedserver)

    def test_knock_on_fedserver(self):
        """Two Synapse users knock on our knock room (one then withdraws, which Synapse
        keeps to itself); our user sees the other's knock and invites them; they join."""
        self._knock(self.fedserver, self.synapse)

    # -- restricted join ---------------------------------------------------------------------------

    def _restricted(self, host: Peer, guest: Peer) -> None:
        h, g = host.user("host"), guest.user("guest")
        allowed = self.public_room(host, h, name="Allowed")
        rule = {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": allowed}]}
        room = host.create_room(h, self.version, preset="private_chat",
                                initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": rule}])
        # Not in the allowed room yet: no join.
        self.assert_join_refused(guest, g, room, host)
        self.assertIsNone(host.membership(h, room, g))
        guest.join(g, allowed, via=[host.name])
        wait_membership(host, h, allowed, g, "join")
        self.assertEqual(guest.join(g, room, via=[host.name]), room)
        wait_membership(host, h, room, g, "join")
        member = host.get_state_event(h, room, "m.room.member", g)
        self.assertEqual(member.get("join_authorised_via_users_server"), h)
        self.assert_same_state(room, (host, h), (guest, g))
        self.assert_same_state(allowed, (host, h), (guest, g))

    def test_restricted_join_on_synapse(self):
        """Our user cannot join a restricted Synapse room at first; once in the room it
        allows, they join (Synapse authorises and countersigns: join_authorised_via_users_server
        names its user)."""
        self._restricted(self.synapse, self.fedserver)

    def test_restricted_join_on_fedserver(self):
        """A Synapse user is refused our restricted room, joins the room it allows, then
        joins it through our countersignature (join_authorised_via_users_server: our
        user)."""
        self._restricted(self.fedserver, self.synapse)

    # -- matrix-nio ----------------------------------------------------------------------------

    def test_matrix_nio_on_fedserver_with_a_synapse_user(self):
        """A matrix-nio client logged into fedserver joins a Synapse room by alias,
        exchanges messages with a Synapse user (its long-polling /sync receives theirs),
        then creates a room of ours and invites the Synapse user, who joins and answers."""
        import asyncio

        import nio

        fed, syn = self.fedserver, self.synapse
        s = syn.user("syn")
        localpart = f"nio{next(_names)}"
        n = fed.server.admin_user(localpart)
        alias_name = f"nio{next(_names)}v{self.version}"
        room = self.public_room(syn, s, room_alias_name=alias_name)

        async def scenario() -> dict:
            out: dict = {}
            client = nio.AsyncClient(fed.server.client_url, localpart)
            try:
                login = await client.login("pw-" + localpart)
                assert isinstance(login, nio.LoginResponse), login
                joined = await client.join(f"#{alias_name}:{syn.name}")
                assert isinstance(joined, nio.JoinResponse), joined
                out["joined"] = joined.room_id
                first = await client.sync(full_state=True)
                assert isinstance(first, nio.SyncResponse), first
                sent = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "hi from nio"})
                assert isinstance(sent, nio.RoomSendResponse), sent
                # Synapse's user answers while nio long-polls.
                await asyncio.to_thread(wait_body, syn, s, room, "hi from nio")
                await asyncio.to_thread(syn.send_text, s, room, "hi nio")
                got: list = []
                since = first.next_batch
                deadline = time.monotonic() + CONVERGE
                while "hi nio" not in got and time.monotonic() < deadline:
                    resp = await client.sync(timeout=5000, since=since)
                    assert isinstance(resp, nio.SyncResponse), resp
                    since = resp.next_batch
                    r = resp.rooms.join.get(room)
                    if r is not None:
                        got += [e.body for e in r.timeline.events if isinstance(e, nio.RoomMessageText)]
                out["got"] = got
                out["members"] = sorted(client.rooms[room].users)
                # nio's room on fedserver; the Synapse user is invited and joins.
                created = await client.room_create(name="nio's", invite=[s])
                assert isinstance(created, nio.RoomCreateResponse), created
                out["ours"] = created.room_id
            finally:
                await client.close()
            return out

        out = _run_on_own_loop(lambda: asyncio.wait_for(scenario(), 120))
        self.assertEqual(out["joined"], room)
        self.assertIn("hi nio", out["got"])
        self.assertEqual(out["members"], sorted([s, n]))
        self.assert_same_state(room, (syn, s), (fed, n))
        ours = out["ours"]
        wait_invite(syn, s, ours)
        syn.join(s, ours, via=[fed.name])
        syn.send_text(s, ours, "thanks nio")
        wait_body(fed, n, ours, "thanks nio")
        self.assert_same_state(ours, (fed, n), (syn, s))


class RoomsV10(Scenarios, TestCase):
    """The scenarios in room version 10."""

    version = "10"


class RoomsV11(Scenarios, TestCase):
    """The scenarios in room version 11."""

    version = "11"


class RoomsV12(Scenarios, TestCase):
    """The scenarios in room version 12 (room ids without a server part)."""

    version = "12"


class InviterDownTests(TestCase):
    """Invites from a Synapse that then stops (a Synapse of its own, next to the shared
    fedserver)."""

    def test_invites_rejected_while_the_inviting_synapse_is_down(self):
        """A Synapse user invites our user to rooms of versions 10, 11 and 12; our user
        sees the invites, Synapse stops, and our user rejects them all: each rejection
        answers 200 (no server can be reached, so it is recorded here as an out-of-band
        leave), the invites leave /sync and an incremental /sync lists the leaves;
        accepting one instead is refused with an error, never a 500."""
        _, fed = peers()
        try:
            gone = Peer(Synapse(os.path.join(interop_base(), "synapse-down")))
        except PeerUnavailable as e:
            raise unavailable(e) from None
        gone.server.start()
        self.addCleanup(gone.server.stop)
        inviter, invitee = gone.user("inviter"), fed.user("invitee")
        rejected = [gone.create_room(inviter, v, preset="private_chat", invite=[invitee]) for v in ("10", "11", "12")]
        accepted = gone.create_room(inviter, "12", preset="private_chat", invite=[invitee])
        for room in rejected + [accepted]:
            wait_invite(fed, invitee, room)
        since = fed.sync(invitee)["next_batch"]
        gone.server.stop()
        for room in rejected:
            self.assertEqual(fed.call("POST", f"/rooms/{q(room)}/leave", {}, as_user=invitee), {})
        with self.assertRaises(HTTPError) as cm:
            fed.call("POST", f"/rooms/{q(accepted)}/join", {}, as_user=invitee)
        self.assertEqual(cm.exception.status, 502, cm.exception.body)
        rooms_now = fed.sync(invitee)["rooms"]
        self.assertEqual(sorted(rooms_now["invite"]), [accepted])
        leaves = fed.sync(invitee, since=since)["rooms"]["leave"]
        self.assertEqual(sorted(leaves), sorted(rejected))
        for room in rejected:
            [event] = leaves[room]["timeline"]["events"]
            self.assertEqual((event["sender"], event["content"]["membership"]), (invitee, "leave"))
