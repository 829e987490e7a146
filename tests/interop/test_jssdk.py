"""matrix-js-sdk (the SDK under Element) on fedserver and on a real Synapse, federating."""

from __future__ import annotations

import itertools

from twisted.trial.unittest import TestCase

from tests.interop.peers import PeerPair
from tests.jsclient import account, node_or_skip, run_scenario

_pair = PeerPair("interop-jssdk-")
_names = (f"js{i}" for i in itertools.count())


class JsSdkSmokeTests(TestCase):
    """The harness the daily-use, encryption and browser tests build on."""

    def setUp(self) -> None:
        node_or_skip()
        self.synapse, self.fedserver = _pair.get()

    def _user(self, server) -> dict:
        name = next(_names)
        user_id = server.register(name) if server is self.synapse else server.admin_user(name)
        return account(server, user_id)

    def test_fedserver_room_joined_from_synapse(self) -> None:
        """A js-sdk user on fedserver creates a public room with an alias; a js-sdk user on
        Synapse joins it by alias; each sees the other's message in its live timeline."""
        a, b = self._user(self.fedserver), self._user(self.synapse)
        out = run_scenario("smoke", {"a": a, "b": b, "alias": next(_names)})
        self.assertIn("hello from b", out["aSees"])
        self.assertIn("hello from a", out["bSees"])
        self.assertEqual(out["roomId"], out["joinedRoomId"])

    def test_synapse_room_joined_from_fedserver(self) -> None:
        """The same with the room on Synapse and the joiner on fedserver."""
        a, b = self._user(self.synapse), self._user(self.fedserver)
        out = run_scenario("smoke", {"a": a, "b": b, "alias": next(_names)})
        self.assertIn("hello from b", out["aSees"])
        self.assertIn("hello from a", out["bSees"])
        self.assertEqual(out["roomId"], out["joinedRoomId"])
