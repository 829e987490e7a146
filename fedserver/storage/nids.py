"""Translating event ids and (type, state_key) pairs into the integers the tables hold."""

from __future__ import annotations

import sys
from typing import Collection, Iterable, Mapping, NamedTuple, Optional

from fedserver.storage.cache import LruCache
from fedserver.storage.database import Txn, check_text, lookup_ids
from fedserver.storage.interface import InvalidDataError, StateKey, UnknownEventsError


class EventRef(NamedTuple):
    """What the state tables need to know about a stored event."""

    event_nid: int
    room_id: str
    membership: Optional[str]


def lookup_events_txn(txn: Txn, event_ids: Iterable[str]) -> dict[str, EventRef]:
    """``{event_id: EventRef}`` for the stored events among ``event_ids``."""
    ids = lookup_ids(event_ids)
    rows = txn.select_in(
        "SELECT event_id, event_nid, room_id, membership FROM events WHERE event_id IN ({})",
        ids,
    )
    return {r[0]: EventRef(r[1], r[2], r[3]) for r in rows}


def resolve_event_nids_txn(
    txn: Txn,
    room_id: str,
    event_ids: Collection[str],
    known: Optional[Mapping[str, EventRef]] = None,
    what: str = "state events",
) -> dict[str, EventRef]:
    """Refs for ``event_ids``, all of which must be stored and in ``room_id``.

    :param known: refs the caller already has (e.g. events of the batch being persisted).
        A ``dict`` also learns the refs read here: the steps of one transaction that
        name the same events (a join's 20,000-entry state group, then the room's current
        state) read them once.
    :raises UnknownEventsError: if some are not stored.
    :raises InvalidDataError: if some belong to another room.
    """
    refs: dict[str, EventRef] = {}
    missing = []
    for event_id in event_ids:
        ref = known.get(event_id) if known else None
        if ref is None:
            missing.append(event_id)
        else:
            refs[event_id] = ref
    if missing:
        for event_id in missing:
            check_text(event_id, "event id")
        found = lookup_events_txn(txn, missing)
        refs.update(found)
        if isinstance(known, dict):
            known.update(found)
        absent = [e for e in missing if e not in refs]
        if absent:
            raise UnknownEventsError(absent, what)
    wrong = [e for e, ref in refs.items() if ref.room_id != room_id]
    if wrong:
        raise InvalidDataError(
            f"{what} from another room than {room_id!r}: {', '.join(map(repr, wrong[:5]))}"
        )
    return refs


def check_state_key(key: object) -> StateKey:
    """``key`` if it is a ``(type, state_key)`` pair of storable strings.

    :raises InvalidDataError: otherwise.
    """
    if type(key) is not tuple or len(key) != 2:  # type: ignore[arg-type]
        raise InvalidDataError(f"state keys must be (type, state_key) tuples, not {key!r:.60}")
    check_text(key[0], "event type")  # type: ignore[index]
    check_text(key[1], "state_key")  # type: ignore[index]
    return key  # type: ignore[return-value]


class StateKeyInterner:
    """Maps ``(type, state_key)`` pairs to ``type_key_nid`` integers, creating them as
    needed, with a bounded cache of pairs known to be committed.

    :param cache_size: how many pairs to remember.
    """

    def __init__(self, cache_size: int = 200_000):
        self._cache: LruCache[StateKey, int] = LruCache(cache_size)

    def intern_txn(self, txn: Txn, keys: Iterable[StateKey]) -> dict[StateKey, int]:
        """``{key: type_key_nid}`` for every key, inserting the unknown ones."""
        pending: dict[StateKey, int] = txn.local.setdefault("state_keys", {})
        wanted = list(dict.fromkeys(keys))
        result = self._cache.get_many(wanted)
        by_type: dict[str, list[str]] = {}
        for key in wanted:
            if key in result:
                continue
            nid = pending.get(key)
            if nid is not None:
                result[key] = nid
            else:
                by_type.setdefault(key[0], []).append(key[1])
        if not by_type:
            return result
        found: dict[StateKey, int] = {}
        for event_type, state_keys in by_type.items():
            rows = txn.select_in(
                "SELECT state_key, type_key_nid FROM state_keys WHERE type = ? AND state_key IN ({})",
                state_keys,
                (event_type,),
            )
            event_type = sys.intern(event_type)
            for state_key, nid in rows:
                found[(event_type, state_key)] = nid
        for key, nid in found.items():
            self._cache.put(key, nid)  # read from committed rows: safe to cache now
        result.update(found)
        new = [(t, sk) for t, sks in by_type.items() for sk in sks if (t, sk) not in found]
        if new:
            first = txn.allocate_ids("state_key", len(new))
            rows = [(first + i, t, sk) for i, (t, sk) in enumerate(new)]
            txn.executemany(
                "INSERT INTO state_keys (type_key_nid, type, state_key) VALUES (?, ?, ?)", rows
            )
            made = {(t, sk): nid for nid, t, sk in rows}
            pending.update(made)
            result.update(made)
            txn.call_after_commit(self._remember, made)
        return result

    def _remember(self, made: dict[StateKey, int]) -> None:
        for key, nid in made.items():
            self._cache.put(key, nid)
