"""History visibility for servers: whether a server may see an event, memoised per state."""

# Pure logic (no I/O): callers hand in the state at each event and the few events of it
# that matter (the m.room.history_visibility event and the server's users' m.room.member
# events).
#
# The spec states the rules for users (client-server API, "Room History Visibility",
# "Server behaviour"), decided by the state of the room *at that event*:
#
#   1. If the history_visibility was set to world_readable, allow.
#   2. If the user's membership was join, allow.
#   3. If history_visibility was set to shared, and the user joined the room at any point
#      after the event was sent, allow.
#   4. If the user's membership was invite, and the history_visibility was set to
#      invited, allow.
#   5. Otherwise, deny.
#
# A server may see an event if any of its users could. Servers asking us for history
# have a user joined to the room NOW, or the room is world_readable now (the history
# handler answers the others as for a room that does not exist). A user joined now has
# joined "at a point after the event" or was joined at it; so for a server joined now
# rule 3 always allows and `shared` behaves like `world_readable`. A server that is not
# joined now (reading a world_readable room) gets no rule 3: whether one of its users
# joined after the event is not something we can tell. Rules 2 and 4 look at the
# memberships of all the server's users in the state at the event.
#
# The two exceptions of the spec are applied too: an m.room.history_visibility event is
# visible if the visibility before OR after it allows, and a user's own m.room.member
# event if their membership before OR after it allows (so a server always sees its own
# users' joins, and their leaving).

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Mapping, NamedTuple, Optional

from fedserver.events.model import Event
from fedserver.events.redaction import redact

StateKey = tuple[str, str]

WORLD_READABLE = "world_readable"
SHARED = "shared"
INVITED = "invited"
JOINED = "joined"

#: The values the spec defines; anything else is treated as ``shared``.
KNOWN_VISIBILITIES = frozenset({WORLD_READABLE, SHARED, INVITED, JOINED})

HISTORY_VISIBILITY_KEY: StateKey = ("m.room.history_visibility", "")

MEMBER = "m.room.member"


def domain_of(user_id: str) -> Optional[str]:
    """The server name of a user id (the part after the first ``:``), or ``None``."""
    _, sep, domain = user_id.partition(":")
    return domain if sep else None


def history_visibility(event: Optional[Event]) -> str:
    """The visibility an ``m.room.history_visibility`` event sets.

    "By default if no history_visibility is set, or if the value is not understood, the
    visibility is assumed to be shared."

    :param event: the event, or ``None`` if the state has none.
    """
    if event is None:
        return SHARED
    value = event.content.get("history_visibility")
    return value if isinstance(value, str) and value in KNOWN_VISIBILITIES else SHARED


class ServerView(NamedTuple):
    """What decides visibility for one server in one room state.

    :ivar visibility: the history visibility in that state (always one of
        :data:`KNOWN_VISIBILITIES`).
    :ivar memberships: the ``membership`` values of the server's users in that state.
    """

    visibility: str
    memberships: frozenset[str]

    def allows(self, joined_now: bool = True) -> bool:
        """Whether the server may see an event sent in this state (rules 1-5, see the
        module comment).

        :param joined_now: the server has a user joined to the room now (rule 3).
        """
        if self.visibility == WORLD_READABLE or (self.visibility == SHARED and joined_now):
            return True  # rule 1; rule 3 for a server currently in the room
        if "join" in self.memberships:
            return True  # rule 2
        if self.visibility == INVITED and "invite" in self.memberships:
            return True  # rule 4
        return False  # rule 5


