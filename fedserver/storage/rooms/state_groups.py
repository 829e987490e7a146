"""State groups: the state at events, stored as bounded delta chains with snapshots."""

from __future__ import annotations

import math
import sys
from typing import Mapping, NamedTuple, Optional

from fedserver.storage.cache import LruCache
from fedserver.storage.database import Txn, check_int, check_text
from fedserver.storage.interface import InvalidDataError, StateKey, UnknownStateGroupError
from fedserver.storage.nids import EventRef, StateKeyInterner, check_state_key, resolve_event_nids_txn
from fedserver.state.statemap import StateMap, state_delta

#: Default bound on the number of deltas between a group and its snapshot.
DEFAULT_MAX_CHAIN = 64

_CHAIN_SQL = """
WITH RECURSIVE chain (group_id, prev_group) AS (
    SELECT group_id, prev_group FROM state_groups WHERE group_id = ?
    UNION ALL
    SELECT g.group_id, g.prev_group FROM state_groups g JOIN chain c ON g.group_id = c.prev_group
)
SELECT group_id, prev_group FROM chain
"""

_ENTRIES_SQL = """
SELECT e.group_id, k.type, k.state_key, ev.event_id
FROM state_group_entries e
JOIN state_keys k ON k.type_key_nid = e.type_key_nid
LEFT JOIN events ev ON ev.event_nid = e.event_nid
WHERE e.group_id IN ({})
"""


class GroupMeta(NamedTuple):
    room_id: str
    prev_group: Optional[int]
    chain_length: int
    entry_count: int


def _weigh(state: StateMap) -> int:
    return state.own_entries


