"""Reading a room's timeline for clients: /messages (with history fetched from other servers), /context, /event, /members, /joined_members."""

# Client-server API, "Getting events for a room" and "Room participation". Tokens are
# boundaries in the room's topological order, (depth, event_nid) written t<depth>_<nid>; a
# /sync token is accepted too (fedserver.handlers.rooms.rooms). Paging backwards past what
# we hold (before our server joined, or across a gap we skipped) asks the other servers
# for history (fedserver.handlers.federation.backfill) within a time budget: what arrives
# in time is in the same answer; otherwise the answer has what we hold and an `end` token
# to page again ("end: ... If no further events are available (either because we have
# reached the start of the timeline, or because the user does not have permission to see
# any more events), this property is omitted").

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from twisted.logger import Logger

from fedserver.errors import forbidden, invalid_param, not_found
from fedserver.events.model import Event
from fedserver.handlers.rooms.client_events import (
    HISTORY_VISIBILITY_KEY,
    WORLD_READABLE,
    ClientEventSource,
    history_visibility,
    transaction_scope,
)
from fedserver.handlers.rooms.lazy_members import SentMembers, member_keys, pick_members
from fedserver.handlers.rooms.rooms import (
    DEFAULT_MESSAGES_LIMIT,
    MAX_MESSAGES_LIMIT,
    MAX_PAGINATION_ROUNDS,
    EventFilter,
    parse_stream_token,
    parse_topo_token,
    topo_token,
)
from fedserver.storage.rooms.rooms_store import POS_MAX, TopoPos
from fedserver.handlers.requester import Requester

log = Logger()

#: ``membership`` / ``not_membership`` values ``/members`` accepts (spec enum).
MEMBERSHIPS = frozenset({"join", "invite", "knock", "leave", "ban"})
#: History fetches one /messages request may wait for.
MAX_FILLS = 3
#: Member events read at a time for ``/joined_members``: only two strings of each are
#: kept, so a room of 20,000 members never holds all its member events decoded at once.
JOINED_MEMBERS_CHUNK = 1000


