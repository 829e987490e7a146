"""The auth-event DAG of one resolution, interned to integers, with its reachability queries."""

from __future__ import annotations

import heapq
from typing import Callable, Iterable, Mapping, Sequence

from fedserver.events.model import Event

POWER_LEVELS = "m.room.power_levels"
CREATE = "m.room.create"


class AuthGraph:
    """The part of a room's ``auth_events`` graph one state resolution touches.

    Every event id met is given a small integer (its *node*); events are fetched through
    ``get_event`` once, on first use, and only as far as a query needs them, so callers may
    back ``get_event`` by a cache of the room's auth chain without loading all of it.

    An event ``get_event`` cannot supply (it raises :class:`KeyError`) is *missing*: it has no
    parents, is left out of every answer, and edges to it are ignored. This is what servers do
    for events they cannot obtain; every server that has the events computes the same answer.
    When ``room_id`` is given, an event of another room counts as missing too.

    Cycles (possible only with format-V1 ids, which are not hashes) never hang a query: every
    walk keeps a visited mark.

    Without ``auth_depth`` the reachability queries walk every auth chain involved down to
    the create event. With it they walk only the part above the point where the state sets'
    chains meet. The event's own ``depth`` field is never used for this: any server can
    forge it, and a wrong shortcut would make this server's answer differ from others'.

    :param get_event: maps an event id to its :class:`Event`; raises :class:`KeyError` if
        unknown.
    :param room_id: if given, events whose ``room_id`` differs are treated as missing.
    :param auth_depth: optional event id -> *auth depth*, a number strictly greater than the
        auth depth of each of the event's auth events (e.g. 0 for the create event and
        ``1 + max(auth depth of its auth events)`` otherwise, computed once when an event is
        stored). Should it raise :class:`KeyError` or break that rule, the full walks are
        used.
    """

    __slots__ = (
        "_get_event", "_room_id", "_auth_depth", "_depths", "index", "ids", "events",
        "_parents", "_pl_parent",
    )

    def __init__(
        self,
        get_event: Callable[[str], Event],
        room_id: str | None = None,
        auth_depth: Callable[[str], int] | None = None,
    ):
        self._get_event = get_event
        self._room_id = room_id
        self._auth_depth = auth_depth
        self._depths: dict[int, int] = {}
        #: event id -> node
        self.index: dict[str, int] = {}
        #: node -> event id
        self.ids: list[str] = []
        #: node -> Event, or None if missing
        self.events: list[Event | None] = []
        self._parents: list[tuple[int, ...] | None] = []
        self._pl_parent: dict[int, int] = {}

    # -- nodes ---------------------------------------------------------------------------

    def node(self, event_id: str) -> int:
        """The node of ``event_id``, fetching the event the first time it is seen."""
        n = self.index.get(event_id)
        if n is not None:
            return n
        n = len(self.ids)
        self.index[event_id] = n
        self.ids.append(event_id)
        try:
            ev = self._get_event(event_id)
        except KeyError:
            ev = None
        if ev is not None and self._room_id is not None and ev.room_id != self._room_id:
            ev = None
        self.events.append(ev)
        self._parents.append(None if ev is not None else ())
        return n

    def event(self, event_id: str) -> Event | None:
        """The event named ``event_id``, or ``None`` if it is missing."""
        return self.events[self.node(event_id)]

    def parents(self, n: int) -> tuple[int, ...]:
        """The nodes of the (present, de-duplicated) ``auth_events`` of node ``n``."""
        ps = self._parents[n]
        if ps is None:
            seen: list[int] = []
            for aid in self.events[n].auth_event_ids:  # type: ignore[union-attr]
                if not isinstance(aid, str):
                    continue
                p = self.node(aid)
                if self.events[p] is not None and p not in seen and p != n:
                    seen.append(p)
            ps = tuple(seen)
            self._parents[n] = ps
        return ps

    def power_levels_parent(self, n: int) -> int | None:
        """The first ``m.room.power_levels`` event (state key ``""``) among the auth events of
        node ``n``, or ``None``."""
        cached = self._pl_parent.get(n, -2)
        if cached != -2:
            return None if cached == -1 else cached
        found = -1
        for p in self.parents(n):
            ev = self.events[p]
            if ev.type == POWER_LEVELS and ev.state_key == "":  # type: ignore[union-attr]
                found = p
                break
        self._pl_parent[n] = found
        return None if found == -1 else found

    def depth(self, n: int) -> int:
        """The auth depth of node ``n``.

        :raises KeyError: if there is no ``auth_depth`` or it does not know the event.
        """
        d = self._depths.get(n)
        if d is None:
            if self._auth_depth is None:
                raise KeyError(self.ids[n])
            d = self._auth_depth(self.ids[n])
            if type(d) is not int:
                raise KeyError(self.ids[n])
            self._depths[n] = d
        return d

    # -- reachability --------------------------------------------------------------------

    def reach_masks(self, starts: Sequence[Iterable[int]]) -> dict[int, int]:
        """For every node reachable from the start sets, a bit mask of the start sets it is
        reachable from (a node reaches itself).

        Nodes reachable from *every* set may be left out: given ``auth_depth``, the walk goes
        by descending auth depth and stops as soon as every pending node is reachable from
        all sets, since their ancestors are too. Otherwise (or if the auth depths turn out
        not to decrease along an edge) every chain is walked in full.

        :param starts: one iterable of nodes per set; missing nodes are ignored.
        :returns: node -> mask (bit ``i`` for ``starts[i]``); only nodes with a non-zero mask.
        """
        full = (1 << len(starts)) - 1
        mask: dict[int, int] = {}
        for i, nodes in enumerate(starts):
            bit = 1 << i
            for n in nodes:
                if self.events[n] is not None:
                    mask[n] = mask.get(n, 0) | bit
        if self._auth_depth is not None:
            try:
                fast = self._reach_masks_by_depth(dict(mask), full)
            except KeyError:
                fast = None
            if fast is not None:
                return fast
        return self._reach_masks_full(mask)

    def _reach_masks_by_depth(self, mask: dict[int, int], full: int) -> dict[int, int] | None:
        depth = self.depth
        parents = self.parents
        heap = [(-depth(n), n) for n in mask]
        heapq.heapify(heap)
        queued = set(mask)
        pending = sum(1 for m in mask.values() if m != full)
        while heap and pending:
            negd, n = heapq.heappop(heap)
            queued.discard(n)
            m = mask[n]
            if m != full:
                pending -= 1
            d = -negd
            for p in parents(n):
                if depth(p) >= d:
                    return None  # depth does not order this graph: no shortcut
                old = mask.get(p, 0)
                new = old | m
                if new == old:
                    continue
                mask[p] = new
                if p in queued:
                    if new == full:
                        pending -= 1
                else:
                    queued.add(p)
                    heapq.heappush(heap, (-depth(p), p))
                    if new != full:
                        pending += 1
        return mask

    def _reach_masks_full(self, start: dict[int, int]) -> dict[int, int]:
        # One plain walk per distinct bit; correct on any graph, cycles included.
        mask: dict[int, int] = {}
        bits: dict[int, list[int]] = {}
        for n, m in start.items():
            b = 1
            while b <= m:
                if m & b:
                    bits.setdefault(b, []).append(n)
                b <<= 1
        parents = self.parents
        for b, nodes in bits.items():
            seen = set(nodes)
            stack = list(nodes)
            while stack:
                n = stack.pop()
                mask[n] = mask.get(n, 0) | b
                for p in parents(n):
                    if p not in seen:
                        seen.add(p)
                        stack.append(p)
        return mask

    def auth_difference(self, state_sets: Sequence[Mapping[object, str]]) -> set[int]:
        """Spec "Auth difference": the union minus the intersection of the full auth chains
        of the state sets.

        The full auth chain of a state set is taken to include the set's own events (as
        Synapse computes it). The spec's wording ("the union of the auth chains for each
        event") leaves them out; the two readings differ only for an event present in every
        set that is in some sets' auth chains but not others', and making it part of the
        difference would only replay an event every set already agrees on.

        :returns: nodes.
        """
        k = len(state_sets)
        full = (1 << k) - 1
        starts = [[self.node(eid) for eid in s.values()] for s in state_sets]
        masks = self.reach_masks(starts)
        return {n for n, m in masks.items() if m != full}

    def conflicted_subgraph(self, conflicted: set[int]) -> set[int]:
        """Room v12 "Conflicted state subgraph": every event on an ``auth_events`` path from a
        conflicted event to another conflicted event, endpoints included.

        Given ``auth_depth``, the walk down from the conflicted events stops at events
        shallower than the shallowest conflicted event (nothing below can lead back up to
        one, and nothing below is fetched); otherwise it walks everything reachable.

        :param conflicted: nodes of the conflicted state set (missing ones are ignored).
        :returns: nodes, including every present conflicted node.
        """
        present = [n for n in conflicted if self.events[n] is not None]
        if not present:
            return set()
        region = None
        if self._auth_depth is not None:
            try:
                region = self._region_above(present, min(self.depth(n) for n in present))
            except KeyError:
                region = None
        if region is None:
            region = self._region_above(present, None)
        assert region is not None
        # leads[n]: some conflicted event is reachable from n (n itself included), decided
        # in post-order over the region; a back edge of a cycle counts as "does not lead".
        leads: dict[int, bool] = {}
        targets = set(present)
        for root in present:
            if root in leads:
                continue
            stack = [(root, iter(region[root]))]
            on_stack = {root}
            while stack:
                n, it = stack[-1]
                for p in it:
                    if p not in leads and p not in on_stack:
                        on_stack.add(p)
                        stack.append((p, iter(region[p])))
                        break
                else:
                    stack.pop()
                    on_stack.discard(n)
                    leads[n] = n in targets or any(leads.get(p, False) for p in region[n])
        # Every region node is reachable from a conflicted event; it is on a path between
        # two if it also leads to one.
        return {n for n in region if leads.get(n, False)}

    def _region_above(
        self, starts: list[int], min_depth: int | None
    ) -> dict[int, list[int]] | None:
        """The nodes reachable from ``starts`` (themselves included), each with its parents
        in that set, not going below auth depth ``min_depth`` (events below are not even
        fetched); ``None`` if an edge does not decrease the auth depth while pruning.

        :raises KeyError: if ``auth_depth`` does not know an event.
        """
        region: dict[int, list[int]] = {n: [] for n in starts}
        stack = list(starts)
        if min_depth is None:
            parents = self.parents
            while stack:
                n = stack.pop()
                ps = region[n]
                for p in parents(n):
                    ps.append(p)
                    if p not in region:
                        region[p] = []
                        stack.append(p)
            return region
        auth_depth = self._auth_depth
        assert auth_depth is not None
        events = self.events
        index = self.index
        while stack:
            n = stack.pop()
            dn = self.depth(n)
            ps = region[n]
            for aid in events[n].auth_event_ids:  # type: ignore[union-attr]
                if not isinstance(aid, str):
                    continue
                known = index.get(aid)
                if known is not None and known in region:
                    if known not in ps and known != n:
                        ps.append(known)
                    continue
                dp = auth_depth(aid)
                if type(dp) is not int:
                    raise KeyError(aid)
                if dp >= dn:
                    return None
                if dp < min_depth:
                    continue
                p = self.node(aid)
                if events[p] is None:
                    continue
                ps.append(p)
                region[p] = []
                stack.append(p)
        return region