class StateGroupStore:
    """Writes and reads state groups.

    A group is a full snapshot, or a delta against ``prev_group``; a delta chain never
    grows beyond ``max_chain`` groups, and a delta larger than half the state is stored
    as a snapshot instead. When a chain is full, the new group is stored as the changes
    since the chain's snapshot (chain length 1) while those stay below
    ``sqrt(2 * max_chain * size)`` entries, and as a new snapshot after that; so a
    20,000-member room writes a few dozen rows per membership change on average, not a
    20,000-row snapshot every ``max_chain`` changes. Reads touch at most ``max_chain``
    groups. Groups are immutable, so read groups are cached as
    :class:`~fedserver.state.statemap.StateMap` objects that share structure with their
    parent (no copy of a 20,000-entry state per event). The cache is bounded by the number
    of entries the maps hold themselves.

    :param keys: the ``(type, state_key)`` interner.
    :param max_chain: the delta chain bound.
    :param cache_weight: how many entries the group cache may hold.
    """

    def __init__(
        self,
        keys: StateKeyInterner,
        *,
        max_chain: int = DEFAULT_MAX_CHAIN,
        cache_weight: int = 100_000,
    ):
        if max_chain < 0:
            raise ValueError("max_chain must not be negative")
        self._keys = keys
        self._max_chain = max_chain
        self._cache: LruCache[int, StateMap] = LruCache(cache_weight, _weigh)

    def get_cached(self, group: int) -> Optional[StateMap]:
        """The group if it is in the cache (callable from any thread)."""
        return self._cache.get(group)

    # -- writing ----------------------------------------------------------------------

    def store_state_group_txn(
        self,
        txn: Txn,
        room_id: str,
        state: Optional[Mapping[StateKey, str]],
        prev_group: Optional[int] = None,
        delta: Optional[Mapping[StateKey, Optional[str]]] = None,
        known: Optional[Mapping[str, EventRef]] = None,
    ) -> int:
        """Store a state group and return its id.

        :param state: the full state; may be ``None`` if ``prev_group`` and ``delta`` are
            given.
        :param prev_group: a group of the same room the state is close to; the delta
            against it is computed unless given.
        :param delta: the changes from ``prev_group`` (``None`` values remove a key);
            trusted over ``state`` when both are given.
        :param known: refs of events not committed yet (the batch being persisted).
        :returns: the new group's id, or an existing group's (``prev_group`` or the
            snapshot under it) if it holds exactly this state.
        :raises InvalidDataError: for malformed maps, or events or a prev group of
            another room.
        :raises UnknownEventsError: if the state names events that are not stored.
        :raises UnknownStateGroupError: if ``prev_group`` does not exist.
        """
        check_text(room_id, "room id")
        if prev_group is None:
            if state is None:
                raise InvalidDataError("a state group needs a state, or a prev_group and a delta")
            flat = _checked_state(state)
            new_map = StateMap.from_dict(flat)
            rows: Mapping[StateKey, Optional[str]] = flat
            snapshot = True
        else:
            check_int(prev_group, "prev_group")
            meta = self.group_meta_txn(txn, prev_group)
            if meta.room_id != room_id:
                raise InvalidDataError(
                    f"state group {prev_group} belongs to {meta.room_id!r}, not {room_id!r}"
                )
            prev_map = self.get_state_group_txn(txn, prev_group)
            if delta is not None:
                delta = _checked_delta(delta)
            elif state is not None:
                delta = state_delta(prev_map, _checked_state(state))
            else:
                raise InvalidDataError("a state group needs a state or a delta")
            if not delta:
                return prev_group
            new_map = prev_map.evolve(delta)
            size = len(new_map)
            snapshot = False
            if 2 * len(delta) > size:
                snapshot = True
            elif meta.chain_length + 1 > self._max_chain:
                # The chain is full. Rather than rewriting the whole state (20,000 rows in
                # a big room, every max_chain events), store the changes since the
                # snapshot at the bottom of the chain, while they stay small: about
                # sqrt(2 * max_chain * size) rows minimises the rows written per group.
                snapshot = True
                if self._max_chain >= 1 and meta.prev_group is not None:
                    base_group = self._chain_base_txn(txn, prev_group)
                    cumulative = state_delta(self.get_state_group_txn(txn, base_group), new_map)
                    if not cumulative:
                        return base_group
                    limit = min(size // 2, int(math.sqrt(2 * self._max_chain * size)))
                    if len(cumulative) <= limit:
                        snapshot = False
                        prev_group, delta = base_group, cumulative
                        meta = self.group_meta_txn(txn, base_group)
            rows = new_map.to_dict() if snapshot else delta

        refs = resolve_event_nids_txn(
            txn, room_id, {v for v in rows.values() if v is not None}, known
        )
        key_nids = self._keys.intern_txn(txn, rows.keys())
        group_id = txn.allocate_ids("state_group", 1)
        if snapshot:
            txn.execute(
                "INSERT INTO state_groups (group_id, room_id, prev_group, chain_length, entry_count)"
                " VALUES (?, ?, NULL, 0, ?)",
                (group_id, room_id, len(new_map)),
            )
            chain_length = 0
        else:
            chain_length = meta.chain_length + 1
            txn.execute(
                "INSERT INTO state_groups (group_id, room_id, prev_group, chain_length, entry_count)"
                " VALUES (?, ?, ?, ?, ?)",
                (group_id, room_id, prev_group, chain_length, len(new_map)),
            )
        txn.executemany(
            "INSERT INTO state_group_entries (group_id, type_key_nid, event_nid) VALUES (?, ?, ?)",
            [
                (group_id, key_nids[k], None if v is None else refs[v].event_nid)
                for k, v in rows.items()
            ],
        )
        pending = txn.local.setdefault("state_groups", {})
        pending[group_id] = (
            new_map,
            GroupMeta(room_id, None if snapshot else prev_group, chain_length, len(new_map)),
        )
        txn.call_after_commit(self._cache.put, group_id, new_map)
        return group_id

    # -- reading ----------------------------------------------------------------------

    def group_meta_txn(self, txn: Txn, group: int) -> GroupMeta:
        """Room, chain length and size of ``group``.

        :raises UnknownStateGroupError: if there is no such group.
        """
        pending = txn.local.get("state_groups")
        if pending and group in pending:
            return pending[group][1]
        row = txn.execute(
            "SELECT room_id, prev_group, chain_length, entry_count FROM state_groups WHERE group_id = ?",
            (group,),
        ).fetchone()
        if row is None:
            raise UnknownStateGroupError(group)
        return GroupMeta(*row)

    def _chain_base_txn(self, txn: Txn, group: int) -> int:
        """The snapshot at the bottom of ``group``'s delta chain."""
        meta = self.group_meta_txn(txn, group)
        while meta.prev_group is not None:
            group = meta.prev_group
            meta = self.group_meta_txn(txn, group)
        return group

    def get_state_group_txn(self, txn: Txn, group: int) -> StateMap:
        """The full state of ``group``.

        :raises UnknownStateGroupError: if there is no such group.
        """
        check_int(group, "state group")
        pending = txn.local.get("state_groups") or {}
        if group in pending:
            return pending[group][0]
        cached = self._cache.get(group)
        if cached is not None:
            return cached
        links = dict(txn.execute(_CHAIN_SQL, (group,)).fetchall())
        if not links:
            raise UnknownStateGroupError(group)
        # Walk from the group down towards its snapshot, stopping at a known map.
        needed: list[int] = []
        base: Optional[StateMap] = None
        g: Optional[int] = group
        while g is not None:
            known = pending[g][0] if g in pending else self._cache.get(g)
            if known is not None:
                base = known
                break
            needed.append(g)
            g = links.get(g)
        per_group: dict[int, dict[StateKey, Optional[str]]] = {g: {} for g in needed}
        intern = sys.intern
        for gid, event_type, state_key, event_id in txn.select_in(_ENTRIES_SQL, needed):
            per_group[gid][(intern(event_type), state_key)] = event_id
        for gid in reversed(needed):
            entries = per_group[gid]
            if base is None:
                # The snapshot at the bottom of the chain.
                base = StateMap.from_dict({k: v for k, v in entries.items() if v is not None})
                if gid != group:
                    self._cache.put(gid, base)
            else:
                base = base.evolve(entries)
        assert base is not None
        self._cache.put(group, base)
        return base


def _checked_state(state: Mapping[StateKey, str]) -> dict[StateKey, str]:
    if not isinstance(state, Mapping):
        raise InvalidDataError("state must be a mapping of (type, state_key) to event id")
    out: dict[StateKey, str] = {}
    for key, value in state.items():
        check_state_key(key)
        check_text(value, "event id")
        out[key] = value
    return out


def _checked_delta(delta: Mapping[StateKey, Optional[str]]) -> dict[StateKey, Optional[str]]:
    if not isinstance(delta, Mapping):
        raise InvalidDataError("delta must be a mapping of (type, state_key) to event id or None")
    out: dict[StateKey, Optional[str]] = {}
    for key, value in delta.items():
        check_state_key(key)
        check_text(value, "event id", nullable=True)
        out[key] = value
    return out
