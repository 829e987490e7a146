"""Which stored redactions apply to events: shared by what clients and other servers are served."""

# Rooms v1-v2: the auth rules checked a redaction when it was accepted (rule 11), so an
# accepted redaction applies. From v3 the auth rules accept any redaction and the room
# versions' "Handling redactions" section moves the check to its use:
#
#   "While redactions are always accepted by the authorization rules for events, they
#   should not be sent to clients until both the redaction event and the event the
#   redaction affects have been received, and can be validated. If both events are valid
#   and have been seen by the server, then the server applies the redaction if one of the
#   following conditions is met:
#     1. The power level of the redaction event's sender is greater than or equal to the
#        redact level.
#     2. The domain of the redaction event's sender matches that of the original event's
#        sender."

from __future__ import annotations

from typing import Any, Sequence

from fedserver.auth.auth_state import AuthState
from fedserver.auth.selection import CREATE_KEY, POWER_LEVELS_KEY
from fedserver.events.model import Event
from fedserver.room_versions import EventFormat



class RedactionLookup:
    """Finds the redaction that applies to each of some events, batched: one read of the
    redaction index, one load of the redactions, and the power levels only where the
    senders' servers differ.

    :param store: the store (with ``store.rooms``, a
        :class:`~fedserver.storage.rooms.rooms_store.RoomsStore` holding the redaction index).
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    async def applicable(self, events: Sequence[Event]) -> dict[str, Event]:
        """``{event_id: the redaction that applies}`` for those of ``events`` that an
        accepted redaction of the same room redacts (the first applicable one by id)."""
        if not events:
            return {}
        store = self._store
        by_target = await store.rooms.get_redactions([e.event_id for e in events])
        if not by_target:
            return {}
        loaded = await store.get_events({r for rs in by_target.values() for r in rs}, allow_rejected=False)
        targets = {e.event_id: e for e in events}
        out: dict[str, Event] = {}
        for target_id, redaction_ids in by_target.items():
            target = targets.get(target_id)
            if target is None:
                continue
            for rid in redaction_ids:
                r = loaded.get(rid)
                if r is not None and await self.applies(r, target):
                    out[target_id] = r
                    break
        return out

    async def applies(self, redaction: Event, target: Event) -> bool:
        """Whether ``redaction`` applies to ``target`` (see the module comment)."""
        if redaction.room_id != target.room_id:
            return False
        if redaction.room_version.event_format == EventFormat.V1:
            return True  # v1-v2: rule 11 checked it on receipt
        if redaction.origin == target.origin:
            return True  # condition 2: same server
        groups = await self._store.rooms.get_event_state_groups([redaction.event_id])
        pair = groups.get(redaction.event_id)
        if pair is None:
            return False
        state = await self._store.get_state_group(pair[0])
        wanted = [v for v in (state.get(POWER_LEVELS_KEY), state.get(CREATE_KEY)) if v is not None]
        found = await self._store.get_events(wanted)
        pl = found.get(state.get(POWER_LEVELS_KEY, ""))
        create = found.get(state.get(CREATE_KEY, ""))
        auth_events = {POWER_LEVELS_KEY: pl} if pl is not None else {}
        view = AuthState(redaction.room_version, redaction, auth_events, create)
        return view.sender_level >= view.power_levels.redact  # condition 1
