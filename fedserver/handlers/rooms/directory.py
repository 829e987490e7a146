"""Local room aliases and the published room directory (visibility and /publicRooms)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional

from twisted.logger import Logger

from fedserver.auth.auth_state import AuthState
from fedserver.auth.selection import POWER_LEVELS_KEY
from fedserver.handlers.rooms.client_events import HISTORY_VISIBILITY_KEY, WORLD_READABLE, history_visibility
from fedserver.errors import M_UNKNOWN, MatrixError, bad_json, forbidden, invalid_param, not_found
from fedserver.federation.client import FederationClientError, HttpResponseError, RequestTimedOut
from fedserver.federation.xmatrix import is_valid_server_name

log = Logger()

#: Longest alias, in UTF-8 bytes (spec appendices: "Room aliases ... MUST NOT exceed 255
#: bytes (including the # sigil and the domain)").
MAX_ALIAS_BYTES = 255

#: The most rooms one /publicRooms page holds.
MAX_PUBLIC_ROOMS_PAGE = 500

#: Another server's room directory (server-server API "Public Room Directory").
FEDERATION_PUBLIC_ROOMS = "/_matrix/federation/v1/publicRooms"
#: The largest answer taken from another server's /publicRooms (500 rooms of ~2 KiB).
MAX_REMOTE_DIRECTORY_BYTES = 2 * 1024 * 1024
#: Longest ``since`` token passed on to another server (theirs are opaque to us).
MAX_REMOTE_TOKEN_LENGTH = 1024

_PUBLIC_ROOM_TYPES = (
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.create",
)


def split_alias(alias: Any) -> Optional[tuple[str, str]]:
    """``(localpart, server_name)`` of a room alias, or ``None`` if it is not one
    (appendices, "Room aliases": ``#localpart:domain``, at most 255 bytes; the localpart
    holds no ``:`` or NUL)."""
    if not isinstance(alias, str) or not alias.startswith("#") or ":" not in alias:
        return None
    try:
        if len(alias.encode("utf-8")) > MAX_ALIAS_BYTES:
            return None
    except UnicodeEncodeError:
        return None
    localpart, _, server = alias[1:].partition(":")
    if not localpart or not server or "\x00" in alias:
        return None
    return localpart, server


def valid_new_localpart(localpart: Any) -> bool:
    """Whether ``localpart`` may name a NEW alias here: non-empty, no ``:``, no NUL and no
    whitespace (clients put aliases in URLs and mentions)."""
    return (
        isinstance(localpart, str)
        and bool(localpart)
        and ":" not in localpart
        and "\x00" not in localpart
        and not any(c.isspace() for c in localpart)
    )


async def current_power(store: Any, room_id: str, user_id: str, rv: Any = None) -> AuthState:
    """An :class:`AuthState` over the room's current power levels and create event, to ask
    ``user_level(user_id)`` and the levels required (creators are infinitely powerful
    from room v12, as the auth rules say). ``rv``: the room's version if the caller
    knows it (an event of the room carries it), else read."""
    if rv is None:
        rv = await store.get_room_version(room_id)
    state = await store.get_current_state_events(room_id, [POWER_LEVELS_KEY, ("m.room.create", "")])
    create = state.get(("m.room.create", ""))
    pl = state.get(POWER_LEVELS_KEY)
    auth_events = {POWER_LEVELS_KEY: pl} if pl is not None else {}
    return AuthState(rv, _Probe(user_id), auth_events, create)


class _Probe:
    """Stands in for an event in :func:`current_power` (only ``sender`` is read)."""

    __slots__ = ("sender", "type", "state_key")

    def __init__(self, sender: str):
        self.sender = sender
        self.type = ""
        self.state_key = None


class DirectoryHandler:
    """Room aliases on this server and which rooms the public room list shows.

    :param store: the store (``store.rooms`` for aliases, ``store.accounts`` to recognise
        server admins if present).
    :param server_name: ours: aliases ending in it are ours.
    :param remote_query: ``remote_query(server_name, alias)`` returning (a Deferred or
        coroutine of) ``{"room_id", "servers"}`` through the federation
        ``/query/directory``; ``None``: aliases of other servers are not found.
    :param federation_client: a :class:`~fedserver.federation.client.FederationClient`
        to list other servers' public rooms (``None``: 404 for another server's list).
    :param is_room_blocked: rooms an administrator blocked; never listed.
    """

    def __init__(
        self,
        store: Any,
        server_name: str,
        *,
        remote_query: Optional[Callable[[str, str], Awaitable[dict[str, Any]]]] = None,
        federation_client: Any = None,
        is_room_blocked: Optional[Callable[[str], bool]] = None,
    ) -> None:
        self._store = store
        self.server_name = server_name
        self.remote_query = remote_query
        self._federation = federation_client
        self._is_room_blocked = is_room_blocked

    def is_mine(self, alias: str) -> bool:
        parts = split_alias(alias)
        return parts is not None and parts[1] == self.server_name

    async def _is_admin(self, user_id: str) -> bool:
        accounts = getattr(self._store, "accounts", None)
        if accounts is None:
            return False
        user = await accounts.get_user(user_id)
        return bool(user is not None and user.admin)

    # -- aliases --------------------------------------------------------------------------

    async def create_alias(self, user_id: Optional[str], room_alias: str, room_id: str) -> None:
        """``PUT /directory/room/{roomAlias}``: map one of our aliases to a room we know.

        :raises MatrixError: 400 ``M_INVALID_PARAM`` for an invalid alias or one of
            another server; 404 ``M_NOT_FOUND`` for an unknown room; 409 ``M_UNKNOWN`` if
            the alias exists.
        """
        parts = split_alias(room_alias)
        if parts is None or not valid_new_localpart(parts[0]):
            raise invalid_param("room_alias", "Room alias invalid")
        if parts[1] != self.server_name:
            raise invalid_param("room_alias", "Room alias must be on this server")
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise bad_json("room_id must be a room ID")
        if await self._store.get_room(room_id) is None:
            raise not_found("Unknown room")
        if not await self._store.rooms.create_alias(room_alias, room_id, user_id):
            raise MatrixError(409, M_UNKNOWN, f"Room alias {room_alias} already exists.")

    async def resolve_alias(self, room_alias: str) -> dict[str, Any]:
        """``GET /directory/room/{roomAlias}``: ``{"room_id", "servers"}``; the servers
        are those joined to the room, ours first.

        :raises MatrixError: 400 ``M_INVALID_PARAM``, 404 ``M_NOT_FOUND``.
        """
        parts = split_alias(room_alias)
        if parts is None:
            raise invalid_param("room_alias", "Room alias invalid")
        if parts[1] != self.server_name:
            if self.remote_query is None:
                raise not_found(f"Room alias {room_alias} not found.")
            return await self.remote_query(parts[1], room_alias)
        info = await self._store.rooms.get_alias(room_alias)
        if info is None:
            raise not_found(f"Room alias {room_alias} not found.")
        hosts = await self._store.get_joined_hosts(info.room_id)
        servers = [self.server_name] + sorted(h for h in hosts if h != self.server_name)
        return {"room_id": info.room_id, "servers": servers}

    async def query_local_alias(self, room_alias: str) -> dict[str, Any]:
        """Federation ``GET /query/directory``: one of OUR aliases, with the servers in the
        room as join candidates.

        :raises MatrixError: 404 ``M_NOT_FOUND`` for an alias that is not ours or unknown.
        """
        parts = split_alias(room_alias)
        if parts is None or parts[1] != self.server_name:
            raise not_found(f"Room alias {room_alias} not found.")
        return await self.resolve_alias(room_alias)

    async def delete_alias(self, user_id: str, room_alias: str) -> None:
        """``DELETE /directory/room/{roomAlias}``: by its creator, a server admin, or a
        member with the power to set the room's ``m.room.canonical_alias`` (the spec lets
        servers choose these checks).

        :raises MatrixError: 404 ``M_NOT_FOUND``; 403 ``M_FORBIDDEN``.
        """
        parts = split_alias(room_alias)
        if parts is None:
            raise invalid_param("room_alias", "Room alias invalid")
        info = await self._store.rooms.get_alias(room_alias) if parts[1] == self.server_name else None
        if info is None:
            raise not_found(f"Room alias {room_alias} not found.")
        if info.creator != user_id and not await self._is_admin(user_id):
            power = await current_power(self._store, info.room_id, user_id)
            needed = power.power_levels.required_level("m.room.canonical_alias", True)
            membership = await self._store.rooms.get_membership(info.room_id, user_id)
            if membership is None or membership.membership != "join" or power.user_level(user_id) < needed:
                raise forbidden("You may not delete this alias")
        await self._store.rooms.delete_alias(room_alias)

    async def room_aliases(self, user_id: str, room_id: str) -> list[str]:
        """``GET /rooms/{roomId}/aliases``: for members, or anyone if the room is
        world-readable.

        :raises MatrixError: 403 ``M_FORBIDDEN``.
        """
        membership = await self._store.rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            hv = await self._store.get_current_state_events(room_id, [HISTORY_VISIBILITY_KEY])
            if history_visibility(hv.get(HISTORY_VISIBILITY_KEY)) != WORLD_READABLE:
                raise forbidden("You are not a member of the room.")
        return await self._store.rooms.get_aliases_for_room(room_id)

    # -- the published room directory -------------------------------------------------------

    async def get_visibility(self, room_id: str) -> str:
        """``GET /directory/list/room/{roomId}``: ``public`` or ``private``.

        :raises MatrixError: 404 ``M_NOT_FOUND`` for an unknown room.
        """
        info = await self._store.get_room(room_id)
        if info is None:
            raise not_found("Unknown room")
        return "public" if info.is_public else "private"

    async def set_visibility(self, user_id: Optional[str], room_id: str, visibility: Any) -> None:
        """``PUT /directory/list/room/{roomId}``: by a server admin or a joined member
        with the power to send ``m.room.canonical_alias`` (``user_id`` ``None``: the
        server itself, e.g. ``createRoom``).

        :raises MatrixError: 400 ``M_INVALID_PARAM``; 404 ``M_NOT_FOUND``; 403.
        """
        if visibility not in ("public", "private"):
            raise invalid_param("visibility", "visibility must be 'public' or 'private'")
        if await self._store.get_room(room_id) is None:
            raise not_found("Unknown room")
        if user_id is not None and not await self._is_admin(user_id):
            membership = await self._store.rooms.get_membership(room_id, user_id)
            power = await current_power(self._store, room_id, user_id)
            needed = power.power_levels.required_level("m.room.canonical_alias", True)
            if membership is None or membership.membership != "join" or power.user_level(user_id) < needed:
                raise forbidden("You may not change this room's visibility in the directory")
        await self._store.set_room_public(room_id, visibility == "public")

    async def public_rooms(
        self,
        *,
        limit: Optional[int] = None,
        since: Optional[str] = None,
        search_term: Optional[str] = None,
        room_types: Optional[list[Optional[str]]] = None,
        third_party_instance_id: Optional[str] = None,
        server: Optional[str] = None,
        hide: Optional[Callable[[list[str]], Awaitable[Iterable[str]]]] = None,
    ) -> dict[str, Any]:
        """``GET``/``POST /publicRooms`` for this server's list (client-server API
        "Published Room Directory", and the server-server API "Public Room Directory"
        serving it to other servers).

        Rooms are ordered by joined members (most first), then room id (the order the
        spec recommends); ``since`` is an opaque offset token (``next_batch`` /
        ``prev_batch``). Rooms an administrator blocked are never listed.

        :param room_types: only rooms of these ``m.room.create`` types (``None`` in the
            list: rooms without a type); ``None``: any type.
        :param third_party_instance_id: one application service network: we have none,
            so its list is empty.
        :param server: another server's name: its list, asked over federation (see
            :meth:`remote_public_rooms`); ours or ``None``: ours.
        :param hide: given the listed room ids, those to leave out (e.g. the rooms whose
            server ACL denies the server asking over federation).
        :raises MatrixError: 400 ``M_INVALID_PARAM`` for a bad token.
        """
        if server is not None and server != self.server_name:
            return await self.remote_public_rooms(
                server, limit=limit, since=since, search_term=search_term, room_types=room_types,
                third_party_instance_id=third_party_instance_id,
            )
        offset = 0
        if since is not None:
            if not (isinstance(since, str) and since[:1] == "o" and since[1:].isascii() and since[1:].isdigit()
                    and len(since) < 12):
                raise invalid_param("since", "Invalid pagination token")
            offset = int(since[1:])
        if limit is None or limit <= 0:
            limit = MAX_PUBLIC_ROOMS_PAGE
        limit = min(limit, MAX_PUBLIC_ROOMS_PAGE)
        if third_party_instance_id is not None:
            return {"chunk": [], "total_room_count_estimate": 0}
        room_ids = await self._store.get_public_room_ids()
        if self._is_room_blocked is not None:
            room_ids = [r for r in room_ids if not self._is_room_blocked(r)]
        if hide is not None and room_ids:
            hidden = set(await hide(room_ids))
            room_ids = [r for r in room_ids if r not in hidden]
        states = await self._store.rooms.get_current_state_for_rooms(room_ids, _PUBLIC_ROOM_TYPES)
        members = await self._store.rooms.get_room_members_summary(room_ids, heroes=0)
        chunks = []
        for room_id in room_ids:
            chunk = _public_chunk(room_id, states.get(room_id, {}), members[room_id].joined)
            if not _wanted(chunk, search_term, room_types):
                continue
            chunks.append(chunk)
        chunks.sort(key=lambda c: (-c["num_joined_members"], c["room_id"]))
        page = chunks[offset : offset + limit]
        out: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(chunks)}
        if offset + limit < len(chunks):
            out["next_batch"] = f"o{offset + limit}"
        if offset > 0:
            out["prev_batch"] = f"o{max(0, offset - limit)}"
        return out

    async def remote_public_rooms(
        self,
        server: str,
        *,
        limit: Optional[int] = None,
        since: Optional[str] = None,
        search_term: Optional[str] = None,
        room_types: Optional[list[Optional[str]]] = None,
        third_party_instance_id: Optional[str] = None,
    ) -> dict[str, Any]:
        """Another server's published rooms, asked over federation (server-server API
        "Public Room Directory"): ``POST /publicRooms`` with the filter when there is one,
        else ``GET``. A server that does not know the ``POST`` form (404/405/400
        ``M_UNRECOGNIZED``) is asked with ``GET`` and its page filtered here. Its paging
        tokens are its own, passed on as they are.

        :raises MatrixError: 400 ``M_INVALID_PARAM`` for an invalid server name or
            token; 404 ``M_NOT_FOUND`` without federation; the other server's 400, 403
            or 404 with its errcode; 502 ``M_UNKNOWN`` if it fails or answers nonsense;
            504 ``M_UNKNOWN`` if it does not answer in time.
        """
        if not is_valid_server_name(server):
            raise invalid_param("server", "Invalid server name")
        if self._federation is None:
            raise not_found("Listing other servers' public rooms is not enabled")
        if since is not None and (not isinstance(since, str) or len(since) > MAX_REMOTE_TOKEN_LENGTH):
            raise invalid_param("since", "Invalid pagination token")
        args: dict[str, Any] = {}
        if limit is not None and limit > 0:
            args["limit"] = str(min(limit, MAX_PUBLIC_ROOMS_PAGE))
        if since is not None:
            args["since"] = since
        if third_party_instance_id is not None:
            args["third_party_instance_id"] = third_party_instance_id
        filtered = bool(search_term) or room_types is not None
        try:
            if filtered:
                body: dict[str, Any] = {k: (int(v) if k == "limit" else v) for k, v in args.items()}
                flt: dict[str, Any] = {}
                if search_term:
                    flt["generic_search_term"] = search_term
                if room_types is not None:
                    flt["room_types"] = room_types
                body["filter"] = flt
                try:
                    answer = await self._federation.post_json(
                        server, FEDERATION_PUBLIC_ROOMS, body, max_size=MAX_REMOTE_DIRECTORY_BYTES
                    )
                except HttpResponseError as e:
                    if not (e.code in (404, 405) or e.errcode == "M_UNRECOGNIZED"):
                        raise
                    answer = await self._federation.get_json(
                        server, FEDERATION_PUBLIC_ROOMS, args=args, max_size=MAX_REMOTE_DIRECTORY_BYTES
                    )
                    answer = _clean_remote_page(server, answer)
                    answer["chunk"] = [c for c in answer["chunk"] if _wanted(c, search_term, room_types)]
                    return answer
            else:
                answer = await self._federation.get_json(
                    server, FEDERATION_PUBLIC_ROOMS, args=args, max_size=MAX_REMOTE_DIRECTORY_BYTES
                )
        except HttpResponseError as e:
            log.info("{server} refused its room directory: {e}", server=server, e=e)
            if e.code in (400, 403, 404):
                raise MatrixError(e.code, e.errcode or M_UNKNOWN, e.error or f"{server} answered {e.code}") from None
            raise MatrixError(502, M_UNKNOWN, f"{server} answered {e.code} for its room directory") from None
        except RequestTimedOut:
            raise MatrixError(504, M_UNKNOWN, f"{server} did not answer in time") from None
        except FederationClientError as e:
            log.info("Cannot list the rooms of {server}: {e}", server=server, e=e)
            raise MatrixError(502, M_UNKNOWN, f"Cannot reach {server} for its room directory") from None
        return _clean_remote_page(server, answer)


def _clean_remote_page(server: str, answer: Any) -> dict[str, Any]:
    """Another server's ``/publicRooms`` answer, reduced to well-formed fields (entries
    without a room id are dropped; a missing ``chunk`` is a 502)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("chunk"), list):
        raise MatrixError(502, M_UNKNOWN, f"{server} answered an invalid room directory")
    chunk = [c for c in answer["chunk"][:MAX_PUBLIC_ROOMS_PAGE] if isinstance(c, dict) and _is_room_id(c.get("room_id"))]
    out: dict[str, Any] = {"chunk": chunk}
    for key in ("next_batch", "prev_batch"):
        value = answer.get(key)
        if isinstance(value, str) and value and len(value) <= MAX_REMOTE_TOKEN_LENGTH:
            out[key] = value
    total = answer.get("total_room_count_estimate")
    if type(total) is int and total >= 0:
        out["total_room_count_estimate"] = total
    return out


