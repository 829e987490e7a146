"""Spec "Iterative auth checks": replay sorted state events on a state map, keeping those the
auth rules allow."""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Mapping, Sequence

from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion
from fedserver.state.graph import CREATE, AuthGraph
from fedserver.state.power import create_event_of_room

logger = logging.getLogger(__name__)

StateKey = tuple[str, str]

#: ``auth_check(event, state)``: whether ``event`` passes the authorization rules against
#: ``state``, a mapping of ``(type, state_key)`` to events from which the check selects the
#: auth events it needs.
AuthCheck = Callable[[Event, Mapping[StateKey, Event]], bool]


#: In :class:`AuthStateView`'s shared lookups: the key is not known there yet.
_UNKNOWN = object()

_CREATE_KEY = (CREATE, "")


class AuthStateView(Mapping[StateKey, Event]):
    """The state one event is checked against during the iterative auth checks.

    A key is looked up in the partially resolved state first; if it is absent there, or its
    event is missing or rejected, the event's own (non-rejected) auth event of that key is
    used, as the spec's definition says. From room v12 the create event, which no event
    cites, is found through the room id.

    Lookups fetch events lazily, so a check reading five keys of a 20,000-entry state costs
    five lookups.
    """

    __slots__ = ("_partial", "_fallback", "_graph", "_rv", "_event", "_node", "_resolved")

    def __init__(
        self,
        partial: Mapping[StateKey, str],
        fallback: dict[StateKey, Event] | None,
        graph: AuthGraph,
        rv: RoomVersion | None = None,
        event: Event | None = None,
        node: int | None = None,
        resolved: dict[StateKey, Event | None] | None = None,
    ):
        """
        :param partial: the partially resolved state, key -> event id.
        :param fallback: the auth events to fall back on, or ``None`` to compute them from
            ``event`` (in room version ``rv``) on the first miss.
        :param graph: where events are looked up.
        :param node: ``event``'s node in ``graph``, if known (its auth events are then
            read from the graph's edges).
        :param resolved: key -> the usable (present, not rejected) event ``partial`` holds
            there, or ``None`` if it holds none; filled as keys are looked up, and shared
            by the views of one run of the iterative auth checks, which keeps it equal to
            ``partial`` (see :func:`iterative_auth_checks`).
        """
        self._partial = partial
        self._fallback = fallback
        self._graph = graph
        self._rv = rv
        self._event = event
        self._node = node
        self._resolved = {} if resolved is None else resolved

    def _fallbacks(self) -> dict[StateKey, Event]:
        fb = self._fallback
        if fb is None:
            if self._event is None or self._rv is None:
                fb = {}
            else:
                fb = auth_event_fallback(self._rv, self._graph, self._event, self._node)
            self._fallback = fb
        return fb

    def _from_partial(self, key: StateKey) -> Event | None:
        ev = None
        eid = self._partial.get(key)
        if eid is not None:
            ev = self._graph.event(eid)
            if ev is not None and ev.rejected_reason is not None:
                ev = None
        self._resolved[key] = ev
        return ev

    def __getitem__(self, key: StateKey) -> Event:
        ev = self.get(key)
        if ev is None:
            raise KeyError(key)
        return ev

    def get(self, key, default=None):  # type: ignore[override]
        # The auth rules mostly ask for keys with .get (a miss is common: no membership
        # yet), so this avoids raising KeyError for them.
        ev = self._resolved.get(key, _UNKNOWN)
        if ev is _UNKNOWN:
            ev = self._from_partial(key)
        if ev is not None:
            return ev
        fb = self._fallback
        if fb is None:
            if key == _CREATE_KEY and self._node is not None:
                ev = self._create_fallback()
                return default if ev is None else ev
            fb = self._fallbacks()
        return fb.get(key, default)

    def _create_fallback(self) -> Event | None:
        """``self._fallbacks().get((CREATE, ""))`` without building the fallbacks: from
        room v12 every check asks for the create event, which no event cites and the
        partial state lacks (step 2 starts from nothing)."""
        rv = self._rv
        event = self._event
        if rv is None or event is None or self._node is None:
            return self._fallbacks().get(_CREATE_KEY)
        graph = self._graph
        parents = graph.parents(self._node)
        if len(parents) != len(event.auth_event_ids):
            return self._fallbacks().get(_CREATE_KEY)
        events = graph.events
        found = None
        for p in parents:  # the last one listed, as in auth_event_fallback
            pe = events[p]
            if (
                pe is not None and pe.type == CREATE and pe.state_key == ""
                and pe.rejected_reason is None
            ):
                found = pe
        if found is None and rv.room_id_from_create_event:
            create = create_event_of_room(graph, event.room_id)
            if create is not None and create.rejected_reason is None:
                found = create
        return found

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None

    def __iter__(self) -> Iterator[StateKey]:
        for key in self._partial:
            if key in self:
                yield key
        for key in self._fallbacks():
            if key not in self._partial:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


