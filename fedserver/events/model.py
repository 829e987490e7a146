"""The Event: an immutable view of one PDU in a known room version."""

from __future__ import annotations

from typing import Any

from fedserver.events.hashing import compute_event_id, room_id_from_create_event_id
from fedserver.room_versions import EventFormat, RoomVersion


def _edge_ids(edges: Any, rv: RoomVersion) -> tuple[str, ...]:
    if not edges:
        return ()
    if rv.event_format == EventFormat.V1:
        # rooms v1-v2: [[event_id, {"sha256": ...}], ...]
        return tuple(e[0] for e in edges)
    return tuple(edges)


class Event:
    """One PDU and the fields every layer reads from it.

    Build it with :meth:`from_pdu` from a PDU that passed
    :func:`fedserver.events.validation.validate_pdu` (or that we built ourselves).
    The PDU dict is kept as given and must not be mutated afterwards.

    ``state_key`` is ``None`` for non-state events. ``room_id`` of a v12 create event is
    derived from its event id. ``rejected_reason`` is metadata, not part of the PDU: storage
    sets it for events that were rejected on receipt. ``client_txn`` too: for an event made
    here for a client request with a transaction id, ``(user_id, scope, txn_id, path)``, which
    storage records in the transaction that stores the event.
    """

    __slots__ = (
        "pdu", "room_version", "event_id", "room_id", "type", "state_key", "sender",
        "content", "prev_event_ids", "auth_event_ids", "depth", "origin_server_ts",
        "rejected_reason", "client_txn",
    )

    pdu: dict[str, Any]
    room_version: RoomVersion
    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    content: dict[str, Any]
    prev_event_ids: tuple[str, ...]
    auth_event_ids: tuple[str, ...]
    depth: int
    origin_server_ts: int
    rejected_reason: str | None
    client_txn: tuple[str, str, str, str] | None

    @classmethod
    def from_pdu(
        cls, pdu: dict[str, Any], room_version: RoomVersion, event_id: str | None = None
    ) -> "Event":
        """Wrap ``pdu``.

        :param event_id: the id if already known (e.g. loaded from storage); otherwise it is
            read (format V1) or computed from the reference hash.
        """
        self = cls.__new__(cls)
        self.pdu = pdu
        self.room_version = room_version
        if event_id is None:
            if room_version.event_format == EventFormat.V1:
                event_id = pdu["event_id"]
            else:
                event_id = compute_event_id(pdu, room_version)
        self.event_id = event_id
        self.type = pdu["type"]
        self.state_key = pdu.get("state_key")
        self.sender = pdu["sender"]
        content = pdu.get("content")
        self.content = content if isinstance(content, dict) else {}
        room_id = pdu.get("room_id")
        if room_id is None and room_version.room_id_from_create_event and self.type == "m.room.create":
            room_id = room_id_from_create_event_id(event_id)
        self.room_id = room_id
        self.prev_event_ids = _edge_ids(pdu.get("prev_events"), room_version)
        self.auth_event_ids = _edge_ids(pdu.get("auth_events"), room_version)
        self.depth = pdu.get("depth", 0)
        self.origin_server_ts = pdu.get("origin_server_ts", 0)
        self.rejected_reason = None
        self.client_txn = None
        return self

    # -- derived views -------------------------------------------------------------

    def is_state(self) -> bool:
        """Whether this is a state event (has a ``state_key``, even an empty one)."""
        return self.state_key is not None

    @property
    def state_tuple(self) -> tuple[str, str] | None:
        """``(type, state_key)`` for state events, else ``None``."""
        return None if self.state_key is None else (self.type, self.state_key)

    @property
    def membership(self) -> str | None:
        """``content.membership`` of an ``m.room.member`` event, else ``None``."""
        if self.type != "m.room.member":
            return None
        m = self.content.get("membership")
        return m if isinstance(m, str) else None

    @property
    def redacts(self) -> str | None:
        """The event an ``m.room.redaction`` redacts: in ``content`` from v11, top level
        before.  A top-level ``redacts`` in v11+ is ignored: it is not part of that format,
        and Synapse ignores it too (tests/data/synapse_events/redacts_cases.json)."""
        if self.type != "m.room.redaction":
            return None
        if self.room_version.redacts_in_content:
            r = self.content.get("redacts")
        else:
            r = self.pdu.get("redacts")
        return r if isinstance(r, str) else None

    @property
    def origin(self) -> str:
        """The server that sent the event: the domain of its ``sender``."""
        return self.sender.split(":", 1)[1] if ":" in self.sender else ""

    @property
    def signatures(self) -> dict[str, dict[str, str]]:
        s = self.pdu.get("signatures")
        return s if isinstance(s, dict) else {}

    @property
    def unsigned(self) -> dict[str, Any]:
        u = self.pdu.get("unsigned")
        return u if isinstance(u, dict) else {}

    def to_federation(self) -> dict[str, Any]:
        """The PDU as sent to other servers (no local ``event_id`` for formats V2+)."""
        return self.pdu

    def __repr__(self) -> str:
        sk = "" if self.state_key is None else f" state_key={self.state_key!r}"
        return f"<Event {self.event_id} {self.type}{sk} sender={self.sender}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __hash__(self) -> int:
        return hash(self.event_id)
