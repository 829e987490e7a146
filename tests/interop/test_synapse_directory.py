"""The room directory and spaces across servers with a real Synapse: Synapse's client
lists fedserver's published rooms through ``/publicRooms?server=`` (Synapse asks our
``/_matrix/federation/v1/publicRooms``, GET and POST), and fedserver's client lists
Synapse's (we ask its federation endpoint); the hierarchy of a space spanning both
servers, seen from each (each asks the other's ``/_matrix/federation/v1/hierarchy``).

Both servers run as child processes (tests/interop/peers.py), started once for this
module. Skipped without ``FEDSERVER_SYNAPSE_PYTHON`` unless ``FEDSERVER_INTEROP=require``.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

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

    def test_space_spanning_both_servers(self):
        """A public space on Synapse with a public room of each server as children (each
        ``via`` its own server): Synapse's client sees fedserver's room in the hierarchy
        (Synapse asked our federation hierarchy), and once fedserver's user joined the
        space, fedserver's client sees Synapse's room (we asked Synapse's), with names
        and the space's children_state; ``max_depth=0`` is the space alone."""
        tag = uuid.uuid4().hex[:10]
        carol = self.synapse.register("spc" + tag[:6])
        dave = self.fedserver.user("spd" + tag[:6])
        v3 = "/_matrix/client/v3"
        space = self.synapse.client("POST", v3 + "/createRoom", {
            "preset": "public_chat", "name": f"Space {tag}", "creation_content": {"type": "m.space"},
        }, as_user=carol)["room_id"]
        syn_room = self.synapse.client("POST", v3 + "/createRoom", {"preset": "public_chat", "name": f"Syn {tag}"},
                                       as_user=carol)["room_id"]
        fed_room = self.fedserver.client("POST", v3 + "/createRoom", {"preset": "public_chat", "name": f"Fed {tag}"},
                                         as_user=dave)["room_id"]
        for child, server in ((fed_room, self.fedserver.server_name), (syn_room, self.synapse.server_name)):
            self.synapse.client("PUT", f"{v3}/rooms/{quote(space, safe='')}/state/m.space.child/{quote(child, safe='')}",
                                {"via": [server]}, as_user=carol)
        path = f"/_matrix/client/v1/rooms/{quote(space, safe='')}/hierarchy"
        expected = {space: f"Space {tag}", fed_room: f"Fed {tag}", syn_room: f"Syn {tag}"}

        def seen_by(peer: Any, user: str) -> Any:
            got = peer.client("GET", path, as_user=user)
            return got if {r["room_id"]: r.get("name") for r in got["rooms"]} == expected else None

        got = wait_until(lambda: seen_by(self.synapse, carol), CONVERGE, "Synapse's hierarchy to show fedserver's room")
        self.assertEqual(got["rooms"][0]["room_id"], space)
        self.fedserver.client("POST", v3 + "/join/" + quote(space, safe=""), {}, as_user=dave,
                              params={"server_name": [self.synapse.server_name]})
        got = wait_until(lambda: seen_by(self.fedserver, dave), CONVERGE, "fedserver's hierarchy to show Synapse's room")
        top = got["rooms"][0]
        self.assertEqual((top["room_id"], top["room_type"]), (space, "m.space"))
        self.assertEqual({c["state_key"] for c in top["children_state"]}, {fed_room, syn_room})
        syn_entry = next(r for r in got["rooms"] if r["room_id"] == syn_room)
        self.assertEqual((syn_entry["join_rule"], syn_entry["num_joined_members"]), ("public", 1))
        alone = self.fedserver.client("GET", path, as_user=dave, params={"max_depth": 0})
        self.assertEqual([r["room_id"] for r in alone["rooms"]], [space])


__all__ = ["DirectoryInteropTests"]
