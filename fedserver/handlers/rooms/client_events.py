"""Serving events to a client: which a user may see, and the client event format (redactions, unsigned)."""

# History visibility for users (client-server API, "Room History Visibility", "Server
# behaviour"), decided on the state of the room *at* each event:
#
#   1. If the history_visibility was set to world_readable, allow.
#   2. If the user's membership was join, allow.
#   3. If history_visibility was set to shared, and the user joined the room at any point
#      after the event was sent, allow.
#   4. If the user's membership was invite, and the history_visibility was set to
#      invited, allow.
#   5. Otherwise, deny.
#
# with the two exceptions: an m.room.history_visibility event is visible if the rule
# allows for the state before OR after it, and so is the user's own m.room.member event.
#
# Beyond these rules, a user always sees their own membership events (who invited,
# kicked or banned them), as other servers do for leave events.
#
# Rule 3 needs "joined at any point after the event": callers pass ``joined_until``, the
# stream position up to which the user was joined at some later point: infinity for a
# user joined now; the position of their leave for a user who was joined when leaving;
# -1 otherwise. An event before that position passes rule 3 under `shared`.

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

from twisted.logger import Logger

from fedserver.events.model import Event
from fedserver.events.redaction import redact
from fedserver.handlers.rooms.redactions import RedactionLookup
from fedserver.handlers.requester import Requester

log = Logger()

StateKey = tuple[str, str]

WORLD_READABLE = "world_readable"
SHARED = "shared"
INVITED = "invited"
JOINED = "joined"
KNOWN_VISIBILITIES = frozenset({WORLD_READABLE, SHARED, INVITED, JOINED})
HISTORY_VISIBILITY_KEY: StateKey = ("m.room.history_visibility", "")

#: Joined at every later point (the user is joined now).
JOINED_NOW = float("inf")

#: The state a client is shown of a room it is invited to or knocked on (spec "Stripped
#: state": these types are recommended).
STRIPPED_STATE_TYPES: tuple[str, ...] = (
    "m.room.create",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.encryption",
)


# -- the client event format ------------------------------------------------------------------


def client_event(
    event: Event,
    now_ms: int,
    *,
    redacted_because: Optional[dict[str, Any]] = None,
    transaction_id: Optional[str] = None,
    include_room_id: bool = True,
) -> dict[str, Any]:
    """``event`` in the client event format (spec "Room Event Format": ``ClientEvent``).

    :param now_ms: to compute ``unsigned.age``.
    :param redacted_because: the (client format) redaction that applies: the content is
        then redacted by the room version's algorithm and the redaction named in
        ``unsigned.redacted_because``.
    :param transaction_id: for the device that sent the event: ``unsigned.transaction_id``.
    :param include_room_id: ``False`` for the /sync format (``ClientEventWithoutRoomID``).
    """
    pdu = event.pdu
    content = event.content
    if redacted_because is not None:
        content = redact(pdu, event.room_version).get("content", {})
    out: dict[str, Any] = {
        "content": content,
        "event_id": event.event_id,
        "origin_server_ts": event.origin_server_ts,
        "sender": event.sender,
        "type": event.type,
    }
    if include_room_id:
        out["room_id"] = event.room_id
    if event.state_key is not None:
        out["state_key"] = event.state_key
    if event.type == "m.room.redaction":
        redacts = event.redacts
        if redacts is not None and redacted_because is None:
            # Clients read the top-level key in every room version (v11 moved it into
            # content; servers keep the top-level copy for older clients).
            out["redacts"] = redacts
    unsigned: dict[str, Any] = {"age": max(0, now_ms - event.origin_server_ts)}
    if redacted_because is not None:
        unsigned["redacted_because"] = redacted_because
    if transaction_id is not None:
        unsigned["transaction_id"] = transaction_id
    out["unsigned"] = unsigned
    return out


def stripped_state_keys(inviter: Optional[str] = None) -> list[tuple[str, str]]:
    """The state keys of a room's stripped state (spec "Stripped state": the recommended
    types), plus the inviter's own ``m.room.member`` event for an invite.

    The spec lets a server include more than the recommended events ("The server might
    include events not described here"); the inviter's membership is what clients show
    an invite by (its name and avatar: Hydrogen names a direct chat invite after it,
    "Unknown DM Name" without it), and Synapse sends it too.
    """
    keys = [(t, "") for t in STRIPPED_STATE_TYPES]
    if inviter is not None:
        keys.append(("m.room.member", inviter))
    return keys