def auth_event_fallback(
    rv: RoomVersion, graph: AuthGraph, event: Event, node: int | None = None
) -> dict[StateKey, Event]:
    """The non-rejected auth events of ``event`` by ``(type, state_key)`` (plus, from room
    v12, the create event named by the room id); of two with one key, the one listed last.

    :param node: ``event``'s node in ``graph``, if known: when its edges there are exactly
        its ``auth_events`` (no duplicate, missing or self-citing entry), they are read
        instead of looking each id up again.
    """
    fallback: dict[StateKey, Event] = {}
    aids = event.auth_event_ids
    parents = None if node is None else graph.parents(node)
    if parents is not None and len(parents) == len(aids):
        events = graph.events
        for p in parents:
            pe = events[p]  # never None: edges lead to present events only
            if pe is not None and pe.rejected_reason is None and pe.state_key is not None:
                fallback[(pe.type, pe.state_key)] = pe
    else:
        for aid in aids:
            if not isinstance(aid, str):
                continue
            a = graph.event(aid)
            if a is None or a.rejected_reason is not None or a.state_key is None:
                continue
            fallback[(a.type, a.state_key)] = a
    if rv.room_id_from_create_event and (CREATE, "") not in fallback:
        create = create_event_of_room(graph, event.room_id)
        if create is not None and create.rejected_reason is None:
            fallback[(CREATE, "")] = create
    return fallback


def checked(auth_check: AuthCheck, event: Event, state: Mapping[StateKey, Event]) -> bool:
    """``auth_check(event, state)``, with an exception counted as a denial (and logged): a
    malformed event must not abort the resolution of a whole room."""
    try:
        return bool(auth_check(event, state))
    except Exception:  # noqa: BLE001 - see docstring
        logger.warning("auth check raised for %s during state resolution", event.event_id,
                       exc_info=True)
        return False


def iterative_auth_checks(
    rv: RoomVersion,
    graph: AuthGraph,
    nodes: Sequence[int],
    state: dict[StateKey, str],
    auth_check: AuthCheck,
) -> dict[StateKey, str]:
    """Spec "Iterative auth checks": apply each event of ``nodes`` in order to ``state`` (in
    place) if the auth rules allow it against ``state`` completed by its own auth events.

    Events previously rejected are never admitted (as in Synapse: the spec would re-check
    events rejected against the state at the event, but a server could not store the change
    of their rejection status); their place in the ordering is unaffected.

    :param nodes: sorted state events (nodes of ``graph``); missing ones must be absent.
    :param state: the initial state, ``(type, state_key)`` -> event id; updated in place.
    :returns: ``state``.
    """
    events = graph.events
    # What the views have looked up in ``state``, shared: an admitted event replaces its
    # key's entry below, so it always describes ``state`` as it is.
    resolved: dict[StateKey, Event | None] = {}
    new_view = AuthStateView.__new__
    for n in nodes:
        ev = events[n]
        if ev is None or ev.rejected_reason is not None or ev.state_key is None:
            continue
        # AuthStateView(state, None, graph, rv, ev, n, resolved), without the call of
        # __init__ and its defaults: once per event of the full conflicted set.
        view = new_view(AuthStateView)
        view._partial = state
        view._fallback = None
        view._graph = graph
        view._rv = rv
        view._event = ev
        view._node = n
        view._resolved = resolved
        try:  # checked(), inline: this loop runs once per event of the full conflicted set
            allowed = auth_check(ev, view)
        except Exception:  # noqa: BLE001 - see checked()
            logger.warning("auth check raised for %s during state resolution", ev.event_id,
                           exc_info=True)
            allowed = False
        if allowed:
            key = (ev.type, ev.state_key)
            state[key] = ev.event_id
            resolved[key] = ev
    return state
