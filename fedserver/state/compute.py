"""The state before and after an event, from the states after its prev events."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion
from fedserver.state import resolve_state
from fedserver.state.iterative import AuthCheck, StateKey


def state_after(event: Event, state_before: Mapping[StateKey, str]) -> dict[StateKey, str]:
    """Spec: S'(E) is S(E), with E's ``(type, state_key)`` entry replaced by E if E is a
    state event.

    A rejected event (``rejected_reason`` set) changes nothing: it is not part of the room's
    state. A soft-failed event is not rejected and does change the state.

    :param event: the event E.
    :param state_before: S(E), ``(type, state_key)`` -> event id (not modified).
    :returns: S'(E), a new dict.
    """
    after = dict(state_before)
    if event.state_key is not None and event.rejected_reason is None:
        after[(event.type, event.state_key)] = event.event_id
    return after


def state_before_event(
    rv: RoomVersion,
    prev_states: Sequence[Mapping[StateKey, str]],
    get_event: Callable[[str], Event],
    auth_check: AuthCheck,
    *,
    room_id: str | None = None,
    auth_order: Callable[[str], int] | None = None,
) -> dict[StateKey, str]:
    """Spec: S(E) is the resolution of the states after E's ``prev_events``.

    No prev events (the create event): the empty state. States that are equal count once,
    so one prev event, or several whose states agree, need no resolution at all; only
    where branches with different states meet is :func:`~fedserver.state.resolve_state`
    run.

    :param rv: the room version.
    :param prev_states: S'(P) for each prev event P, as plain maps (e.g. rebuilt from
        storage's state groups).
    :param get_event: see :func:`~fedserver.state.resolve_state`.
    :param auth_check: see :func:`~fedserver.state.resolve_state`.
    :param room_id: if given, events of other rooms are treated as missing.
    :param auth_order: see :func:`~fedserver.state.resolve_state`.
    :returns: S(E), a new dict.
    """
    distinct: list[Mapping[StateKey, str]] = []
    for s in prev_states:
        if any(s is d or (len(s) == len(d) and s == d) for d in distinct):
            continue
        distinct.append(s)
    if not distinct:
        return {}
    if len(distinct) == 1:
        return dict(distinct[0])
    return resolve_state(
        rv, distinct, get_event, auth_check, room_id=room_id, auth_order=auth_order
    )
