"""The space hierarchy: walking ``m.space.child`` state from a space-room, for our clients
(client-server API "Spaces", ``GET /_matrix/client/v1/rooms/{roomId}/hierarchy``) and for
other servers (server-server API "Spaces", ``GET /_matrix/federation/v1/hierarchy/{roomId}``).

Rooms we hold (a user of ours is joined) are summarised from our current state; other
rooms are asked of the servers in the child event's ``via`` over federation, once per
walk. What a user is shown follows the client-server spec's list: rooms they are joined
or invited to, rooms with ``public`` join rules, ``restricted`` ones whose allowed rooms
they are joined to, knockable rooms (``knock``, ``knock_restricted`` in room versions
that have them) and ``world_readable`` rooms. Another server is shown the rooms it could
"feasibly peek/join" (the same rules, with "one of its users is in the room / in an
allowed room" for the membership conditions), never rooms its server ACL denies or that
an administrator blocked here.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from twisted.logger import Logger

from fedserver.errors import forbidden, invalid_param, not_found
from fedserver.federation.client import FederationClientError, HttpResponseError, fed_path
from fedserver.federation.xmatrix import is_valid_server_name
from fedserver.handlers.rooms.directory import room_summary

log = Logger()

SPACE_CHILD = "m.space.child"
SPACE_ROOM_TYPE = "m.space"

#: Rooms per page when the client gives no ``limit``, and the most it may ask for.
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
#: How deep a walk goes without ``max_depth``, and the deepest it may ask for.
MAX_DEPTH = 10
#: The most rooms one walk (all its pages) looks at, however the space is built.
MAX_ROOMS_WALKED = 1000
#: The most servers of a child's ``via`` asked for it, in order.
MAX_VIA_TRIED = 3
#: The most ``m.space.child`` events taken from one room.
MAX_CHILDREN = 500
#: How long a ``next_batch`` token can be used, and how many are kept at once.
TOKEN_LIFETIME_MS = 10 * 60 * 1000
MAX_SESSIONS = 1000
#: Seconds to wait for another server's hierarchy, and the largest answer taken.
REMOTE_TIMEOUT_S = 10
#: The most requests to other servers for one page: past it the page ends early (with
#: ``next_batch``), so a space of many remote children cannot hold a request for long.
MAX_REMOTE_REQUESTS_PER_PAGE = 10
MAX_REMOTE_BYTES = 4 * 1024 * 1024

#: The state read for a room's summary (room_summary.yaml); ``m.space.child`` comes apart.
_SUMMARY_TYPES = (
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
)

#: Join rules under which anyone may join or knock: shown to everyone.
_OPEN_RULES = ("public", "knock", "knock_restricted")


def valid_order(value: Any) -> bool:
    """``m.space.child`` ``order``: at most 50 characters, each in ``\\x20``-``\\x7E``
    (client-server API, ``m.space.child``); anything else is treated as absent."""
    return isinstance(value, str) and len(value) <= 50 and all("\x20" <= c <= "\x7e" for c in value)


def child_via(content: Any) -> Optional[list[str]]:
    """The ``via`` servers of a child event, or ``None`` if it names no child ("Child
    rooms can be removed from a space by omitting the ``via`` key")."""
    if not isinstance(content, dict):
        return None
    via = content.get("via")
    if not isinstance(via, list):
        return None
    servers = [s for s in via if isinstance(s, str) and s]
    return servers or None


def order_children(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stripped ``m.space.child`` events in the spec's order ("Ordering of children
    within a space"): those with a valid ``order`` first, by it (code points), then the
    rest; ties by ``origin_server_ts``, then by room id (state key)."""

    def key(ev: dict[str, Any]) -> tuple[Any, ...]:
        order = ev["content"].get("order")
        ts = ev.get("origin_server_ts")
        ts = ts if type(ts) is int else 0
        if valid_order(order):
            return (0, order, ts, ev["state_key"])
        return (1, "", ts, ev["state_key"])

    return sorted(children, key=key)


def _is_room_id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("!") and 1 < len(value) <= 255


@dataclass
class RoomNode:
    """What the walk knows of one room: its summary (``room_summary.yaml``) and its
    valid ``m.space.child`` events (stripped, with ``origin_server_ts``), in order."""

    summary: dict[str, Any]
    children_state: list[dict[str, Any]]
    #: the room's own version, when we hold the room (``None``: asked of another server).
    room_version: Any = None

    @property
    def room_id(self) -> str:
        return str(self.summary["room_id"])

    @property
    def is_space(self) -> bool:
        return self.summary.get("room_type") == SPACE_ROOM_TYPE

    @property
    def join_rule(self) -> str:
        rule = self.summary.get("join_rule")
        return rule if isinstance(rule, str) else "invite"

    @property
    def allowed_room_ids(self) -> list[str]:
        ids = self.summary.get("allowed_room_ids")
        return [r for r in ids if _is_room_id(r)] if isinstance(ids, list) else []

    def open_to_all(self) -> bool:
        """``world_readable``, ``public``, or knockable in a room version with that rule."""
        if self.summary.get("world_readable") is True:
            return True
        rule = self.join_rule
        if rule == "public":
            return True
        rv = self.room_version
        if rule == "knock":
            return rv is None or bool(getattr(rv, "knocking", True))
        if rule == "knock_restricted":
            return rv is None or bool(getattr(rv, "knock_restricted", True))
        return False

    def entry(self) -> dict[str, Any]:
        """The room as a page lists it (``children_state`` empty unless a space)."""
        out = dict(self.summary)
        out["children_state"] = list(self.children_state) if self.is_space else []
        return out

    def children(self, suggested_only: bool) -> list[tuple[str, list[str]]]:
        """``(room_id, via)`` of the children to walk (only ``suggested`` ones if asked)."""
        out = []
        for ev in self.children_state:
            if suggested_only and ev["content"].get("suggested") is not True:
                continue
            via = child_via(ev["content"])
            if via is not None:
                out.append((ev["state_key"], via))
        return out


@dataclass
class _Walk:
    """A walk in progress: what is left to visit (depth first), what was seen, and the
    rooms other servers described; kept between pages under a ``next_batch`` token."""

    user_id: str
    root: str
    suggested_only: bool
    max_depth: int
    #: ``(room_id, depth, via)``, the next first.
    stack: list[tuple[str, int, list[str]]]
    seen: set[str] = field(default_factory=set)
    remote: dict[str, RoomNode] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)
    #: servers that failed during this walk (not asked again).
    dead_servers: set[str] = field(default_factory=set)
    expires_ms: int = 0
    #: requests to other servers left for the current page.
    budget: int = MAX_REMOTE_REQUESTS_PER_PAGE


class _OutOfBudget(Exception):
    """The page made its share of requests to other servers."""


def _clean_summary(raw: Any) -> Optional[dict[str, Any]]:
    """A room summary from another server with only well-formed known fields; ``None``
    without a room id."""
    if not isinstance(raw, dict) or not _is_room_id(raw.get("room_id")):
        return None
    out: dict[str, Any] = {"room_id": raw["room_id"]}
    joined = raw.get("num_joined_members")
    out["num_joined_members"] = joined if type(joined) is int and joined >= 0 else 0
    out["world_readable"] = raw.get("world_readable") is True
    out["guest_can_join"] = raw.get("guest_can_join") is True
    out["join_rule"] = raw["join_rule"] if isinstance(raw.get("join_rule"), str) else "invite"
    for key in ("name", "topic", "canonical_alias", "avatar_url", "room_type", "encryption", "room_version"):
        value = raw.get(key)
        if isinstance(value, str) and value and len(value) <= 4096:
            out[key] = value
    allowed = raw.get("allowed_room_ids")
    if isinstance(allowed, list):
        out["allowed_room_ids"] = [r for r in allowed[:100] if _is_room_id(r)]
    return out


def _clean_children_state(raw: Any) -> list[dict[str, Any]]:
    """Stripped ``m.space.child`` events from another server: valid children only."""
    out = []
    for ev in raw[:MAX_CHILDREN] if isinstance(raw, list) else []:
        if not (isinstance(ev, dict) and ev.get("type") == SPACE_CHILD and _is_room_id(ev.get("state_key"))):
            continue
        if child_via(ev.get("content")) is None:
            continue
        ts = ev.get("origin_server_ts")
        out.append({
            "type": SPACE_CHILD,
            "state_key": ev["state_key"],
            "content": ev["content"],
            "sender": ev["sender"] if isinstance(ev.get("sender"), str) else "",
            "origin_server_ts": ts if type(ts) is int else 0,
        })
    return order_children(out)


class SpaceHierarchy:
    """Space trees for clients and for other servers.

    :param store: the store (current state, memberships, joined hosts).
    :param server_name: ours (never asked over federation).
    :param clock: ``seconds()`` (token expiry).
    :param federation_client: asks other servers' ``/hierarchy`` (``None``: only rooms
        we hold are shown).
    :param is_room_blocked: rooms an administrator blocked: never shown.
    :param acl_allows: ``acl_allows(server, room_id)`` (a Deferred of bool): whether the
        room's server ACL lets ``server`` take part (``None``: no ACLs).
    """

    def __init__(
        self,
        store: Any,
        server_name: str,
        clock: Any,
        *,
        federation_client: Any = None,
        is_room_blocked: Optional[Callable[[str], bool]] = None,
        acl_allows: Optional[Callable[[str, str], Awaitable[bool]]] = None,
    ) -> None:
        self._store = store
        self._server_name = server_name
        self._clock = clock
        self._federation = federation_client
        self._is_room_blocked = is_room_blocked
        self._acl_allows = acl_allows
        self._walks: "OrderedDict[str, _Walk]" = OrderedDict()

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _blocked(self, room_id: str) -> bool:
        return self._is_room_blocked is not None and self._is_room_blocked(room_id)

    # -- rooms we hold ---------------------------------------------------------------------

    async def local_room(self, room_id: str) -> Optional[RoomNode]:
        """The room from our current state, or ``None`` if we do not hold it."""
        info = await self._store.get_room(room_id)
        if info is None:
            return None
        state = await self._store.get_current_state_events(room_id, list(_SUMMARY_TYPES) + [(SPACE_CHILD, None)])
        by_type = {k[0]: ev for k, ev in state.items() if k[1] == ""}
        create = by_type.get("m.room.create")
        if create is None:
            return None
        members = await self._store.rooms.get_room_members_summary([room_id], heroes=0)

        joined = members[room_id].joined if room_id in members else 0
        summary = room_summary(room_id, by_type, joined, encryption=True)
        summary["room_version"] = info.room_version.identifier
        if summary["join_rule"] in ("restricted", "knock_restricted"):
            jr = by_type.get("m.room.join_rules")
            allow = jr.content.get("allow") if jr is not None else None
            summary["allowed_room_ids"] = [
                a["room_id"] for a in (allow if isinstance(allow, list) else [])
                if isinstance(a, dict) and a.get("type") == "m.room_membership" and _is_room_id(a.get("room_id"))
            ]
        children = []
        for (event_type, state_key), ev in state.items():
            if event_type != SPACE_CHILD or not _is_room_id(state_key) or child_via(ev.content) is None:
                continue
            children.append({
                "type": SPACE_CHILD, "state_key": state_key, "content": ev.content, "sender": ev.sender,
                "origin_server_ts": ev.origin_server_ts,
            })
        return RoomNode(summary, order_children(children)[:MAX_CHILDREN], info.room_version)

    async def _we_are_in(self, room_id: str) -> bool:
        return self._server_name in await self._store.get_joined_hosts(room_id)

    # -- who may see a room ----------------------------------------------------------------

    async def user_may_see(self, user_id: str, room: RoomNode) -> bool:
        """Client-server API ``GET /hierarchy``, ``rooms``: the conditions under which
        the requesting user is shown a room."""
        if self._blocked(room.room_id):
            return False
        if room.open_to_all():
            return True
        membership = await self._store.rooms.get_membership(room.room_id, user_id)
        if membership is not None and membership.membership in ("join", "invite"):
            return True
        # An invite to a room we are not in is kept apart from room memberships (the
        # invite's stripped state is all we hold of the room).
        remote = await self._store.federation_extras.get_remote_membership(user_id, room.room_id)
        if remote is not None and remote.membership == "invite":
            return True
        if room.join_rule in ("restricted", "knock_restricted"):
            for allowed in room.allowed_room_ids:
                m = await self._store.rooms.get_membership(allowed, user_id)
                if m is not None and m.membership == "join":
                    return True
        return False

    async def server_may_see(self, origin: str, room: RoomNode) -> bool:
        """Server-server API ``GET /hierarchy``: whether ``origin`` "could feasibly
        peek/join" the room (the user conditions, with its users' memberships)."""
        if self._blocked(room.room_id):
            return False
        if self._acl_allows is not None and not await self._acl_allows(origin, room.room_id):
            return False
        if room.open_to_all():
            return True
        if origin in await self._store.get_joined_hosts(room.room_id):
            return True
        if room.join_rule in ("restricted", "knock_restricted"):
            for allowed in room.allowed_room_ids:
                if origin in await self._store.get_joined_hosts(allowed):
                    return True
        return False

    # -- the federation endpoint -----------------------------------------------------------

    async def federation_hierarchy(self, origin: str, room_id: str, suggested_only: bool) -> dict[str, Any]:
        """``GET /_matrix/federation/v1/hierarchy/{roomId}``: the room and its children
        (no paging: "all the space-room's children the requesting server could feasibly
        peek/join"); children we hold but ``origin`` may not see go to
        ``inaccessible_children``; children we do not hold are left out.

        :raises MatrixError: 404 ``M_NOT_FOUND`` if we do not hold the room or ``origin``
            may not see it.
        """
        room = await self.local_room(room_id)
        if room is None or not await self.server_may_see(origin, room):
            raise not_found("Unknown room, or not one your server may see")
        children: list[dict[str, Any]] = []
        inaccessible: list[str] = []
        if room.is_space:
            for child_id, _via in room.children(suggested_only):
                child = await self.local_room(child_id)
                if child is None:
                    continue
                if await self.server_may_see(origin, child):
                    children.append(child.entry())
                else:
                    inaccessible.append(child_id)
        return {"room": room.entry(), "children": children, "inaccessible_children": inaccessible}

    # -- asking other servers --------------------------------------------------------------

    async def _ask_remote(self, walk: _Walk, room_id: str, via: list[str]) -> Optional[RoomNode]:
        """The room from the first server in ``via`` that describes it (its children's
        summaries kept for the walk, its inaccessible children never asked again)."""
        if self._federation is None:
            return None
        tried = 0
        for server in via:
            if tried >= MAX_VIA_TRIED:
                break
            if server == self._server_name or server in walk.dead_servers or not is_valid_server_name(server):
                continue
            if walk.budget <= 0:
                raise _OutOfBudget()
            walk.budget -= 1
            tried += 1
            try:
                answer = await self._federation.get_json(
                    server, fed_path("/_matrix/federation/v1/hierarchy/{}", room_id),
                    args={"suggested_only": "true" if walk.suggested_only else "false"},
                    timeout=REMOTE_TIMEOUT_S, max_size=MAX_REMOTE_BYTES,
                )
            except FederationClientError as e:
                log.info("{server} did not describe {room_id}: {e}", server=server, room_id=room_id, e=e)
                if not isinstance(e, HttpResponseError):
                    walk.dead_servers.add(server)
                continue
            if not isinstance(answer, dict):
                continue
            raw_room = answer.get("room")
            summary = _clean_summary(raw_room)
            if summary is None or summary["room_id"] != room_id or not isinstance(raw_room, dict):
                continue
            node = RoomNode(summary, _clean_children_state(raw_room.get("children_state")))
            inaccessible = answer.get("inaccessible_children")
            for r in inaccessible[:MAX_CHILDREN] if isinstance(inaccessible, list) else []:
                if _is_room_id(r):
                    walk.unreachable.add(r)
            children = answer.get("children")
            for raw in children[:MAX_CHILDREN] if isinstance(children, list) else []:
                child = _clean_summary(raw)
                # A child space is asked for itself when reached (for its own children).
                if child is not None and child.get("room_type") != SPACE_ROOM_TYPE and child["room_id"] not in walk.remote:
                    walk.remote[child["room_id"]] = RoomNode(child, [])
            return node
        return None

    async def _room(self, walk: _Walk, room_id: str, via: list[str]) -> Optional[RoomNode]:
        """The room as well as we can know it: ours if a user of ours is in it; else as
        another server described it (during this walk, or now, from ``via``); else
        what we hold of it, maybe stale."""
        local = await self.local_room(room_id)
        if local is not None and await self._we_are_in(room_id):
            return local
        if room_id in walk.remote:
            return walk.remote[room_id]
        if room_id not in walk.unreachable and via:
            remote = await self._ask_remote(walk, room_id, via)
            if remote is not None:
                walk.remote[room_id] = remote
                return remote
        return local

    # -- the client endpoint ---------------------------------------------------------------

    async def hierarchy(
        self,
        user_id: str,
        room_id: str,
        *,
        suggested_only: bool = False,
        limit: Optional[int] = None,
        max_depth: Optional[int] = None,
        from_token: Optional[str] = None,
    ) -> dict[str, Any]:
        """``GET /_matrix/client/v1/rooms/{roomId}/hierarchy``: one page of the space tree,
        depth first from ``room_id``, children in the spec's order; ``next_batch`` while
        rooms are left.

        :raises MatrixError: 400 ``M_INVALID_PARAM`` for a bad ``limit``/``max_depth``, an
            unknown or expired ``from`` token, or one given with other ``suggested_only``
            / ``max_depth`` / room / user than the first request; 403 ``M_FORBIDDEN`` if
            the user may not see the room (or it is unknown).
        """
        if limit is not None and limit <= 0:
            raise invalid_param("limit", "limit must be greater than zero")
        if max_depth is not None and max_depth < 0:
            raise invalid_param("max_depth", "max_depth must not be negative")
        limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        depth_limit = MAX_DEPTH if max_depth is None else min(max_depth, MAX_DEPTH)
        now = self._now_ms()
        self._expire(now)
        if from_token is not None:
            kept = self._walks.get(from_token) if isinstance(from_token, str) else None
            if kept is None:
                raise invalid_param("from", "Unknown or expired pagination token")
            # A copy: the same token may be asked again (a client retrying) for the same page.
            walk = _Walk(
                kept.user_id, kept.root, kept.suggested_only, kept.max_depth, list(kept.stack), set(kept.seen),
                dict(kept.remote), set(kept.unreachable), set(kept.dead_servers),
            )
            if (walk.user_id, walk.root, walk.suggested_only) != (user_id, room_id, suggested_only) or (
                max_depth is not None and depth_limit != walk.max_depth
            ):
                raise invalid_param("from", "suggested_only and max_depth cannot change during pagination")
        else:
            walk = _Walk(user_id, room_id, suggested_only, depth_limit, [(room_id, 0, [])])
            root = await self._room(walk, room_id, [])  # no via: never out of budget
            if root is None or not await self.user_may_see(user_id, root):
                raise forbidden("You may not see this room, or it is unknown")
        walk.budget = MAX_REMOTE_REQUESTS_PER_PAGE
        rooms: list[dict[str, Any]] = []
        while walk.stack and len(rooms) < limit and len(walk.seen) < MAX_ROOMS_WALKED:
            current, depth, via = walk.stack[0]
            if current in walk.seen:
                walk.stack.pop(0)
                continue
            try:
                node = await self._room(walk, current, via)
            except _OutOfBudget:
                break  # this room first on the next page
            walk.stack.pop(0)
            walk.seen.add(current)
            if node is None or not await self.user_may_see(user_id, node):
                continue
            rooms.append(node.entry())
            if node.is_space and depth < walk.max_depth:
                walk.stack[0:0] = [
                    (child, depth + 1, child_via_list)
                    for child, child_via_list in node.children(walk.suggested_only)
                    if child not in walk.seen
                ]
        out: dict[str, Any] = {"rooms": rooms}
        if walk.stack and len(walk.seen) < MAX_ROOMS_WALKED:
            token = secrets.token_urlsafe(18)
            walk.expires_ms = now + TOKEN_LIFETIME_MS
            self._walks[token] = walk
            while len(self._walks) > MAX_SESSIONS:
                self._walks.popitem(last=False)
            out["next_batch"] = token
        return out

    def _expire(self, now_ms: int) -> None:
        """Forget walks whose token lifetime is over (oldest first)."""
        while self._walks:
            token, walk = next(iter(self._walks.items()))
            if walk.expires_ms > now_ms:
                break
            del self._walks[token]


__all__ = ["SpaceHierarchy", "RoomNode", "order_children", "valid_order", "child_via"]
