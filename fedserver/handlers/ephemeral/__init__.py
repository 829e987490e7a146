"""Ephemeral data shared with other users and servers, outside the room DAG.

- :mod:`.receipts`: read receipts (``m.read``, ``m.read.private``, threaded), the fully
  read marker, ``m.receipt`` EDUs both ways, receipts in /sync.
- :mod:`.typing`: typing notifications, in memory with timeouts, ``m.typing`` EDUs both
  ways, typing in /sync.
- :mod:`.presence`: presence of local users (set, synced, idle, offline) and of remote
  users, ``m.presence`` EDUs both ways, presence in /sync.

Each module has its /sync section (:class:`fedserver.handlers.client.sync_sections.SyncSection`)
and its EDU handler; EDUs about a user of another server than the sending one are ignored.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from fedserver.errors import MatrixError
from fedserver.handlers.client.accounts import split_user_id
from fedserver.handlers.rooms.rooms import EventFilter


def server_of(user_id: Any) -> Optional[str]:
    """The server part of a well-formed user id, else ``None``."""
    parts = split_user_id(user_id)
    return None if parts is None else parts[1]


def ephemeral_filter_allows(flt: Any, event_type: str) -> bool:
    """Whether the sync filter's ``room.ephemeral`` part lets events of ``event_type``
    through (``types`` / ``not_types``; ``*`` wildcards as in other filters)."""
    spec = getattr(flt, "spec", None)
    room = spec.get("room") if isinstance(spec, Mapping) else None
    part = room.get("ephemeral") if isinstance(room, Mapping) else None
    if not isinstance(part, Mapping):
        return True
    try:
        return EventFilter(part).allows_type(event_type)
    except MatrixError:
        return True  # a malformed part filters nothing


__all__ = ["ephemeral_filter_allows", "server_of"]