def stripped_state(event: Event) -> dict[str, Any]:
    """The stripped state form of a state event: ``content``, ``sender``, ``state_key``,
    ``type`` (spec "Stripped state")."""
    return {
        "content": event.content,
        "sender": event.sender,
        "state_key": event.state_key if event.state_key is not None else "",
        "type": event.type,
    }


def transaction_scope(requester: Requester) -> str:
    """The scope of a requester's client transaction ids (spec "Transaction identifiers":
    the device, or the access token for a token without a device)."""
    device_id = getattr(requester, "device_id", None)
    if device_id:
        return "d" + device_id
    return "t" + str(getattr(requester, "access_token_id", ""))


# -- history visibility (pure) ----------------------------------------------------------------


def history_visibility(event: Optional[Event]) -> str:
    """The visibility an ``m.room.history_visibility`` event sets; ``shared`` when there is
    none or the value is not understood (spec: "assumed to be shared")."""
    if event is None:
        return SHARED
    value = event.content.get("history_visibility")
    return value if isinstance(value, str) and value in KNOWN_VISIBILITIES else SHARED


class UserView(NamedTuple):
    """What decides visibility for one user in one room state."""

    visibility: str
    membership: Optional[str]

    def allows(self, shared_ok: bool) -> bool:
        """Rules 1-5 (module comment); ``shared_ok``: the user joined after the event."""
        if self.visibility == WORLD_READABLE:
            return True  # 1
        if self.membership == "join":
            return True  # 2
        if self.visibility == SHARED and shared_ok:
            return True  # 3
        if self.visibility == INVITED and self.membership == "invite":
            return True  # 4
        return False  # 5


def user_view(state: Mapping[StateKey, str], events: Mapping[str, Event], user_id: str) -> UserView:
    """Reduce a room state to what decides visibility for ``user_id``.

    :param events: at least the state's history visibility event and the user's member
        event, by id.
    """
    hv_id = state.get(HISTORY_VISIBILITY_KEY)
    member_id = state.get(("m.room.member", user_id))
    member = events.get(member_id) if member_id is not None else None
    return UserView(
        history_visibility(events.get(hv_id) if hv_id is not None else None),
        member.membership if member is not None else None,
    )


def needs_state_after(event: Event, user_id: str) -> bool:
    """The exceptions: history visibility events and the user's own member events are
    also judged on the state after them."""
    if event.state_key is None:
        return False
    if event.type == HISTORY_VISIBILITY_KEY[0] and event.state_key == "":
        return True
    return event.type == "m.room.member" and event.state_key == user_id


# -- serving events ---------------------------------------------------------------------------


