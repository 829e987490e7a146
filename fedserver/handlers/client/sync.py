"""GET /sync: the user's rooms (joined, invited, knocked, left) since a token, long-polling through the notifier."""

# A token is "s<event nid>_<account data position>". A full sync (no token) returns every
# joined room with its newest events and the state before them, and every invite and
# knock. An incremental sync returns, for rooms the user is joined to, the events after
# the token (the state changed in the gap if the timeline is limited); a room joined since
# the token comes in full; rooms left since the token come under "leave" with the events
# up to the leave; new invites and knocks come with their stripped state.

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.events.canonical import CanonicalJSONError, parse_json
from fedserver.events.model import Event
from fedserver.handlers.rooms.client_events import (
    ClientEventSource,
    joined_bounds,
    stripped_state,
    stripped_state_keys,
    transaction_scope,
)
from fedserver.handlers.client.notifier import Notifier
from fedserver.handlers.client.sync_sections import SyncContext, SyncSection, SyncToken, check_section_key
from fedserver.handlers.rooms.lazy_members import SentMembers, member_keys, pick_members
from fedserver.handlers.rooms.rooms import EventFilter, topo_token
from fedserver.errors import invalid_param
from fedserver.storage.rooms.rooms_store import Membership, Timeline
from fedserver.handlers.requester import Requester

log = Logger()

#: Timeline events per room when the filter does not say.
DEFAULT_TIMELINE_LIMIT = 10
#: Most timeline events per room, whatever the filter says.
MAX_TIMELINE_LIMIT = 500


class SyncFilter:
    """The parts of a sync ``Filter`` (spec "Filtering") that are honoured: ``room.rooms``,
    ``room.not_rooms``, ``room.include_leave``, ``room.timeline`` (``limit``, types,
    senders), ``room.state`` and ``room.account_data`` (types, senders), and
    ``account_data`` (types), and ``lazy_load_members`` / ``include_redundant_members``
    (in ``room.state``, or ``room.timeline``). ``event_fields``, ``event_format`` and
    ``presence`` are accepted and ignored.

    :raises MatrixError: 400 ``M_INVALID_PARAM`` for a malformed filter.
    """

    def __init__(self, spec: Optional[Mapping[str, Any]] = None):
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise invalid_param("filter", "A filter must be a JSON object")
        #: The filter as given: sync sections read their own parts of it.
        self.spec: Mapping[str, Any] = spec
        room = spec.get("room") or {}
        if not isinstance(room, Mapping):
            raise invalid_param("filter", "filter room must be an object")
        self.rooms = EventFilter({k: room[k] for k in ("rooms", "not_rooms") if k in room})
        self.include_leave = room.get("include_leave") is True
        self.timeline = EventFilter(_obj(room.get("timeline")))
        self.state = EventFilter(_obj(room.get("state")))
        self.room_account_data = EventFilter(_obj(room.get("account_data")))
        self.account_data = EventFilter(_obj(spec.get("account_data")))
        # Spec "Lazy-loading room members": enabled on a RoomEventFilter; clients set it on
        # room.state (Element, matrix-js-sdk), some on room.timeline.
        lazy = self.state if self.state.lazy_load_members else self.timeline
        self.lazy_load_members = lazy.lazy_load_members
        self.include_redundant_members = lazy.include_redundant_members
        limit = self.timeline.limit
        self.timeline_limit = DEFAULT_TIMELINE_LIMIT if limit is None else min(limit, MAX_TIMELINE_LIMIT)


def _obj(value: Any) -> Optional[Mapping[str, Any]]:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise invalid_param("filter", "filter parts must be objects")
    return value


@dataclass(frozen=True)
class _Window:
    """What one /sync answer covers: who asks (and the transaction scope of their
    device), with which filter, and the event stream positions from the client's token
    (``None`` on an initial sync) to now."""

    requester: Requester
    scope: str
    flt: SyncFilter
    since_nid: Optional[int]
    now_nid: int
    full_state: bool

    @property
    def user_id(self) -> str:
        return self.requester.user_id