def _is_room_id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("!") and len(value) <= 255


def _public_chunk(room_id: str, state: dict[str, Any], joined: int) -> dict[str, Any]:
    """One ``PublishedRoomsChunk`` (spec ``public_rooms_chunk.yaml``)."""
    return room_summary(room_id, state, joined)


def _state_text(state: Mapping[str, Any], event_type: str, key: str) -> Optional[str]:
    ev = state.get(event_type)
    value = ev.content.get(key) if ev is not None else None
    return value if isinstance(value, str) and value else None


#: Summary fields taken from a string in a state event's content: ``field: (type, key)``.
_SUMMARY_TEXTS = {
    "name": ("m.room.name", "name"),
    "topic": ("m.room.topic", "topic"),
    "canonical_alias": ("m.room.canonical_alias", "alias"),
    "avatar_url": ("m.room.avatar", "url"),
    "room_type": ("m.room.create", "type"),
}


def room_summary(room_id: str, state: Mapping[str, Any], joined: int, *, encryption: bool = False) -> dict[str, Any]:
    """What the room directory and the space hierarchy say of a room (the spec's
    ``PublishedRoomsChunk``, which the hierarchy's ``SpaceHierarchyRoomsChunk`` extends),
    from its current state events with an empty state key, by type.

    :param encryption: also the ``encryption`` algorithm (the hierarchy's field).
    """
    chunk: dict[str, Any] = {
        "room_id": room_id,
        "num_joined_members": joined,
        "world_readable": history_visibility(state.get("m.room.history_visibility")) == WORLD_READABLE,
        "guest_can_join": _state_text(state, "m.room.guest_access", "guest_access") == "can_join",
        "join_rule": _state_text(state, "m.room.join_rules", "join_rule") or "invite",
    }
    texts = dict(_SUMMARY_TEXTS, encryption=("m.room.encryption", "algorithm")) if encryption else _SUMMARY_TEXTS
    for key, (event_type, field) in texts.items():
        value = _state_text(state, event_type, field)
        if value is not None:
            chunk[key] = value
    return chunk


