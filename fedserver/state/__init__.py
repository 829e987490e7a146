"""State resolution (v1, v2, v2.1) and the state at each event, over plain state maps."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion, StateResAlgorithm
from fedserver.state.iterative import AuthCheck, StateKey
from fedserver.state.v1 import resolve_state_v1
from fedserver.state.v2 import resolve_state_v2, resolve_state_v2_1

__all__ = [
    "AuthCheck",
    "StateKey",
    "resolve_state",
    "resolve_state_v1",
    "resolve_state_v2",
    "resolve_state_v2_1",
]


def resolve_state(
    rv: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    get_event: Callable[[str], Event],
    auth_check: AuthCheck,
    *,
    room_id: str | None = None,
    auth_order: Callable[[str], int] | None = None,
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` with the algorithm of ``rv`` (``rv.state_res``).

    :param rv: the room version.
    :param state_sets: the states to resolve, each ``(type, state_key)`` -> event id.
    :param get_event: event id -> :class:`~fedserver.events.model.Event`, raising
        :class:`KeyError` for an event it cannot supply (such events are left out).
    :param auth_check: ``auth_check(event, state) -> bool``: whether ``event`` passes the
        authorization rules against ``state``, a mapping ``(type, state_key)`` -> Event.
    :param room_id: if given, events of other rooms are treated as missing.
    :param auth_order: optional event id -> an integer strictly greater than that of each
        of the event's auth events, computed locally, such as storage's persistence order
        (an event is stored after its auth events). With it v2 and v2.1 walk only the part
        of the auth chains above where the sets meet. Ignored by v1.
    :returns: the resolved state, a new dict ``(type, state_key)`` -> event id.
    :raises ValueError: if ``rv`` names an algorithm this module does not know.
    """
    algorithm = rv.state_res
    if algorithm == StateResAlgorithm.V2:
        return resolve_state_v2(
            rv, state_sets, get_event, auth_check, room_id=room_id, auth_order=auth_order
        )
    if algorithm == StateResAlgorithm.V2_1:
        return resolve_state_v2_1(
            rv, state_sets, get_event, auth_check, room_id=room_id, auth_order=auth_order
        )
    if algorithm == StateResAlgorithm.V1:
        return resolve_state_v1(rv, state_sets, get_event, auth_check, room_id=room_id)
    raise ValueError(f"unknown state resolution algorithm {algorithm!r}")