class TimelineHandler:
    """The timeline of a room as one user may see it.

    :param events: the shared :class:`~fedserver.handlers.rooms.membership.RoomEvents`.
    :param source: the :class:`~fedserver.handlers.rooms.client_events.ClientEventSource`.
    :param rooms: the :class:`~fedserver.handlers.rooms.rooms.RoomsHandler` (the state a
        user may read).
    :param backfill: a :class:`~fedserver.handlers.federation.backfill.BackfillHandler`,
        or ``None``: nothing is fetched from other servers.
    :param sent_members: what each device was sent of membership events (lazy loading),
        shared with /sync.
    """

    def __init__(
        self,
        events: Any,
        source: ClientEventSource,
        rooms: Any,
        *,
        backfill: Any = None,
        sent_members: Optional[SentMembers] = None,
    ) -> None:
        self.events = events
        self.store = events.store
        self.source = source
        self.rooms = rooms
        self.backfill = backfill
        self.sent_members = sent_members if sent_members is not None else SentMembers()

    # -- access ---------------------------------------------------------------------------

    async def bounds(self, room_id: str, user_id: str) -> tuple[float, Optional[int]]:
        """Visibility bounds of the user in the room; 403 for a user who never had a
        membership in a room that is not world-readable."""
        if await self.events.room_version(room_id) is None:
            raise forbidden("You are not in this room")
        membership = await self.store.rooms.get_membership(room_id, user_id)
        if membership is None:
            hv = await self.store.get_current_state_events(room_id, [HISTORY_VISIBILITY_KEY])
            if history_visibility(hv.get(HISTORY_VISIBILITY_KEY)) != WORLD_READABLE:
                raise forbidden("You are not in this room")
        return await self.source.joined_bounds(room_id, user_id, membership)

    async def start_position(self, room_id: str, token: Optional[str], backwards: bool) -> TopoPos:
        """The boundary a pagination token stands for (``None``: the newest end going
        backwards, the oldest going forwards).

        :raises MatrixError: 400 ``M_INVALID_PARAM`` for a token that is not one of ours.
        """
        if token is None:
            return (POS_MAX, POS_MAX) if backwards else (-1, -1)
        pos = parse_topo_token(token)
        if pos is not None:
            return pos
        stream = parse_stream_token(token)
        if stream is not None:
            found = await self.store.rooms.get_topological_position_at(room_id, stream[0])
            return found if found is not None else (-1, -1)
        raise invalid_param("from", "Invalid pagination token")

    async def _visible_event(self, requester: Requester, room_id: str, event_id: str) -> tuple[Any, Event, tuple[float, Optional[int]]]:
        """The event if the user may see it: ``(meta, event, bounds)``; 404 otherwise."""
        bounds = await self.bounds(room_id, requester.user_id)
        metas = await self.store.get_event_meta([event_id]) if isinstance(event_id, str) else {}
        meta = metas.get(event_id)
        if meta is None or meta.room_id != room_id or meta.outlier or meta.rejected or meta.soft_failed:
            raise not_found("Event not found")
        event = await self.store.get_event(event_id)
        visible = await self.source.filter_for_user(
            requester.user_id, [(meta.event_nid, event)], joined_until=bounds[0], joined_since=bounds[1]
        )
        if event is None or not visible:
            raise not_found("Event not found")
        return meta, event, bounds

    # -- /event ----------------------------------------------------------------------------

    async def get_event(self, requester: Requester, room_id: str, event_id: str) -> dict[str, Any]:
        """``GET /rooms/{roomId}/event/{eventId}``: 404 if not found or not visible; with
        its bundled aggregations."""
        _, event, _ = await self._visible_event(requester, room_id, event_id)
        [served] = await self.source.serialize(
            [event], user_id=requester.user_id, scope=transaction_scope(requester), aggregations=True
        )
        return served

    # -- /messages -------------------------------------------------------------------------

    async def _fill(self, room_id: str, deadline: float, *, max_depth: int, min_depth: Optional[int]) -> bool:
        if self.backfill is None:
            return False
        remaining = deadline - self.source.now_ms() / 1000.0
        if remaining <= 0:
            return False
        return await self.backfill.fill(room_id, max_depth=max_depth, min_depth=min_depth, timeout=remaining)

    async def _more_history(self, room_id: str, pos: TopoPos, to_pos: Optional[TopoPos]) -> bool:
        """Whether events we lack lie behind ``pos`` (a backward extremity at or below it)."""
        if self.backfill is None:
            return False
        found = await self.store.backfill.get_backward_extremities(
            room_id, pos[0], to_pos[0] if to_pos is not None else None, limit=1
        )
        return bool(found)

    async def messages(
        self,
        requester: Requester,
        room_id: str,
        *,
        from_token: Optional[str] = None,
        to_token: Optional[str] = None,
        direction: str = "b",
        limit: Optional[int] = None,
        event_filter: Optional[EventFilter] = None,
    ) -> dict[str, Any]:
        """``GET /rooms/{roomId}/messages``: a page of the events the user may see, history
        fetched from other servers when paging back past what we hold, and with
        ``lazy_load_members`` the senders' membership events in ``state``."""
        if direction not in ("b", "f"):
            raise invalid_param("dir", "dir must be 'b' or 'f'")
        backwards = direction == "b"
        if limit is None:
            limit = DEFAULT_MESSAGES_LIMIT
        limit = max(1, min(int(limit), MAX_MESSAGES_LIMIT))
        flt = event_filter or EventFilter()
        user_id = requester.user_id
        joined_until, joined_since = await self.bounds(room_id, user_id)
        pos = await self.start_position(room_id, from_token, backwards)
        to_pos = None
        if to_token is not None:
            to_pos = await self.start_position(room_id, to_token, not backwards)
        deadline = self.source.now_ms() / 1000.0 + (self.backfill.timeout if self.backfill is not None else 0)
        chosen: list[tuple[int, Event]] = []
        exhausted = False
        fills = 0
        for _ in range(MAX_PAGINATION_ROUNDS):
            want = limit - len(chosen)
            rows = await self.store.rooms.paginate(room_id, pos, backwards, want, to_pos)
            if backwards and fills < MAX_FILLS:
                # A page that reaches a backward extremity (its events, or nothing below)
                # asks for what lies behind it, then reads again.
                partial = len(rows) < want
                lowest = (to_pos[0] if to_pos is not None else None) if partial else rows[-1][0][0]
                if await self._fill(room_id, deadline, max_depth=pos[0], min_depth=lowest):
                    fills += 1
                    rows = await self.store.rooms.paginate(room_id, pos, backwards, want, to_pos)
            if rows:
                last = rows[-1][0]
                pos = (last[0], last[1] - 1) if backwards else last
            if len(rows) < want:
                exhausted = True
            visible = await self.source.filter_for_user(
                user_id, [(p[1], e) for p, e in rows], joined_until=joined_until, joined_since=joined_since
            )
            chosen.extend((nid, e) for nid, e in visible if flt.allows(e))
            if exhausted or len(chosen) >= limit:
                break
        scope = transaction_scope(requester)
        events = [e for _, e in chosen]
        out: dict[str, Any] = {
            "chunk": await self.source.serialize(events, user_id=user_id, scope=scope, aggregations=True),
            "start": from_token if from_token is not None else topo_token(
                (POS_MAX, POS_MAX) if backwards else (-1, -1)
            ),
        }
        if not exhausted or (backwards and await self._more_history(room_id, pos, to_pos)):
            out["end"] = topo_token(pos)
        if flt.lazy_load_members and events:
            members = await self._senders_members(requester, room_id, events, flt.include_redundant_members)
            if members:
                out["state"] = await self.source.serialize(members, user_id=user_id, scope=scope)
        return out

    async def _senders_members(
        self, requester: Requester, room_id: str, events: Sequence[Event], include_redundant: bool
    ) -> list[Event]:
        """The membership event of each sender of ``events`` as of their newest event
        there (spec "Lazy-loading room members"), less those the device was sent."""
        groups = await self.store.rooms.get_event_state_groups([e.event_id for e in events])
        newest: dict[str, Event] = {}
        for e in sorted(events, key=lambda ev: ev.depth):
            newest[e.sender] = e
        ids: list[str] = []
        for sender, e in newest.items():
            pair = groups.get(e.event_id)
            if pair is None:
                continue
            state = await self.store.get_state_group(pair[1])
            ids.extend(i for i in pick_members(state, member_keys([sender])) if i not in ids)
        if not include_redundant:
            ids = self.sent_members.unsent(requester, room_id, ids)
        loaded = await self.store.get_events(ids)
        return [loaded[i] for i in ids if i in loaded]

    # -- /context --------------------------------------------------------------------------

    async def context(
        self, requester: Requester, room_id: str, event_id: str, *, limit: int = 10, event_filter: Optional[EventFilter] = None
    ) -> dict[str, Any]:
        """``GET /rooms/{roomId}/context/{eventId}``: the event, up to ``limit`` events
        around it (history fetched before it if we lack it), tokens to paginate on both
        sides, and the state at the event (with ``lazy_load_members``, only the members
        who sent the events shown)."""
        user_id = requester.user_id
        meta, event, (joined_until, joined_since) = await self._visible_event(requester, room_id, event_id)
        limit = max(0, min(int(limit), MAX_MESSAGES_LIMIT))
        flt = event_filter or EventFilter()
        here = (meta.depth, meta.event_nid)
        before_n = limit // 2
        after_n = limit - before_n
        before = await self.store.rooms.paginate(room_id, (here[0], here[1] - 1), True, before_n)
        if before_n and len(before) < before_n and self.backfill is not None:
            deadline = self.source.now_ms() / 1000.0 + self.backfill.timeout
            if await self._fill(room_id, deadline, max_depth=here[0], min_depth=None):
                before = await self.store.rooms.paginate(room_id, (here[0], here[1] - 1), True, before_n)
        after = await self.store.rooms.paginate(room_id, here, False, after_n)

        async def visible(rows):
            ok = await self.source.filter_for_user(
                user_id, [(p[1], e) for p, e in rows], joined_until=joined_until, joined_since=joined_since
            )
            return [e for _, e in ok if flt.allows(e)]

        scope = transaction_scope(requester)
        start = (before[-1][0][0], before[-1][0][1] - 1) if before else (here[0], here[1] - 1)
        end = after[-1][0] if after else here
        shown_before = await visible(before)
        shown_after = await visible(after)
        groups = await self.store.rooms.get_event_state_groups([event_id])
        state_events: list[Event] = []
        if event_id in groups:
            state = await self.store.get_state_group(groups[event_id][0])
            if flt.lazy_load_members:
                senders = [e.sender for e in [event, *shown_before, *shown_after]]
                wanted = [v for k, v in sorted(state.items()) if k[0] != "m.room.member"]
                members = pick_members(state, member_keys(senders))
                if not flt.include_redundant_members:
                    members = self.sent_members.unsent(requester, room_id, members)
                ids = wanted + members
            else:
                ids = [v for _, v in sorted(state.items())]
            loaded = await self.store.get_events(ids)
            state_events = [loaded[v] for v in ids if v in loaded]
        serialize = self.source.serialize
        return {
            "event": (await serialize([event], user_id=user_id, scope=scope, aggregations=True))[0],
            "events_before": await serialize(shown_before, user_id=user_id, scope=scope, aggregations=True),
            "events_after": await serialize(shown_after, user_id=user_id, scope=scope, aggregations=True),
            "start": topo_token(start),
            "end": topo_token(end),
            "state": await serialize(state_events, user_id=user_id, scope=scope),
        }

    # -- members ---------------------------------------------------------------------------

    async def members(
        self,
        requester: Requester,
        room_id: str,
        *,
        at: Optional[str] = None,
        membership: Optional[str] = None,
        not_membership: Optional[str] = None,
    ) -> dict[str, Any]:
        """``GET /rooms/{roomId}/members``: the member events of the current state (for a
        user who left, as it was when they left), or at the point ``at`` stands for (a
        /sync or /messages token; never later than the user's leave).

        Spec: "When specified alongside not_membership, the two parameters create an 'or'
        condition: either the membership is the same as membership or is not the same as
        not_membership."

        :raises MatrixError: 400 ``M_INVALID_PARAM`` for an unknown membership or token;
            403 as ``GET /state``.
        """
        for name, value in (("membership", membership), ("not_membership", not_membership)):
            if value is not None and value not in MEMBERSHIPS:
                raise invalid_param(name, f"{name} must be one of {', '.join(sorted(MEMBERSHIPS))}")
        user_id = requester.user_id
        # A room joined with partial state has no member list yet: wait for it (MSC3902).
        await self.events.pipeline.wait_full_state(room_id)
        state = await self.rooms.readable_state(room_id, user_id)
        if at is not None:
            state = await self._state_at(room_id, user_id, at, state)
        ids = [v for (t, _), v in state.items() if t == "m.room.member"]
        events = await self.store.get_events(ids)

        def keep(m: Optional[str]) -> bool:
            if membership is None and not_membership is None:
                return True
            return (membership is not None and m == membership) or (not_membership is not None and m != not_membership)

        chosen = []
        for (t, sk), v in sorted(state.items()):
            ev = events.get(v) if t == "m.room.member" else None
            if ev is not None and keep(ev.membership):
                chosen.append(ev)
        chunk = await self.source.serialize(chosen, user_id=user_id, scope=transaction_scope(requester))
        return {"chunk": chunk}

    async def _state_at(
        self, room_id: str, user_id: str, token: str, readable: Mapping[tuple[str, str], str]
    ) -> Mapping[tuple[str, str], str]:
        """The state after the newest event at or before the boundary ``token`` stands
        for (empty before the first one); ``readable`` (the state at the user's leave) if
        the boundary is after the user's leave."""
        try:
            pos = await self.start_position(room_id, token, True)
        except Exception:
            raise invalid_param("at", "Invalid pagination token") from None
        rows = await self.store.rooms.paginate(room_id, pos, True, 1)
        if not rows:
            return {}  # before the room's first event: nobody
        (depth, nid), event = rows[0]
        membership = await self.store.rooms.get_membership(room_id, user_id)
        if membership is not None and membership.membership in ("leave", "ban"):
            leave = await self.store.get_event_meta([membership.event_id])
            m = leave.get(membership.event_id)
            if m is not None and (depth, nid) > (m.depth, m.event_nid):
                return readable
        groups = await self.store.rooms.get_event_state_groups([event.event_id])
        pair = groups.get(event.event_id)
        return await self.store.get_state_group(pair[1]) if pair is not None else readable

    async def joined_members(self, requester: Requester, room_id: str) -> dict[str, Any]:
        """``GET /rooms/{roomId}/joined_members``: for joined members only (403 else)."""
        m = await self.store.rooms.get_membership(room_id, requester.user_id)
        if m is None or m.membership != "join":
            raise forbidden("You are not joined to this room")
        await self.events.pipeline.wait_full_state(room_id)
        state = await self.events.pipeline.current_state(room_id)
        ids = [v for (t, _), v in state.items() if t == "m.room.member"]
        joined: dict[str, Any] = {}
        for i in range(0, len(ids), JOINED_MEMBERS_CHUNK):
            events = await self.store.get_events(ids[i : i + JOINED_MEMBERS_CHUNK])
            for ev in events.values():
                if ev.membership == "join" and ev.state_key is not None:
                    entry = {}
                    for src, dst in (("displayname", "display_name"), ("avatar_url", "avatar_url")):
                        v = ev.content.get(src)
                        if isinstance(v, str):
                            entry[dst] = v
                    joined[ev.state_key] = entry
        return {"joined": joined}