def summarise_state(
    state: Mapping[StateKey, str],
    events: Mapping[str, Event],
    server_name: str,
    server_users: Optional[Iterable[str]] = None,
) -> ServerView:
    """Reduce a room state to what decides visibility for ``server_name``.

    :param state: ``{(type, state_key): event_id}``.
    :param events: the state's ``m.room.history_visibility`` event and the server's
        users' ``m.room.member`` events, by id (others may be present; missing ones count
        as absent from the state).
    :param server_users: the server's users that may appear in ``state`` (e.g. everyone
        of that server who ever had a membership in the room); if ``None``, every
        ``m.room.member`` key of ``state`` is examined, which costs O(state size).
    """
    hv_id = state.get(HISTORY_VISIBILITY_KEY)
    visibility = history_visibility(events.get(hv_id) if hv_id is not None else None)
    if server_users is None:
        keys: Iterable[StateKey] = (
            k for k in state if k[0] == MEMBER and domain_of(k[1]) == server_name
        )
    else:
        keys = ((MEMBER, u) for u in server_users if domain_of(u) == server_name)
    memberships = set()
    for key in keys:
        event_id = state.get(key)
        event = events.get(event_id) if event_id is not None else None
        if event is not None and event.membership is not None:
            memberships.add(event.membership)
    return ServerView(visibility, frozenset(memberships))


def needs_state_after(event: Event, server_name: str) -> bool:
    """Whether the state after ``event`` also matters: for history visibility events and
    for the server's own users' membership events (the spec's "before *or* after")."""
    if event.state_key is None:
        return False
    if event.type == HISTORY_VISIBILITY_KEY[0] and event.state_key == "":
        return True
    return event.type == MEMBER and domain_of(event.state_key) == server_name


def is_visible(event: Event, before: ServerView, after: Optional[ServerView], server_name: str) -> bool:
    """Whether ``server_name`` may see ``event``, given the views of the state before it
    and (for the events of :func:`needs_state_after`) after it."""
    if before.allows():
        return True
    return after is not None and needs_state_after(event, server_name) and after.allows()


def federation_pdu(event: Event, visible: bool) -> dict[str, Any]:
    """The PDU to serve: the event as received if visible, else its redacted copy (the
    redaction algorithm of its room version). A redacted copy keeps the hashes and
    signatures, so the receiver can still check it and use it for authorization."""
    pdu = event.to_federation()
    return pdu if visible else redact(pdu, event.room_version)


class ServerVisibility:
    """Decides visibility of many events for one server, summarising each distinct state
    once (events of a backfill batch share a handful of state groups).

    :param server_name: the server asking.
    :param events: the history visibility and membership events the states point at.
    :param server_users: see :func:`summarise_state`.
    :param joined_now: the server has a user joined to the room now (see
        :meth:`ServerView.allows`).
    """

    def __init__(
        self,
        server_name: str,
        events: Mapping[str, Event],
        server_users: Optional[Iterable[str]] = None,
        joined_now: bool = True,
    ) -> None:
        self.server_name = server_name
        self.joined_now = joined_now
        self._events = events
        self._users = None if server_users is None else tuple(server_users)
        self._views: dict[Hashable, ServerView] = {}
        #: How many states were actually summarised (the rest came from the memo).
        self.summarised = 0

    def view(self, key: Hashable, state: Mapping[StateKey, str] | Callable[[], Mapping[StateKey, str]]) -> ServerView:
        """The view of the state identified by ``key`` (e.g. a state group id).

        :param state: the state, or a callable returning it (only called on a memo miss).
        """
        found = self._views.get(key)
        if found is None:
            mapping = state() if callable(state) else state
            found = summarise_state(mapping, self._events, self.server_name, self._users)
            self._views[key] = found
            self.summarised += 1
        return found

    def is_visible(
        self,
        event: Event,
        before_key: Hashable,
        before_state: Mapping[StateKey, str] | Callable[[], Mapping[StateKey, str]],
        after_key: Hashable = None,
        after_state: Mapping[StateKey, str] | Callable[[], Mapping[StateKey, str]] | None = None,
    ) -> bool:
        """:func:`is_visible` with memoised views; the state after is only summarised
        when the state before does not already allow and the event needs it."""
        before = self.view(before_key, before_state)
        if before.allows(self.joined_now):
            return True
        if after_state is None or not needs_state_after(event, self.server_name):
            return False
        return self.view(after_key, after_state).allows(self.joined_now)
