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

    Without ``auth_order`` the reachability queries walk every auth chain involved down to
    the create event. With it they walk only the part above the point where the state sets'
    chains meet. The event's own ``depth`` field is never used for this: any server can
    forge it, and a wrong shortcut would make this server's answer differ from others'.

    :param get_event: maps an event id to its :class:`Event`; raises :class:`KeyError` if
        unknown.
    :param room_id: if given, events whose ``room_id`` differs are treated as missing.
    :param auth_order: optional event id -> integer *auth order*, strictly greater than the
        auth order of each of the event's auth events, and computed locally (never taken
        from a peer). Storage's persistence order fits, since an event is stored only after
        its auth events: it puts recent events above old history, which is what lets the
        walks stop early. Should it raise :class:`KeyError` or break the rule on an edge
        the walks see, the full walks are used.
    """

    __slots__ = (
        "_get_event", "_room_id", "_auth_order", "_orders", "index", "ids", "events",
        "_parents", "_pl_parent", "room_creates",
    )

    def __init__(
        self,
        get_event: Callable[[str], Event],
        room_id: str | None = None,
        auth_order: Callable[[str], int] | None = None,
    ):
        self._get_event = get_event
        self._room_id = room_id
        self._auth_order = auth_order
        self._orders: dict[int, int] = {}
        #: event id -> node
        self.index: dict[str, int] = {}
        #: node -> event id
        self.ids: list[str] = []
        #: node -> Event, or None if missing
        self.events: list[Event | None] = []
        self._parents: list[tuple[int, ...] | None] = []
        self._pl_parent: dict[int, int] = {}
        #: room id -> its create event (room v12: named by the room id), or None; see
        #: :func:`fedserver.state.power.create_event_of_room`
        self.room_creates: dict[str, Event | None] = {}

    # -- nodes ---------------------------------------------------------------------------

    def node(self, event_id: str) -> int:
        """The node of ``event_id``, fetching the event the first time it is seen."""
        n = self.index.get(event_id)
        if n is not None:
            return n
        return self._new_node(event_id)

    def _new_node(self, event_id: str) -> int:
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
        n = self.index.get(event_id)
        if n is None:
            n = self._new_node(event_id)
        return self.events[n]

    def parents(self, n: int) -> tuple[int, ...]:
        """The nodes of the (present, de-duplicated) ``auth_events`` of node ``n``."""
        ps = self._parents[n]
        if ps is not None:
            return ps
        seen: list[int] = []
        index = self.index
        events = self.events
        for aid in events[n].auth_event_ids:  # type: ignore[union-attr]
            if type(aid) is not str:
                continue
            p = index.get(aid)
            if p is None:
                p = self._new_node(aid)
            if events[p] is not None and p != n and p not in seen:
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

    def order(self, n: int) -> int:
        """The auth order of node ``n``.

        :raises KeyError: if there is no ``auth_order`` or it does not know the event.
        """
        d = self._orders.get(n)
        if d is None:
            if self._auth_order is None:
                raise KeyError(self.ids[n])
            d = self._auth_order(self.ids[n])
            if type(d) is not int:
                raise KeyError(self.ids[n])
            self._orders[n] = d
        return d

    def _orders_of(self, nodes: Iterable[int]) -> list[int]:
        """:meth:`order` of each of ``nodes``, in one pass (it runs for every event of the
        state sets).

        :raises KeyError: as :meth:`order`.
        """
        orders = self._orders
        auth_order = self._auth_order
        ids = self.ids
        out = []
        for n in nodes:
            d = orders.get(n)
            if d is None:
                if auth_order is None:
                    raise KeyError(ids[n])
                d = auth_order(ids[n])
                if type(d) is not int:
                    raise KeyError(ids[n])
                orders[n] = d
            out.append(d)
        return out

    # -- reachability --------------------------------------------------------------------

    def partial_nodes(self, starts: Sequence[Iterable[int]]) -> set[int]:
        """The nodes reachable (a node reaches itself) from some but not all of the start
        sets.

        Without ``auth_order``: first everything reachable from the nodes in *every* set is
        marked (all of it is reachable from every set); then each set is walked from its
        other nodes, stopping at marked nodes. Each node is visited about once, plus once
        per set for the part that differs.

        With ``auth_order``: one walk by descending auth order, carrying a bit mask of the
        sets each node is reachable from, that stops as soon as every pending node is
        reachable from all sets (their ancestors are too), so shared history below the
        differences is never visited. If the auth orders do not decrease along an edge it
        falls back to the first method.

        :param starts: one iterable of nodes per set; missing nodes are ignored.
        :returns: nodes.
        """
        full = (1 << len(starts)) - 1
        mask: dict[int, int] = {}
        events = self.events
        for i, nodes in enumerate(starts):
            bit = 1 << i
            for n in nodes:
                if events[n] is not None:
                    mask[n] = mask.get(n, 0) | bit
        if self._auth_order is not None:
            try:
                fast = self._masks_by_order(dict(mask), full)
            except KeyError:
                fast = None
            if fast is not None:
                return {n for n, m in fast.items() if m != full}
        return self._partial_by_walks(mask, full)

    def _masks_by_order(self, mask: dict[int, int], full: int) -> dict[int, int] | None:
        orders = self._orders
        order = self.order
        parents = self.parents
        known_parents = self._parents
        # One int per heap entry, (order, node) packed as order * 2**32 + node and negated
        # (a max-heap): cheaper to compare than tuples. Nodes are list indexes (< 2**32).
        heap = [-((d << 32) | n) for n, d in zip(mask, self._orders_of(mask))]
        heapq.heapify(heap)
        heappop = heapq.heappop
        heappush = heapq.heappush
        pending = sum(1 for m in mask.values() if m != full)
        while heap and pending:
            key = -heappop(heap)
            n = key & 0xFFFFFFFF
            dn = key >> 32
            m = mask[n]
            if m != full:
                pending -= 1
            ps = known_parents[n]
            if ps is None:
                ps = parents(n)
            for p in ps:
                dp = orders.get(p)
                if dp is None:
                    dp = order(p)
                if dp >= dn:
                    return None  # auth orders do not order this graph: no shortcut
                # Nodes leave the heap by descending order and a parent's order is below
                # its child's, so a parent met here is still in the heap if it has a mask.
                old = mask.get(p)
                if old is None:
                    mask[p] = m
                    heappush(heap, -((dp << 32) | p))
                    if m != full:
                        pending += 1
                    continue
                new = old | m
                if new != old:
                    mask[p] = new
                    if new == full:
                        pending -= 1
        return mask

    def _partial_by_walks(self, start: dict[int, int], full: int) -> set[int]:
        # Exact on any graph, cycles included.
        parents = self.parents
        shared = {n for n, m in start.items() if m == full}
        stack = list(shared)
        while stack:
            for p in parents(stack.pop()):
                if p not in shared:
                    shared.add(p)
                    stack.append(p)
        mask: dict[int, int] = {}
        bit = 1
        while bit < full:
            stack = [n for n, m in start.items() if m & bit and n not in shared]
            seen = set(stack)
            while stack:
                n = stack.pop()
                mask[n] = mask.get(n, 0) | bit
                for p in parents(n):
                    if p not in seen and p not in shared:
                        seen.add(p)
                        stack.append(p)
            bit <<= 1
        return {n for n, m in mask.items() if m != full}

    def auth_difference(self, state_sets: Sequence[Mapping[object, str]]) -> set[int]:
        """Spec "Auth difference": the union minus the intersection of the full auth chains
        of the state sets.

        The full auth chain of a state set is taken to include the set's own events (as
        Synapse computes it). The spec's wording ("the union of the auth chains for each
        event") leaves them out; the two readings differ only for an event present in every
        set that is in some sets' auth chains but not others', and making it part of the
        difference would only replay an event every set already agrees on.

        With ``auth_order``, events present in every set (most of two states of one room)
        are only fetched if the walk gets down to them: see :meth:`_difference_by_order`.

        :returns: nodes.
        """
        if self._auth_order is not None and len(state_sets) > 1:
            try:
                found = self._difference_by_order(state_sets)
            except KeyError:
                found = None
            if found is not None:
                return found
        return self.partial_nodes([self.nodes(s.values()) for s in state_sets])

    def _difference_by_order(self, state_sets: Sequence[Mapping[object, str]]) -> set[int] | None:
        """:meth:`_masks_by_order`'s walk, with the events of every set (the "full" start
        events) entering the heap only when the walk reaches their auth order.

        The walk stops as soon as no event reachable from only some sets is left in the
        heap; full start events below that point cannot change the answer (they and all
        they reach are in every chain), so they are never fetched. Those above it are
        merged into the heap before anything of lower order leaves it, so every mask is
        complete when its event leaves, as in :meth:`_masks_by_order`.

        :returns: the nodes reachable from some but not all sets, or ``None`` if the auth
            orders do not order the graph.
        :raises KeyError: if ``auth_order`` does not know an event.
        """
        full = (1 << len(state_sets)) - 1
        by_id: dict[str, int] = {}
        for i, s in enumerate(state_sets):
            bit = 1 << i
            for eid in s.values():
                by_id[eid] = by_id.get(eid, 0) | bit
        index = self.index
        events = self.events
        auth_order = self._auth_order
        assert auth_order is not None
        node = self.node
        mask: dict[int, int] = {}
        later: list[tuple[int, str]] = []  # full start events not fetched yet
        for eid, m in by_id.items():
            n = index.get(eid)
            if m == full and n is None:
                try:
                    d = auth_order(eid)
                except KeyError:
                    d = None
                if type(d) is int:
                    later.append((d, eid))
                    continue
                if events[node(eid)] is not None:  # only missing events may lack an order
                    raise KeyError(eid)
                continue
            if n is None:
                n = node(eid)
            if events[n] is not None:
                mask[n] = m
        later.sort()
        orders = self._orders
        order = self.order
        parents = self.parents
        known_parents = self._parents
        ids = self.ids
        heap = [-((d << 32) | n) for n, d in zip(mask, self._orders_of(mask))]
        heapq.heapify(heap)
        heappop = heapq.heappop
        heappush = heapq.heappush
        pending = sum(1 for m in mask.values() if m != full)
        while pending:
            # Full start events at or above the next event to leave the heap join it first.
            while later and (not heap or later[-1][0] >= (-heap[0]) >> 32):
                d, eid = later.pop()
                n = node(eid)
                if events[n] is None:
                    continue
                orders[n] = d
                old = mask.get(n)
                if old is None:
                    mask[n] = full
                    heappush(heap, -((d << 32) | n))
                elif old != full:
                    mask[n] = full  # met as an auth event already: in the heap
                    pending -= 1
            if not pending:
                break
            key = -heappop(heap)
            n = key & 0xFFFFFFFF
            dn = key >> 32
            m = mask[n]
            if m != full:
                pending -= 1
            ps = known_parents[n]
            if ps is None:
                ps = parents(n)
            for p in ps:
                dp = orders.get(p)
                if dp is None:
                    dp = order(p)
                if dp >= dn:
                    return None
                old = mask.get(p)
                if old is None:
                    if by_id.get(ids[p]) == full:
                        m_p = full  # a full start event met before its turn
                    else:
                        m_p = m
                        if m != full:
                            pending += 1
                    mask[p] = m_p
                    heappush(heap, -((dp << 32) | p))
                    continue
                new = old | m
                if new != old:
                    mask[p] = new
                    if new == full:
                        pending -= 1
        return {n for n, m in mask.items() if m != full}

    def nodes(self, event_ids: Iterable[str]) -> list[int]:
        """:meth:`node` of each of ``event_ids``."""
        index = self.index
        new_node = self._new_node
        out = []
        for eid in event_ids:
            n = index.get(eid)
            out.append(new_node(eid) if n is None else n)
        return out

    def conflicted_subgraph(self, conflicted: set[int]) -> set[int]:
        """Room v12 "Conflicted state subgraph": every event on an ``auth_events`` path from a
        conflicted event to another conflicted event, endpoints included.

        Given ``auth_order``, the walk down from the conflicted events stops at events
        shallower than the shallowest conflicted event (nothing below can lead back up to
        one, and nothing below is fetched); otherwise it walks everything reachable.

        :param conflicted: nodes of the conflicted state set (missing ones are ignored).
        :returns: nodes, including every present conflicted node.
        """
        present = [n for n in conflicted if self.events[n] is not None]
        if not present:
            return set()
        region = None
        if self._auth_order is not None:
            try:
                region = self._region_above(present, min(self._orders_of(present)))
            except KeyError:
                region = None
        if region is None:
            region = self._region_above(present, None)
        assert region is not None
        if self._auth_order is not None:
            found = self._leading_by_order(region, present)
            if found is not None:
                return found
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

    def _leading_by_order(
        self, region: dict[int, list[int]], targets: list[int]
    ) -> set[int] | None:
        """The nodes of ``region`` from which one of ``targets`` is reachable (themselves
        included), in one pass by ascending auth order: each node's parents, which have
        smaller orders, are decided before it. ``None`` if an edge of the region does not
        decrease the auth order (then the depth-first walk decides).

        Room v12 "Conflicted state subgraph": "Starting from an event in the conflicted
        state set and following auth_events edges may lead to another event in the
        conflicted state set. The union of all such paths between any pair of events in
        the conflicted state set (including endpoints) forms a subgraph": ``region`` is
        what the conflicted events reach, this pass keeps what leads back to one.
        """
        orders = self._orders
        try:
            ranked = sorted(region, key=orders.__getitem__)
        except KeyError:
            return None
        leads = set(targets)
        for n in ranked:
            dn = orders[n]
            hit = n in leads
            for p in region[n]:
                if orders[p] >= dn:
                    return None
                if p in leads:
                    hit = True
            if hit:
                leads.add(n)
        return leads

    def _region_above(
        self, starts: list[int], min_order: int | None
    ) -> dict[int, list[int]] | None:
        """The nodes reachable from ``starts`` (themselves included), each with its parents
        in that set, not going below auth order ``min_order`` (events below are not even
        fetched); ``None`` if an edge does not decrease the auth order while pruning.

        :raises KeyError: if ``auth_order`` does not know an event.
        """
        region: dict[int, list[int]] = {n: [] for n in starts}
        stack = list(starts)
        if min_order is None:
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
        auth_order = self._auth_order
        assert auth_order is not None
        events = self.events
        index = self.index
        orders = self._orders
        order = self.order
        known_parents = self._parents
        while stack:
            n = stack.pop()
            dn = orders.get(n)
            if dn is None:
                dn = order(n)
            ps = region[n]
            edges = known_parents[n]
            if edges is not None:
                # The edges were read already (by the auth difference, mostly): present,
                # de-duplicated events, nothing left to fetch.
                for p in edges:
                    dp = orders.get(p)
                    if dp is None:
                        dp = order(p)
                    if dp >= dn:
                        return None
                    if p in region:
                        ps.append(p)
                    elif dp >= min_order:
                        ps.append(p)
                        region[p] = []
                        stack.append(p)
                continue
            for aid in events[n].auth_event_ids:  # type: ignore[union-attr]
                if not isinstance(aid, str):
                    continue
                known = index.get(aid)
                if known is not None and known in region:
                    if known not in ps and known != n:
                        ps.append(known)
                    continue
                dp = auth_order(aid)
                if type(dp) is not int:
                    raise KeyError(aid)
                if dp >= dn:
                    return None
                if dp < min_order:
                    continue
                p = self.node(aid)
                if events[p] is None:
                    continue
                ps.append(p)
                region[p] = []
                stack.append(p)
        return region
