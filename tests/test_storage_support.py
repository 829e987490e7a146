"""Shared helpers for the storage tests: building events and opening stores on real files."""

from __future__ import annotations

import itertools
import os
from typing import Any, Iterable, Optional

from twisted.internet import reactor
from twisted.trial import unittest

from fedserver.events.hashing import add_content_hash
from fedserver.events.model import Event
from fedserver.room_versions import EventFormat, RoomVersion
from fedserver.storage import open_store
from fedserver.testing import database_for_test

_counter = itertools.count(1)


def make_event(
    rv: RoomVersion,
    room_id: Optional[str],
    type: str,
    sender: str = "@alice:a.example",
    content: Optional[dict] = None,
    state_key: Optional[str] = None,
    prev: Iterable[str] = (),
    auth: Iterable[str] = (),
    depth: int = 1,
    ts: Optional[int] = None,
    event_id: Optional[str] = None,
) -> Event:
    """An event of room version ``rv`` with a correct content hash (and id for V2+).

    ``room_id`` None is only valid for a v12 create event.
    """
    n = next(_counter)
    pdu: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "content": {} if content is None else content,
        "depth": depth,
        "origin_server_ts": 1_700_000_000_000 + n if ts is None else ts,
    }
    if room_id is not None:
        pdu["room_id"] = room_id
    if state_key is not None:
        pdu["state_key"] = state_key
    if rv.event_format == EventFormat.V1:
        pdu["event_id"] = event_id or f"${n}:{sender.split(':', 1)[1]}"
        pdu["origin"] = sender.split(":", 1)[1]
        pdu["prev_events"] = [[p, {"sha256": "aGFzaA"}] for p in prev]
        pdu["auth_events"] = [[a, {"sha256": "aGFzaA"}] for a in auth]
    else:
        pdu["prev_events"] = list(prev)
        pdu["auth_events"] = list(auth)
    add_content_hash(pdu, strict=rv.strict_canonicaljson)
    return Event.from_pdu(pdu, rv)


def make_room(rv: RoomVersion, creator: str = "@alice:a.example") -> tuple[str, list[Event]]:
    """A minimal room: create, creator's join, power levels, join rules (a linear DAG).

    :returns: ``(room_id, events in order)``.
    """
    if rv.room_id_from_create_event:
        create = make_event(rv, None, "m.room.create", creator, {"room_version": rv.identifier}, "")
        room_id = create.room_id
    else:
        room_id = f"!r{next(_counter)}:a.example"
        create = make_event(
            rv, room_id, "m.room.create", creator, {"creator": creator, "room_version": rv.identifier}, ""
        )
    create_auth = [] if rv.room_id_from_create_event else [create.event_id]
    join = make_event(
        rv, room_id, "m.room.member", creator, {"membership": "join"}, creator,
        prev=[create.event_id], auth=create_auth, depth=2,
    )
    pl = make_event(
        rv, room_id, "m.room.power_levels", creator, {"users": {creator: 100}}, "",
        prev=[join.event_id], auth=create_auth + [join.event_id], depth=3,
    )
    jr = make_event(
        rv, room_id, "m.room.join_rules", creator, {"join_rule": "public"}, "",
        prev=[pl.event_id], auth=create_auth + [join.event_id, pl.event_id], depth=4,
    )
    return room_id, [create, join, pl, jr]


class StoreTestCase(unittest.TestCase):
    """Base class: opens stores on real SQLite files under ``self.mktemp()``.

    Storage runs its queries in a thread, so these tests run on trial's real reactor.
    """

    def db_path(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return os.path.join(path, "fedserver.db")

    async def open(self, path: Optional[str] = None, **kw: Any):
        store = await open_store(database_for_test(self, path or self.db_path()), reactor, **kw)
        self.addCleanup(store.close)
        return store


def linear_entries(events: list[Event], state: Optional[dict] = None, **kw: Any) -> list:
    """PersistEntries for events that follow each other, each with the full state before
    it as a map and a current-state delta for state events.

    :param state: the state before the first event (empty by default); updated in place.
    """
    from fedserver.storage import PersistEntry

    state = {} if state is None else state
    entries = []
    for e in events:
        delta = {e.state_tuple: e.event_id} if e.is_state() else None
        entries.append(PersistEntry(e, state_before=dict(state), update_current_state=delta, **kw))
        if e.is_state():
            state[e.state_tuple] = e.event_id
    return entries