class ClientEventSource:
    """Turns stored events into what one user's client may see, batched: one read for the
    state groups, cached state maps, one event load for what they point at, one read for
    redactions and one for transaction ids.

    :param store: the store (with ``store.rooms``, a
        :class:`~fedserver.storage.rooms.rooms_store.RoomsStore`).
    :param clock: ``seconds()`` for ``unsigned.age``.
    """

    def __init__(self, store: Any, clock: Any) -> None:
        self._store = store
        self._clock = clock
        self._redactions = RedactionLookup(store)
        #: What bundles aggregations of child events (``unsigned.m.relations``) when
        #: :meth:`serialize` is asked to: an object with ``async bundle(user_id, events,
        #: include_room_id) -> {event_id: m.relations}`` (the relations handler), or ``None``.
        self.relations: Any = None
        #: Whom each user ignores: an object with ``async get(user_id) -> frozenset``
        #: (:class:`~fedserver.handlers.client.ignored_users.IgnoredUsers`), or ``None``.
        self.ignored: Any = None

    def now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def filter_for_user(
        self,
        user_id: str,
        items: Sequence[tuple[int, Event]],
        *,
        joined_until: float,
        joined_since: Optional[int] = None,
    ) -> list[tuple[int, Event]]:
        """The ``(nid, event)`` items ``user_id`` may see, in the same order.

        :param joined_until: see the module comment (rule 3).
        :param joined_since: the stream position of the user's current join if they are
            joined now: events after it are visible without reading any state (rule 2,
            the user was joined when they were sent).

        Non-state events of users ``user_id`` ignores are left out (spec "Ignoring
        Users": "the client will no longer receive events sent by that user, with the
        exception of state events").
        """
        if not items:
            return []
        if self.ignored is not None:
            ignored = await self.ignored.get(user_id)
            if ignored:
                items = [(nid, e) for nid, e in items if e.state_key is not None or e.sender not in ignored]
                if not items:
                    return []
        if joined_since is not None and all(nid > joined_since for nid, _ in items):
            return list(items)
        store = self._store
        groups = await store.rooms.get_event_state_groups([e.event_id for _, e in items])
        states: dict[int, Mapping[StateKey, str]] = {}
        for g in {g for pair in groups.values() for g in pair}:
            states[g] = await store.get_state_group(g)
        wanted = set()
        for s in states.values():
            for key in (HISTORY_VISIBILITY_KEY, ("m.room.member", user_id)):
                v = s.get(key)
                if v is not None:
                    wanted.add(v)
        events = await store.get_events(wanted) if wanted else {}
        views: dict[int, UserView] = {}

        def view(g: int) -> UserView:
            v = views.get(g)
            if v is None:
                v = views[g] = user_view(states[g], events, user_id)
            return v

        out = []
        for nid, event in items:
            pair = groups.get(event.event_id)
            if pair is None:
                continue  # no state recorded: not part of the room's DAG
            if event.type == "m.room.member" and event.state_key == user_id:
                out.append((nid, event))  # a user always sees what happened to their membership
                continue
            shared_ok = nid < joined_until
            if view(pair[0]).allows(shared_ok) or (
                needs_state_after(event, user_id) and view(pair[1]).allows(shared_ok)
            ):
                out.append((nid, event))
        return out

    async def joined_bounds(
        self, room_id: str, user_id: str, membership: Any = False
    ) -> tuple[float, Optional[int]]:
        """``(joined_until, joined_since)`` of ``user_id`` in the room, for
        :meth:`filter_for_user`.

        :param membership: the user's current
            :class:`~fedserver.storage.rooms.rooms_store.Membership` if already read (``None``:
            they have none); read from storage if not given.
        """
        if membership is False:
            membership = await self._store.rooms.get_membership(room_id, user_id)
        if membership is None:
            return -1, None
        previous = None
        if membership.membership != "join":
            groups = await self._store.rooms.get_event_state_groups([membership.event_id])
            pair = groups.get(membership.event_id)
            if pair is not None:
                state = await self._store.get_state_group(pair[0])
                prev_id = state.get(("m.room.member", user_id))
                if prev_id is not None:
                    prev = await self._store.get_event(prev_id)
                    previous = prev.membership if prev is not None else None
        return joined_bounds(membership, previous)

    async def serialize(
        self,
        events: Sequence[Event],
        *,
        user_id: Optional[str] = None,
        scope: Optional[str] = None,
        include_room_id: bool = True,
        aggregations: bool = False,
    ) -> list[dict[str, Any]]:
        """``events`` in the client event format, with redactions applied and, for the
        events ``user_id`` sent from the device or token ``scope``, their transaction id.

        :param aggregations: bundle the aggregations of their child events under
            ``unsigned.m.relations`` (spec "Aggregations of child events": /messages,
            /context, /event, /relations, /threads, and /sync when ``limited``).
        """
        if not events:
            return []
        now = self.now_ms()
        redactions = await self.applicable_redactions(events)
        txn_ids: dict[str, str] = {}
        if user_id is not None and scope is not None:
            own = [e.event_id for e in events if e.sender == user_id]
            if own:
                txn_ids = await self._store.rooms.get_client_txn_ids(user_id, scope, own)
        out = []
        for e in events:
            because = redactions.get(e.event_id)
            because_json = None
            if because is not None:
                because_json = client_event(because, now, include_room_id=include_room_id)
            out.append(
                client_event(
                    e, now, redacted_because=because_json, transaction_id=txn_ids.get(e.event_id),
                    include_room_id=include_room_id,
                )
            )
        if aggregations and self.relations is not None and user_id is not None:
            bundles = await self.relations.bundle(user_id, events, include_room_id=include_room_id, redacted=redactions)
            for served in out:
                found = bundles.get(served["event_id"])
                if found:
                    served["unsigned"]["m.relations"] = found
        return out

    async def applicable_redactions(self, events: Sequence[Event]) -> dict[str, Event]:
        """``{event_id: the redaction that applies}`` among the indexed redactions."""
        return await self._redactions.applicable(events)


def joined_bounds(membership: Optional[Any], previous_membership: Optional[str] = None) -> tuple[float, Optional[int]]:
    """``(joined_until, joined_since)`` for :meth:`ClientEventSource.filter_for_user` from
    the user's current membership (a :class:`~fedserver.storage.rooms.rooms_store.Membership`)
    and, for a user who is not joined, their membership just before it."""
    if membership is None:
        return -1, None
    if membership.membership == "join":
        return JOINED_NOW, membership.event_nid
    if previous_membership == "join":
        return membership.event_nid, None
    return -1, None

