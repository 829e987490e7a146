"""Which thread an event belongs to (Client-Server "Threaded read receipts")."""

from __future__ import annotations

from typing import Any, Optional

from fedserver.events.model import Event

#: The thread id of the main timeline.
MAIN_THREAD = "main"
#: Relations followed before deciding an event is not in a thread (the spec recommends 3).
MAX_HOPS = 3


def relation(content: Any) -> tuple[Optional[str], Optional[str]]:
    """``(rel_type, event_id)`` of ``content["m.relates_to"]`` (``None`` parts when absent
    or malformed)."""
    rel = content.get("m.relates_to") if isinstance(content, dict) else None
    if not isinstance(rel, dict):
        return None, None
    rel_type, target = rel.get("rel_type"), rel.get("event_id")
    return (rel_type if isinstance(rel_type, str) else None, target if isinstance(target, str) else None)


async def thread_of(store: Any, event: Event) -> str:
    """The thread root's id if ``event`` is in a thread, else ``"main"``.

    Spec: an event is in a thread if it has an ``m.thread`` relation, or if following its
    relations (at most 3 hops) reaches an event that has one. Thread roots are in the main
    timeline, as are events related to them through other relations.
    """
    current: Optional[Event] = event
    for _ in range(MAX_HOPS):
        if current is None:
            break
        rel_type, target = relation(current.content)
        if target is None:
            break
        if rel_type == "m.thread":
            return target
        current = await store.get_event(target)
        if current is not None and current.room_id != event.room_id:
            break
    return MAIN_THREAD


__all__ = ["MAIN_THREAD", "MAX_HOPS", "relation", "thread_of"]