class SyncHandler:
    """Builds /sync answers.

    :param store: the store (``store.rooms``; ``store.accounts`` for filters and account
        data if present).
    :param notifier: the :class:`~fedserver.handlers.client.notifier.Notifier` the pipeline
        feeds.
    :param source: the :class:`~fedserver.handlers.rooms.client_events.ClientEventSource`.
    :param clock: ``seconds()``.
    """

    def __init__(
        self, store: Any, notifier: Notifier, source: ClientEventSource, clock: Any,
        sections: Sequence[SyncSection] = (), sent_members: Optional[SentMembers] = None,
    ) -> None:
        self.store = store
        #: What each device was sent of membership events (lazy loading; shared with /messages).
        self.sent_members = sent_members if sent_members is not None else SentMembers()
        self.notifier = notifier
        self.source = source
        self.clock = clock
        self._sections: list[SyncSection] = []
        for section in sections:
            self.register_section(section)
        #: ``(requester, set_presence) -> callable or None`` run when a /sync starts; what
        #: it returns is called when that /sync ends (presence tracks who is syncing).
        self.on_sync: list[Callable[[Any, Optional[str]], Any]] = []

    def register_section(self, section: SyncSection) -> None:
        """Add an area's part of /sync (see :mod:`fedserver.handlers.client.sync_sections`).

        :raises ValueError: if its key is malformed or taken.
        """
        key = check_section_key(section.key)
        if any(s.key == key for s in self._sections):
            raise ValueError(f"sync section key {key!r} is already registered")
        self._sections.append(section)

    async def load_filter(self, user_id: str, value: Optional[str]) -> SyncFilter:
        """A filter given inline (JSON starting with ``{``) or by id.

        :raises MatrixError: 400 ``M_INVALID_PARAM`` for bad JSON or an unknown id.
        """
        if value is None or value == "":
            return SyncFilter()
        if value.lstrip().startswith("{"):
            try:
                spec = parse_json(value)  # the one strict parser, as for request bodies
            except CanonicalJSONError as e:
                raise invalid_param("filter", f"filter is not valid JSON: {e}") from None
            return SyncFilter(spec)
        accounts = getattr(self.store, "accounts", None)
        if not value.isascii() or not value.isdigit() or len(value) > 18 or accounts is None:
            raise invalid_param("filter", "Unknown filter")
        spec = await accounts.get_filter(user_id, int(value))
        if spec is None:
            raise invalid_param("filter", "Unknown filter")
        return SyncFilter(spec)

    async def sync(
        self,
        requester: Requester,
        *,
        since: Optional[str] = None,
        timeout_ms: int = 0,
        full_state: bool = False,
        filter_param: Optional[str] = None,
        set_presence: Optional[str] = None,
    ) -> dict[str, Any]:
        """``GET /sync``.

        :param timeout_ms: how long to wait for something new (incremental syncs only;
            bounded by the notifier).
        :param set_presence: the client's ``set_presence`` (given to :attr:`on_sync`).
        :raises MatrixError: 400 ``M_INVALID_PARAM`` for a bad token, filter or
            ``set_presence``.
        """
        if set_presence not in (None, "online", "offline", "unavailable"):
            raise invalid_param("set_presence", "set_presence must be online, offline or unavailable")
        ends = [listener(requester, set_presence) for listener in list(self.on_sync)]
        try:
            return await self._sync(requester, since, timeout_ms, full_state, filter_param)
        finally:
            for end in ends:
                if callable(end):
                    end()

    async def _sync(
        self, requester: Requester, since: Optional[str], timeout_ms: int, full_state: bool, filter_param: Optional[str]
    ) -> dict[str, Any]:
        user_id = requester.user_id
        flt = await self.load_filter(user_id, filter_param)
        since_pos = None
        if since:
            since_pos = SyncToken.parse(since)
            if since_pos is None:
                raise invalid_param("since", "Invalid sync token")
        deadline = self.clock.seconds() + max(0, timeout_ms) / 1000.0
        if flt.lazy_load_members and (since_pos is None or full_state):
            self.sent_members.forget(requester)  # the device starts again from nothing
        while True:
            position = self.notifier.position()
            result, rooms, sections_changed = await self._compute(requester, flt, since_pos, full_state)
            if since_pos is None or full_state or timeout_ms <= 0 or sections_changed or not _is_empty(result):
                return result
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                return result
            woken = await self.notifier.wait(user_id, rooms, position, int(remaining * 1000))
            if not woken:
                return result

    # -- building -----------------------------------------------------------------------------

    async def _compute(
        self, requester: Requester, flt: SyncFilter, since: Optional[SyncToken], full_state: bool
    ) -> tuple[dict[str, Any], list[str], bool]:
        """The answer, the rooms to wait on, and whether a section added anything.

        Built in the order of the spec's ``GET /sync`` response: ``rooms`` (``join``,
        ``leave``, ``invite``, ``knock``), the global ``account_data``, then the other
        areas' sections (``presence``, ``to_device``, ``device_lists``,
        ``device_one_time_keys_count``, ...), and ``next_batch`` from the positions read
        first.
        """
        user_id = requester.user_id
        # Every section's position first: what happens while the answer is built is then
        # sent by the next sync, never skipped.
        section_now = await self._section_positions(user_id)
        window = await self._window(requester, flt, since, full_state)
        memberships, forgotten = await self._memberships(user_id, flt)
        global_data, room_data, ad_now = await self._account_data_since(user_id, since)

        joined = [m for m in memberships if m.membership == "join"]
        wait_rooms = [m.room_id for m in joined]
        joined, completed = await self._without_partial_state(joined, since, section_now)
        ranges, fresh, leaves = await self._timeline_ranges(window, memberships, joined, completed)
        timelines = await self.store.rooms.get_room_timelines(ranges, flt.timeline_limit) if ranges else {}
        join_out = await self._joined_rooms(window, joined, ranges, fresh, timelines, room_data)
        leave_out = await self._left_rooms(window, leaves, timelines, room_data)
        # Spec "Ignoring Users": "Servers must not send room invites from ignored users
        # to clients" (the invite stays; it shows again if the user is un-ignored and the
        # client syncs from scratch).
        ignorers = getattr(self.source, "ignored", None)
        ignored = await ignorers.get(user_id) if ignorers is not None else frozenset()
        invite_out, knock_out = await self._invited_and_knocked_rooms(window, memberships, ignored)
        local_nids = dict(forgotten)
        local_nids.update((m.room_id, m.event_nid) for m in memberships)
        await self._remote_memberships(
            user_id, window.scope, window.since_nid, window.now_nid, flt, local_nids, invite_out, knock_out,
            leave_out, ignored,
        )

        result = {
            "next_batch": "",
            "rooms": {"join": join_out, "invite": invite_out, "leave": leave_out, "knock": knock_out},
            "account_data": {
                "events": [
                    {"type": t, "content": c} for t, c in sorted(global_data.items()) if flt.account_data.allows_type(t)
                ]
            },
            "presence": {"events": []},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
        }
        # The other areas' sections, each from the client's position to the one read above.
        ctx = SyncContext(
            requester=requester, filter=flt, full_state=full_state, initial=since is None,
            joined=[m.room_id for m in joined], newly_joined={m.room_id for m in joined if m.room_id in fresh},
            left={m.room_id for m in leaves}, result=result,
            _empty_room=lambda: self._empty_joined({}, flt),
            since_events=window.since_nid, now_events=window.now_nid,
        )
        positions, sections_changed = await self._contribute_sections(ctx, since, section_now, full_state)
        result["next_batch"] = SyncToken(window.now_nid, ad_now, positions).render()
        return result, wait_rooms + [m.room_id for m in memberships if m.membership in ("invite", "knock")], sections_changed

    async def _section_positions(self, user_id: str) -> dict[str, int]:
        """Each registered section's current position, by key (the ``next_batch`` parts
        of the other areas)."""
        section_now = {}
        for section in self._sections:
            section_now[section.key] = await defer.maybeDeferred(section.current_position, user_id)
        return section_now

    async def _window(
        self, requester: Requester, flt: SyncFilter, since: Optional[SyncToken], full_state: bool
    ) -> "_Window":
        """The event stream positions the answer covers: from the client's ``since``
        token (``None`` on an initial sync) to now."""
        now_nid = await self.store.rooms.get_stream_position()
        since_nid = since.events if since is not None else None
        if since_nid is not None and since_nid > now_nid:
            since_nid = now_nid  # a token from the future (another database?): start over from now
        return _Window(requester, transaction_scope(requester), flt, since_nid, now_nid, full_state)

    async def _memberships(self, user_id: str, flt: SyncFilter) -> tuple[list[Membership], dict[str, int]]:
        """The user's memberships in the rooms the filter selects (``room.rooms``,
        ``room.not_rooms``), less the forgotten ones, and the forgotten rooms (room ->
        nid of the membership event forgotten)."""
        memberships = await self.store.rooms.get_memberships_for_user(user_id)
        forgotten = await self.store.rooms.get_forgotten_rooms(user_id)
        memberships = [
            m for m in memberships if flt.rooms.allows_room(m.room_id) and forgotten.get(m.room_id) != m.event_nid
        ]
        return memberships, forgotten

    async def _account_data_since(
        self, user_id: str, since: Optional[SyncToken]
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int]:
        """Spec ``GET /sync`` ``account_data`` ("The global private data created by this
        user") and each room's ``account_data``, changed since the token.

        :returns: ``(global data, room -> room data, account data position now)``.
        """
        accounts = getattr(self.store, "accounts", None)
        ad_since = since.account_data if since is not None else 0
        if accounts is None:
            return {}, {}, ad_since
        changes = await accounts.get_account_data_since(user_id, ad_since)
        return changes.global_data, changes.rooms, changes.stream_id

    async def _without_partial_state(
        self, joined: list[Membership], since: Optional[SyncToken], section_now: Mapping[str, int]
    ) -> tuple[list[Membership], set[str]]:
        """Rooms joined with partial state are left out until their resync ends; then they
        are sent whole, as if just joined (MSC3902: without lazy-loaded members, "partial-
        state rooms are omitted from the response").

        :returns: the joined rooms to send, and those whose resync ended since the token.
        """
        completed: set[str] = set()
        if PARTIAL_STATE_SECTION in section_now:
            ps_since = since.sections.get(PARTIAL_STATE_SECTION) if since is not None else None
            partial, completed = await self.store.partial_state.get_sync_view(
                [m.room_id for m in joined], ps_since, section_now[PARTIAL_STATE_SECTION]
            )
            joined = [m for m in joined if m.room_id not in partial]
        return joined, completed

    async def _timeline_ranges(
        self, window: "_Window", memberships: Sequence[Membership], joined: Sequence[Membership], completed: set[str]
    ) -> tuple[dict[str, tuple[int, int]], set[str], list[Membership]]:
        """Which rooms of ``rooms.join`` and ``rooms.leave`` have a timeline, over which
        stream range (all read in one transaction afterwards).

        A room joined since the token (or whose partial-state resync ended) comes whole
        from the start of the stream; a joined room with something new since the token,
        from the token; a room left or banned from since the token (or any, for an
        initial sync with ``include_leave``), from the token up to the leave.

        :returns: ``(room -> (from, to) nids, rooms whose full state is sent, leaves)``.
        """
        since_nid, now_nid = window.since_nid, window.now_nid
        # Which joined rooms have anything new, in one read.
        if since_nid is None or window.full_state:
            changed = {m.room_id for m in joined}
        else:
            changed = await self.store.rooms.get_rooms_changed([m.room_id for m in joined], since_nid, now_nid)
        ranges: dict[str, tuple[int, int]] = {}
        fresh: set[str] = set()  # rooms whose full state is sent
        for m in joined:
            new_join = since_nid is None or m.event_nid > since_nid or m.room_id in completed
            if new_join or window.full_state:
                fresh.add(m.room_id)
            if new_join:
                ranges[m.room_id] = (0, now_nid)
            elif m.room_id in changed or window.full_state:
                ranges[m.room_id] = (since_nid, now_nid)
        leaves = [
            m for m in memberships
            if m.membership in ("leave", "ban")
            and (
                (since_nid is not None and m.event_nid > since_nid)
                or (since_nid is None and window.flt.include_leave)
            )
        ]
        for m in leaves:
            ranges[m.room_id] = (since_nid or 0, m.event_nid)
            fresh.add(m.room_id)
        return ranges, fresh, leaves

    async def _joined_rooms(
        self,
        window: "_Window",
        joined: Sequence[Membership],
        ranges: Mapping[str, tuple[int, int]],
        fresh: set[str],
        timelines: Mapping[str, Timeline],
        room_data: Mapping[str, Mapping[str, Any]],
    ) -> dict[str, Any]:
        """Spec ``GET /sync`` ``rooms.join``: "The rooms that the user has joined", each
        with its timeline, state, account data and ``summary`` (``m.heroes``,
        ``m.joined_member_count``, ``m.invited_member_count``); a room with nothing new
        but its account data comes with that alone."""
        user_id = window.user_id
        summaries = await self.store.rooms.get_room_members_summary([m.room_id for m in joined if m.room_id in ranges])
        join_out: dict[str, Any] = {}
        for m in joined:
            if m.room_id not in ranges:
                if m.room_id in room_data:
                    join_out[m.room_id] = self._empty_joined(room_data[m.room_id], window.flt)
                continue
            join_out[m.room_id] = await self._room(
                user_id, window.scope, m, timelines[m.room_id], window.since_nid, m.room_id in fresh, window.flt,
                room_data.get(m.room_id, {}), end_nid=window.now_nid, requester=window.requester,
                whole=ranges[m.room_id][0] == 0,
            )
            summary = summaries.get(m.room_id)
            if summary is not None:
                # "The list must never include the client's own user ID"; "the first 5 members".
                join_out[m.room_id]["summary"] = {
                    "m.heroes": [u for u in summary.heroes if u != user_id][:5],
                    "m.joined_member_count": summary.joined,
                    "m.invited_member_count": summary.invited,
                }
        return join_out

    async def _left_rooms(
        self,
        window: "_Window",
        leaves: Sequence[Membership],
        timelines: Mapping[str, Timeline],
        room_data: Mapping[str, Mapping[str, Any]],
    ) -> dict[str, Any]:
        """Spec ``GET /sync`` ``rooms.leave``: "The rooms that the user has left or been
        banned from", each with "The timeline of messages and state changes in the room
        up to the point when the user left", the state up to its start, and the room's
        account data."""
        leave_out: dict[str, Any] = {}
        for m in leaves:
            room = await self._room(
                window.user_id, window.scope, m, timelines[m.room_id], window.since_nid, True, window.flt,
                room_data.get(m.room_id, {}), end_nid=m.event_nid, requester=window.requester,
            )
            leave_out[m.room_id] = {"timeline": room["timeline"], "state": room["state"], "account_data": room["account_data"]}
        return leave_out

    async def _invited_and_knocked_rooms(
        self, window: "_Window", memberships: Sequence[Membership], ignored: frozenset[str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Spec ``GET /sync`` ``rooms.invite`` and ``rooms.knock``: the invites and knocks
        since the token, each with "The stripped state" of the room (``invite_state``,
        ``knock_state``) and the membership event itself; invites from ``ignored`` users
        are left out.

        :returns: ``(rooms.invite, rooms.knock)``.
        """
        store = self.store
        invite_out: dict[str, Any] = {}
        knock_out: dict[str, Any] = {}
        for m in memberships:
            if m.membership not in ("invite", "knock"):
                continue
            if window.since_nid is not None and m.event_nid <= window.since_nid:
                continue
            own = await store.get_event(m.event_id)
            if m.membership == "invite" and own is not None and own.sender in ignored:
                continue
            # An invite shows its sender's membership too (who invites: stripped_state_keys).
            inviter = own.sender if own is not None and m.membership == "invite" and own.sender != own.state_key else None
            state = await store.get_current_state_events(m.room_id, stripped_state_keys(inviter))
            events = [stripped_state(e) for _, e in sorted(state.items())]
            if own is not None:
                events.append(stripped_state(own))
            if m.membership == "invite":
                invite_out[m.room_id] = {"invite_state": {"events": events}}
            else:
                knock_out[m.room_id] = {"knock_state": {"events": events}}
        return invite_out, knock_out

    async def _contribute_sections(
        self, ctx: SyncContext, since: Optional[SyncToken], section_now: Mapping[str, int], full_state: bool
    ) -> tuple[dict[str, int], bool]:
        """The other areas' parts of the answer (spec ``GET /sync``: ``presence``,
        ``to_device``, ``device_lists``, ``device_one_time_keys_count``, receipts and
        typing in ``ephemeral``, ...), each from the client's position to the one read
        first.

        :returns: the positions for ``next_batch``, and whether a section added anything.
        """
        positions: dict[str, int] = {}
        sections_changed = False
        for section in self._sections:
            key = section.key
            now = section_now[key]
            section_since = since.sections.get(key) if since is not None else None
            if section_since is not None and section_since > now:
                section_since = now  # a token from the future: nothing new, but no gap either
            if await section.contribute(ctx, None if full_state else section_since, now):
                sections_changed = True
            positions[key] = now
        return positions, sections_changed

    async def _remote_memberships(
        self,
        user_id: str,
        scope: str,
        since_nid: Optional[int],
        now_nid: int,
        flt: SyncFilter,
        local_nids: Mapping[str, int],
        invite_out: dict[str, Any],
        knock_out: dict[str, Any],
        leave_out: dict[str, Any],
        ignored: frozenset[str] = frozenset(),
    ) -> None:
        """Invites, knocks and their withdrawal in rooms this server is not in (recorded
        by the federation handshakes in ``store.federation_extras`` with the membership
        event's nid as position). Of a remote membership and one in the room's state here
        (``local_nids``: room -> nid of the user's membership event, forgotten rooms
        included), the newer wins: a user who left a room our server then left, and is
        invited again over federation, sees the new invite."""
        extras = getattr(self.store, "federation_extras", None)
        if extras is None:
            return
        rows = await extras.get_remote_memberships(user_id, since_nid or 0)
        rows = [
            r for r in rows
            if r.stream <= now_nid and r.stream > local_nids.get(r.room_id, -1) and flt.rooms.allows_room(r.room_id)
        ]
        if not rows:
            return
        for r in rows:
            # Superseded by the remote membership (only a leave can be listed here).
            leave_out.pop(r.room_id, None)
        events = await self.store.get_events([r.event_id for r in rows])
        for r in rows:
            own = events.get(r.event_id)
            state = [e for e in r.stripped_state if isinstance(e, dict)]
            if own is not None and not any(
                e.get("type") == own.type and e.get("state_key") == own.state_key for e in state
            ):
                state.append(stripped_state(own))
            if r.membership == "invite":
                if own is not None and own.sender in ignored:
                    continue  # an invite from an ignored user (see _compute)
                invite_out[r.room_id] = {"invite_state": {"events": state}}
            elif r.membership == "knock":
                knock_out[r.room_id] = {"knock_state": {"events": state}}
            elif r.membership in ("leave", "ban") and (since_nid is not None or flt.include_leave) and own is not None:
                served = await self.source.serialize([own], user_id=user_id, scope=scope, include_room_id=False)
                leave_out[r.room_id] = {
                    "timeline": {"events": served, "limited": False, "prev_batch": topo_token((own.depth, r.stream - 1))},
                    "state": {"events": []},
                    "account_data": {"events": []},
                }

    @staticmethod
    def _empty_joined(room_data: Mapping[str, Any], flt: SyncFilter) -> dict[str, Any]:
        return {
            "timeline": {"events": [], "limited": False},
            "state": {"events": []},
            "ephemeral": {"events": []},
            "account_data": {
                "events": [{"type": t, "content": c} for t, c in sorted(room_data.items()) if flt.room_account_data.allows_type(t)]
            },
            "unread_notifications": {"highlight_count": 0, "notification_count": 0},
        }

    async def _room(
        self,
        user_id: str,
        scope: str,
        membership: Membership,
        timeline: Timeline,
        since_nid: Optional[int],
        full: bool,
        flt: SyncFilter,
        room_data: Mapping[str, Any],
        *,
        end_nid: int,
        requester: Requester = None,
        whole: bool = False,
    ) -> dict[str, Any]:
        """One room's entry: timeline (visible, filtered), state, account data.

        :param whole: the timeline was read from the start of the stream (a room new to
            the client): if its first event has prev events, history lies before it (the
            room was joined over federation, or is longer than the stream here) and the
            timeline is ``limited``, so that the client pages back with ``prev_batch``.
        """
        items = await self._visible_timeline(user_id, membership, timeline)
        shown = [e for _, e in items if flt.timeline.allows(e)]
        first: Optional[Event] = timeline.events[0][1] if timeline.events else None
        limited = timeline.limited or (whole and first is not None and bool(first.prev_event_ids))
        state_events: list[Event] = []
        if full or timeline.limited or (flt.lazy_load_members and first is not None):
            state_events = await self._room_state(
                user_id, membership, timeline, since_nid, full, flt, shown, end_nid=end_nid, requester=requester
            )
        # State events of the timeline the filter leaves out still change the room: send
        # them as state so that the client's view of the room is right.
        left_out = {e.state_tuple: e for _, e in items if e.state_key is not None and not flt.timeline.allows(e)}
        if left_out:
            kept = [e for e in state_events if e.state_tuple not in left_out]
            state_events = kept + [e for e in left_out.values() if flt.state.allows(e)]
        prev_batch = await self._prev_batch(membership.room_id, timeline, end_nid)
        return {
            "timeline": {
                # Spec "Aggregations of child events": bundled in /sync "when the relevant
                # section has a limited value of true".
                "events": await self.source.serialize(
                    shown, user_id=user_id, scope=scope, include_room_id=False, aggregations=limited
                ),
                "limited": limited,
                "prev_batch": prev_batch,
            },
            "state": {
                "events": await self.source.serialize(state_events, user_id=user_id, scope=scope, include_room_id=False)
            },
            "ephemeral": {"events": []},
            "account_data": {
                "events": [{"type": t, "content": c} for t, c in sorted(room_data.items()) if flt.room_account_data.allows_type(t)]
            },
            "unread_notifications": {"highlight_count": 0, "notification_count": 0},
        }

    async def _visible_timeline(
        self, user_id: str, membership: Membership, timeline: Timeline
    ) -> list[tuple[int, Event]]:
        """The timeline's events the user may see (spec "History visibility"), with their
        nids, bounded by the user's membership in the room."""
        room_id = membership.room_id
        if membership.membership == "join":
            joined_until, joined_since = joined_bounds(membership)
        else:
            joined_until, joined_since = await self.source.joined_bounds(room_id, user_id, membership)
        return await self.source.filter_for_user(
            user_id, timeline.events, joined_until=joined_until, joined_since=joined_since
        )

    async def _room_state(
        self,
        user_id: str,
        membership: Membership,
        timeline: Timeline,
        since_nid: Optional[int],
        full: bool,
        flt: SyncFilter,
        shown: Sequence[Event],
        *,
        end_nid: int,
        requester: Requester = None,
    ) -> list[Event]:
        """Spec ``GET /sync`` a room's ``state``: "Updates to the state, between the time
        indicated by the ``since`` parameter, and the **start** of the ``timeline`` (or all
        state up to the **start** of the ``timeline``, if ``since`` is not given, or
        ``full_state`` is true)"; with ``lazy_load_members``, of the ``m.room.member``
        events only those "required to display the senders of the timeline events".
        Events in the timeline are not repeated; the filter's ``room.state`` applies.
        """
        store = self.store
        room_id = membership.room_id
        start_state = await self._state_at_start(membership, timeline)
        if full:
            wanted = dict(start_state)
        elif not timeline.limited:
            wanted = {}  # lazy loading only: the senders' members below
        else:
            # What changed in the gap between the token and the timeline.
            first_nid = timeline.events[0][0] if timeline.events else end_nid + 1
            keys = await store.rooms.get_state_keys_changed(room_id, since_nid or 0, first_nid - 1)
            wanted = {k: start_state[k] for k in keys if k in start_state}
        in_timeline = {e.event_id for _, e in timeline.events}
        if flt.lazy_load_members:
            wanted = self._lazy_members(user_id, room_id, flt, start_state, wanted, shown, in_timeline, requester)
        ids = [v for v in wanted.values() if v not in in_timeline]
        loaded = await store.get_events(ids)
        return [loaded[v] for _, v in sorted(wanted.items()) if v in loaded and flt.state.allows(loaded[v])]

    async def _state_at_start(self, membership: Membership, timeline: Timeline) -> Mapping[tuple[str, str], str]:
        """The room's state at the **start** of the timeline: before its first event; with
        no events, the current state of a joined room, else the state after the user's
        leave."""
        store = self.store
        if timeline.events:
            first = timeline.events[0][1]
            groups = await store.rooms.get_event_state_groups([first.event_id])
            pair = groups.get(first.event_id)
            return await store.get_state_group(pair[0]) if pair is not None else {}
        if membership.membership == "join":
            return await store.get_current_state_ids(membership.room_id)
        groups = await store.rooms.get_event_state_groups([membership.event_id])
        pair = groups.get(membership.event_id)
        return await store.get_state_group(pair[1]) if pair is not None else {}

    def _lazy_members(
        self,
        user_id: str,
        room_id: str,
        flt: SyncFilter,
        start_state: Mapping[tuple[str, str], str],
        wanted: Mapping[tuple[str, str], str],
        shown: Sequence[Event],
        in_timeline: set[str],
        requester: Requester,
    ) -> dict[tuple[str, str], str]:
        """Spec "Lazy-loading room members": only the membership events of the senders of
        the timeline's events (and the user's own), not all members of the room; unless
        ``include_redundant_members``, only those not sent to this device before.

        :returns: ``wanted`` with its ``m.room.member`` entries replaced by those.
        """
        lazy_keys = set(member_keys((e.sender for e in shown), also=user_id))
        out = {k: v for k, v in wanted.items() if k[0] != "m.room.member"}
        members = [v for v in pick_members(start_state, sorted(lazy_keys)) if v not in in_timeline]
        if not flt.include_redundant_members and requester is not None:
            members = self.sent_members.unsent(requester, room_id, members)
            # Membership events in the timeline reach the client too.
            self.sent_members.unsent(requester, room_id, [e.event_id for e in shown if e.type == "m.room.member"])
        keep = set(members)
        for k in lazy_keys:
            v = start_state.get(k)
            if v in keep:
                out[k] = v
        return out

    async def _prev_batch(self, room_id: str, timeline: Timeline, end_nid: int) -> str:
        """The timeline's ``prev_batch``: a token to page back (``/messages``) from its
        first event, or from ``end_nid`` if it has none."""
        if timeline.events:
            first_nid, first_ev = timeline.events[0]
            return topo_token((first_ev.depth, first_nid - 1))
        pos = await self.store.rooms.get_topological_position_at(room_id, end_nid)
        return topo_token(pos if pos is not None else (0, 0))


#: The sync token part of the partial-state completions stream.
PARTIAL_STATE_SECTION = "ps"


class PartialStateSection:
    """The position of the partial-state completions stream in the sync token (what
    :meth:`SyncHandler._compute` reads to send a room whole once its resync is done); it
    adds nothing to the answer itself.

    :param store: the store (``partial_state``).
    """

    key = PARTIAL_STATE_SECTION

    def __init__(self, store: Any) -> None:
        self._store = store

    def current_position(self, user_id: str) -> "defer.Deferred[int]":
        return self._store.partial_state.get_completion_position()

    async def contribute(self, ctx: SyncContext, since: Optional[int], now: int) -> bool:
        return False


def _is_empty(result: Mapping[str, Any]) -> bool:
    """Whether an incremental answer carries nothing (so a long-poll should wait)."""
    rooms = result["rooms"]
    return not (rooms["join"] or rooms["invite"] or rooms["leave"] or rooms["knock"] or result["account_data"]["events"])
