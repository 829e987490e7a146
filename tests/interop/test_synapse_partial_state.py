"""Partial-state joins with a real Synapse, both ways (send_join v2 ``omit_members``,
MSC3706 / MSC3902): Synapse 1.163 asks for partial state as a joiner (always, for a room it
is not in) and answers it as a resident; fedserver does both too.

Each test checks that the join really was partial (the resident's or joiner's log says so),
that the joining server ends with every member of the room (its member list waits for the
resync), that messages cross both ways, and that both servers agree on the room's state.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.interop.peers import PeerPair, wait_until
from tests.interop.test_synapse_rooms import CONVERGE, Peer, q, state_set, wait_body

_pair = PeerPair("interop-partial-")
_peers: dict = {}


def _log_has(peer: Peer, text: str) -> bool:
    with open(peer.server.log_path, errors="replace") as f:
        return any(text in line for line in f)


class PartialStateJoins(TestCase):
    version = "12"

    def setUp(self) -> None:
        if not _peers:
            synapse, fedserver = _pair.get()
            _peers.update(synapse=Peer(synapse), fedserver=Peer(fedserver))
        self.synapse, self.fedserver = _peers["synapse"], _peers["fedserver"]
        for peer in (self.synapse, self.fedserver):
            if not peer.server.running():
                raise AssertionError(f"{peer.kind} is not running:\n{peer.server.log_tail()}")

    def assert_same_state(self, room: str, a: tuple[Peer, str], b: tuple[Peer, str]) -> None:
        wait_until(lambda: state_set(*a, room) == state_set(*b, room), CONVERGE,
                   f"both servers to agree on the state of {room}")

    def _room_with_members(self, host: Peer, n: int) -> tuple[str, list[str]]:
        users = [host.user("m") for _ in range(n)]
        room = host.create_room(users[0], self.version, preset="public_chat", name="Partial state room")
        for u in users[1:]:
            host.join(u, room)
        return room, users

    def _joined(self, peer: Peer, user: str, room: str) -> set[str]:
        return set(peer.call("GET", f"/rooms/{q(room)}/joined_members", as_user=user)["joined"])

    def test_synapse_joins_a_fedserver_room_with_partial_state(self):
        """Synapse joins a fedserver room: fedserver answers send_join with members
        omitted (Synapse asked), Synapse resyncs the state from fedserver (/state_ids and
        /state or /event) and ends with every member; messages cross both ways."""
        fed, syn = self.fedserver, self.synapse
        room, members = self._room_with_members(fed, 4)
        s = syn.user("s")
        syn.join(s, room, via=[fed.name])
        wait_until(lambda: _log_has(fed, f"send_join of {s} to {room}: partial (members omitted)"), CONVERGE,
                   "fedserver to log a partial send_join answer")
        # Synapse's member list waits for its resync: it must end with everyone.
        wait_until(lambda: self._joined(syn, s, room) == set(members) | {s}, CONVERGE * 2,
                   "Synapse to hold every member after its resync")
        fed.send_text(members[1], room, "from fedserver")
        wait_body(syn, s, room, "from fedserver")
        syn.send_text(s, room, "from synapse")
        wait_body(fed, members[2], room, "from synapse")
        self.assert_same_state(room, (fed, members[0]), (syn, s))

    def test_fedserver_joins_a_synapse_room_with_partial_state(self):
        """fedserver joins a Synapse room: it asks for partial state, Synapse omits the
        members, fedserver answers the join at once, resyncs in the background and ends
        with every member (its member list waited); messages cross both ways."""
        fed, syn = self.fedserver, self.synapse
        room, members = self._room_with_members(syn, 4)
        f = fed.user("f")
        fed.join(f, room, via=[syn.name])
        wait_until(lambda: _log_has(fed, f"Joined {room} via {syn.name} with partial state"), CONVERGE,
                   "fedserver to log its partial join")
        self.assertEqual(self._joined(fed, f, room), set(members) | {f})
        wait_until(lambda: _log_has(fed, f"Resync of {room} from {syn.name} done"), CONVERGE, "the resync to end")
        syn.send_text(members[1], room, "from synapse")
        wait_body(fed, f, room, "from synapse")
        fed.send_text(f, room, "from fedserver")
        wait_body(syn, members[2], room, "from fedserver")
        self.assert_same_state(room, (syn, members[0]), (fed, f))
