"""The room directory across servers with a real Synapse: Synapse's client lists
fedserver's published rooms through ``/publicRooms?server=`` (Synapse asks our
``/_matrix/federation/v1/publicRooms``, GET and POST), and fedserver's client lists
Synapse's (we ask its federation endpoint).

Both servers run as child processes (tests/interop/peers.py), started once for this
module. Skipped without ``FEDSERVER_SYNAPSE_PYTHON`` unless ``FEDSERVER_INTEROP=require``.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.trial.unittest import TestCase

from tests.interop.peers import HTTPError, PeerPair, wait_until

#: Seconds to wait for a listing to show a new room (Synapse keeps a remote listing for
#: up to 30 s, so each poll asks with a filter of its own).
CONVERGE = 30

_pair = PeerPair("interop-directory-")


def ids(listing: dict[str, Any]) -> set[str]:
    return {c["room_id"] for c in listing["chunk"]}


class DirectoryInteropTests(TestCase):
    """Public room directories across fedserver and Synapse."""

    def setUp(self):
        self.synapse, self.fedserver = _pair.get()
        for peer in (self.synapse, self.fedserver):
            if not peer.running():
                raise AssertionError(f"{type(peer).__name__} is not running:\n{peer.log_tail()}")

    def _create_public(self, peer: Any, user: str, name: str, topic: str, **extra: Any) -> str:
        return peer.client("POST", "/_matrix/client/v3/createRoom", {
            "preset": "public_chat", "visibility": "public", "name": name, "topic": topic, **extra,
        }, as_user=user)["room_id"]

    def test_synapse_lists_fedserver_rooms(self):
        """A room published on fedserver shows on Synapse's client through ``server=``:
        POST with a search term (our federation POST) and GET (our federation GET), with
        its name and topic; a private room of ours is not listed."""
        tag = uuid.uuid4().hex[:10]
        alice = self.fedserver.user("dira" + tag[:6])
        room = self._create_public(self.fedserver, alice, f"Fed hall {tag}", f"topic {tag}")
        hidden = self.fedserver.client("POST", "/_matrix/client/v3/createRoom", {
            "preset": "private_chat", "name": f"Private {tag}",
        }, as_user=alice)["room_id"]
        bob = self.synapse.register("dirb" + tag[:6])
        path = "/_matrix/client/v3/publicRooms"

        def search() -> Any:
            found = self.synapse.client("POST", path, {"filter": {"generic_search_term": f"hall {tag}"}, "limit": 10},
                                        as_user=bob, params={"server": self.fedserver.server_name})
            return found if room in ids(found) else None

        found = wait_until(search, CONVERGE, "Synapse to list fedserver's room")
        entry = next(c for c in found["chunk"] if c["room_id"] == room)
        self.assertEqual((entry["name"], entry["topic"], entry["join_rule"]), (f"Fed hall {tag}", f"topic {tag}", "public"))
        self.assertEqual(entry["num_joined_members"], 1)
        listing = self.synapse.client("GET", path, as_user=bob, params={"server": self.fedserver.server_name, "limit": 500})
        self.assertIn(room, ids(listing))
        self.assertNotIn(hidden, ids(listing))

    def test_fedserver_lists_synapse_rooms(self):
        """A room published on Synapse shows on fedserver's client through ``server=``:
        GET, and POST with a search term and with ``room_types``; paging with Synapse's
        own tokens passes through; a bad server name is 400 M_INVALID_PARAM."""
        tag = uuid.uuid4().hex[:10]
        carol = self.synapse.register("dirc" + tag[:6])
        room = self._create_public(self.synapse, carol, f"Syn lounge {tag}", f"about {tag}")
        space = self._create_public(self.synapse, carol, f"Syn space {tag}", f"space {tag}",
                                    creation_content={"type": "m.space"})
        dave = self.fedserver.user("dird" + tag[:6])
        path = "/_matrix/client/v3/publicRooms"
        server = self.synapse.server_name
        listing = wait_until(
            lambda: (lambda got: got if {room, space} <= ids(got) else None)(
                self.fedserver.client("GET", path, as_user=dave, params={"server": server})
            ),
            CONVERGE, "fedserver to list Synapse's rooms",
        )
        entry = next(c for c in listing["chunk"] if c["room_id"] == room)
        self.assertEqual((entry["name"], entry["topic"]), (f"Syn lounge {tag}", f"about {tag}"))
        found = self.fedserver.client("POST", path, {"filter": {"generic_search_term": f"lounge {tag}"}},
                                      as_user=dave, params={"server": server})
        self.assertEqual(ids(found), {room})
        spaces = self.fedserver.client("POST", path, {"filter": {"generic_search_term": tag, "room_types": ["m.space"]}},
                                       as_user=dave, params={"server": server})
        self.assertEqual(ids(spaces), {space})
        first = self.fedserver.client("GET", path, as_user=dave, params={"server": server, "limit": 1})
        self.assertEqual(len(first["chunk"]), 1)
        self.assertIn("next_batch", first)
        second = self.fedserver.client("GET", path, as_user=dave,
                                       params={"server": server, "limit": 1, "since": first["next_batch"]})
        self.assertEqual(len(second["chunk"]), 1)
        self.assertNotEqual(ids(first), ids(second))
        with self.assertRaises(HTTPError) as caught:
            self.fedserver.client("GET", path, as_user=dave, params={"server": "not a server"})
        self.assertEqual((caught.exception.status, caught.exception.body.get("errcode")), (400, "M_INVALID_PARAM"))
        with self.assertRaises(HTTPError) as caught:
            self.fedserver.client("GET", path, params={"server": server})
        self.assertEqual((caught.exception.status, caught.exception.body.get("errcode")), (401, "M_MISSING_TOKEN"))


__all__ = ["DirectoryInteropTests"]