def _wanted(chunk: dict[str, Any], search_term: Optional[str], room_types: Optional[list[Optional[str]]]) -> bool:
    """Whether a listed room passes the ``/publicRooms`` filter: ``generic_search_term``
    in its name, topic or canonical alias, and its type in ``room_types`` (``None`` there
    stands for rooms without a type)."""
    if search_term and not _matches(chunk, search_term):
        return False
    if room_types is not None:
        room_type = chunk.get("room_type")
        if not isinstance(room_type, str):
            room_type = None
        if room_type not in room_types:
            return False
    return True


def _matches(chunk: dict[str, Any], term: str) -> bool:
    needle = term.casefold()
    return any(
        isinstance(chunk.get(k), str) and needle in chunk[k].casefold() for k in ("name", "topic", "canonical_alias")
    )


#: Longest ``generic_search_term`` and ``third_party_instance_id`` taken.
MAX_SEARCH_TERM_LENGTH = 1000
#: The most ``room_types`` one filter may name.
MAX_ROOM_TYPES = 50


def public_rooms_request(body: Any) -> dict[str, Any]:
    """The keyword arguments of :meth:`DirectoryHandler.public_rooms` from a ``POST
    /publicRooms`` body (client-server and server-server APIs share it: ``limit``,
    ``since``, ``filter.generic_search_term``, ``filter.room_types``,
    ``include_all_networks``, ``third_party_instance_id``).

    :raises MatrixError: 400 ``M_BAD_JSON`` for a field of the wrong type; 400
        ``M_INVALID_PARAM`` for ``third_party_instance_id`` with ``include_all_networks``
        (the spec: it "can only be used if ``include_all_networks`` is false").
    """
    if not isinstance(body, dict):
        raise bad_json("Request body must be a JSON object")
    limit = body.get("limit")
    if limit is not None and type(limit) is not int:
        raise bad_json("limit must be an integer")
    since = body.get("since")
    if since is not None and not isinstance(since, str):
        raise bad_json("since must be a string")
    flt = body.get("filter")
    if flt is None:
        flt = {}
    if not isinstance(flt, dict):
        raise bad_json("filter must be an object")
    term = flt.get("generic_search_term")
    if term is not None and (not isinstance(term, str) or len(term) > MAX_SEARCH_TERM_LENGTH):
        raise bad_json("generic_search_term must be a string")
    room_types = flt.get("room_types")
    if room_types is not None:
        if (not isinstance(room_types, list) or len(room_types) > MAX_ROOM_TYPES
                or not all(t is None or isinstance(t, str) for t in room_types)):
            raise bad_json("room_types must be a list of strings and nulls")
    all_networks = body.get("include_all_networks", False)
    if all_networks is None:
        all_networks = False
    if not isinstance(all_networks, bool):
        raise bad_json("include_all_networks must be a boolean")
    instance = body.get("third_party_instance_id")
    if instance is not None and (not isinstance(instance, str) or len(instance) > MAX_SEARCH_TERM_LENGTH):
        raise bad_json("third_party_instance_id must be a string")
    if instance is not None and all_networks:
        raise invalid_param("third_party_instance_id", "third_party_instance_id cannot be used with include_all_networks")
    return {
        "limit": limit,
        "since": since,
        "search_term": term or None,
        "room_types": room_types,
        "third_party_instance_id": instance,
    }
