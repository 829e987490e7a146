"""The room endpoints of the Client-Server API (rooms, membership, directory, /sync) and their wiring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from fedserver.background import STORAGE_RETRY_S
from fedserver.handlers.rooms.client_events import ClientEventSource
from fedserver.handlers.rooms.directory import DirectoryHandler
from fedserver.handlers.rooms.membership import MembershipHandler, RoomEvents
from fedserver.handlers.client.notifier import Notifier
from fedserver.handlers.rooms.lazy_members import SentMembers
from fedserver.handlers.rooms.relations import RelationsHandler
from fedserver.handlers.rooms.rooms import RoomsHandler
from fedserver.handlers.rooms.timeline import TimelineHandler
from fedserver.handlers.rooms.upgrade import RoomUpgradeHandler
from fedserver.handlers.client.ignored_users import IgnoredUsers
from fedserver.handlers.client.sync import PartialStateSection, SyncHandler
from fedserver.http.client.public_rooms import register_public_rooms_routes
from fedserver.http.client.relations import register_relations_routes
from fedserver.http.client.timeline import register_timeline_routes
from fedserver.http.client.upgrade import register_upgrade_routes
from fedserver.errors import bad_json, invalid_param, missing_param, too_large
from fedserver.http.resource import query_int, query_string, query_strings, read_json_object
from fedserver.room_versions import DEFAULT_ROOM_VERSION, RoomVersion, RoomVersionRegistry
from fedserver.storage.interface import StorageUnavailableError

log = Logger()

#: Largest body of an event (content) a client may send: the spec's event size limit.
MAX_EVENT_BODY = 65536
#: Largest createRoom body (initial_state may hold many events).
MAX_CREATE_ROOM_BODY = 1024 * 1024
#: Largest body of the small membership / directory requests.
MAX_SMALL_BODY = 65536


@dataclass
class RoomServices:
    """The room handlers, built once per server (see :func:`build_room_services`)."""

    events: RoomEvents
    notifier: Notifier
    source: ClientEventSource
    directory: DirectoryHandler
    membership: MembershipHandler
    rooms: RoomsHandler
    sync: SyncHandler
    timeline: TimelineHandler
    relations: RelationsHandler
    upgrades: RoomUpgradeHandler
    relations_catch_up: Optional["defer.Deferred[Any]"] = None
    #: whom each user ignores; its ``invalidate`` must hear of account data writes.
    ignored: Optional[IgnoredUsers] = None
    #: ``callLater`` (background work retried after storage faults).
    clock: Any = None

    def startup(self) -> "defer.Deferred[int]":
        """Catch up the redaction index (redactions persisted while it was not running,
        e.g. just before a crash); call once when the server starts. The relations of
        events stored before relations were indexed (schema 006) are indexed in the
        background (:attr:`relations_catch_up` fires when done)."""
        store = self.events.store
        relations = getattr(store, "relations", None)
        if relations is not None:
            self.relations_catch_up = defer.ensureDeferred(self._catch_up_relations(relations))
            self.relations_catch_up.addErrback(lambda f: None if f.check(defer.CancelledError) else f)
        return store.rooms.index_redactions()

    async def _catch_up_relations(self, relations: Any) -> int:
        """The relations catch-up, tried again while the database is unavailable (it
        logs that once per episode); cancelled when the server stops."""
        while True:
            try:
                return await relations.catch_up()
            except StorageUnavailableError:
                if self.clock is None:
                    return 0
                await task.deferLater(self.clock, STORAGE_RETRY_S, lambda: None)
            except defer.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - logged; the next start tries again
                log.failure("Indexing relations failed")
                return 0


def build_room_services(
    *,
    store: Any,
    pipeline: Any,
    creator: Any,
    server_name: str,
    signing_key: Any,
    clock: Any,
    room_versions: Optional[RoomVersionRegistry] = None,
    default_room_version: "str | RoomVersion" = DEFAULT_ROOM_VERSION,
    remote: Any = None,
    remote_alias_query: Optional[Callable[[str, str], Any]] = None,
    is_room_blocked: Optional[Callable[[str], bool]] = None,
    backfill: Any = None,
    federation_client: Any = None,
) -> RoomServices:
    """Build the room handlers on ``store`` and attach them to ``pipeline.on_persisted``
    (the notifier that wakes /sync, and the redaction indexer).

    :param creator: the :class:`~fedserver.handlers.rooms.creator.EventCreator`.
    :param clock: the reactor (timestamps, /sync timeouts).
    :param default_room_version: for ``createRoom`` without ``room_version`` (an
        identifier or a version).
    :param remote: a :class:`~fedserver.handlers.federation.remote_membership.RemoteMembership`
        for rooms that are not here and users of other servers (``None``: refused).
    :param remote_alias_query: ``(server_name, alias)`` to ``{"room_id", "servers"}``
        over federation (``None``: other servers' aliases are not found).
    :param is_room_blocked: rooms our users may not join (see
        :class:`~fedserver.handlers.rooms.membership.MembershipHandler`).
    :param backfill: a :class:`~fedserver.handlers.federation.backfill.BackfillHandler`
        to fetch history from other servers for /messages (``None``: only what we hold).
    :param federation_client: lists other servers' public rooms (``None``: not listed).
    """
    versions = room_versions if room_versions is not None else RoomVersionRegistry()
    if isinstance(default_room_version, str):
        default_room_version = versions.get(default_room_version)
    notifier = Notifier(clock)
    events = RoomEvents(store, creator, pipeline, server_name, signing_key)
    source = ClientEventSource(store, clock)
    ignored = source.ignored = IgnoredUsers(store)
    directory = DirectoryHandler(
        store, server_name, remote_query=remote_alias_query, federation_client=federation_client,
        is_room_blocked=is_room_blocked,
    )
    membership = MembershipHandler(events, directory, remote=remote, notifier=notifier, is_room_blocked=is_room_blocked)
    rooms = RoomsHandler(
        events, membership, directory, source, room_versions=versions, default_room_version=default_room_version
    )
    sent_members = SentMembers()
    sync = SyncHandler(
        store, notifier, source, clock, sections=[PartialStateSection(store)], sent_members=sent_members
    )
    timeline = TimelineHandler(events, source, rooms, backfill=backfill, sent_members=sent_members)
    relations = RelationsHandler(store, source, timeline)
    rooms.relations = relations
    upgrades = RoomUpgradeHandler(events, membership, versions)
    membership.on_joined.append(upgrades.on_joined)
    pipeline.on_persisted.append(notifier.on_persisted)
    pipeline.on_full_state.append(notifier.notify_room)
    pipeline.on_persisted.append(rooms.on_persisted)
    return RoomServices(
        events, notifier, source, directory, membership, rooms, sync, timeline, relations, upgrades, ignored=ignored,
        clock=clock,
    )


# -- request helpers ----------------------------------------------------------------------------


def _body(request: IRequest, limit: int = MAX_SMALL_BODY, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object body (``{}`` for an empty body if ``optional``).

    :raises MatrixError: 413 beyond ``limit``; 400 ``M_NOT_JSON`` / ``M_BAD_JSON``.
    """
    content = request.content
    if content is not None:
        content.seek(0, 2)
        size = content.tell()
        if size > limit:
            raise too_large(f"Body larger than {limit} bytes")
        if size == 0 and optional:
            return {}
    elif optional:
        return {}
    return read_json_object(request)


def _user_id_param(body: dict[str, Any]) -> str:
    user_id = body.get("user_id")
    if user_id is None:
        raise missing_param("user_id")
    if not isinstance(user_id, str):
        raise bad_json("user_id must be a string")
    return user_id


def _room_hints(request: IRequest) -> list[str]:
    """``via`` (spec v1.12) and the older ``server_name`` query parameters."""
    hints = []
    for name in ("via", "server_name"):
        for value in query_strings(request, name):
            if value and value not in hints:
                hints.append(value)
    return hints


# -- routes -------------------------------------------------------------------------------------


def register_room_routes(client_api: Any, services: RoomServices) -> None:
    """Add the room endpoints to a :class:`~fedserver.http.client.api.ClientAPI` (each
    also under ``/r0/``). ``createRoom`` then defaults to the room version the API
    advertises in ``/capabilities``.
    """
    rooms = services.rooms
    advertised = getattr(client_api, "default_room_version", None)
    if isinstance(advertised, str) and advertised in rooms.room_versions:
        rooms.default_room_version = rooms.room_versions.get(advertised)
    _register_event_routes(client_api, rooms)
    register_timeline_routes(client_api, services.timeline)
    register_relations_routes(client_api, services.relations)
    register_upgrade_routes(client_api, services.upgrades)
    _register_membership_routes(client_api, services.membership)
    _register_directory_routes(client_api, services.directory)
    _register_sync_routes(client_api, services.sync)


def _register_event_routes(client_api: Any, rooms: RoomsHandler) -> None:
    """Rooms and their events: client-server API "Rooms", "Creation" (``POST
    /createRoom``), "Sending events to a room" (``PUT .../send``, ``PUT .../state``),
    "Getting events for a room" (``GET .../state``), "Redactions" (``PUT .../redact``),
    "Room membership" (``GET /joined_rooms``)."""
    authed = client_api.add_authed_route

    async def create_room(request, requester):
        return await rooms.create_room(requester, _body(request, MAX_CREATE_ROOM_BODY))

    async def send(request, requester, room_id, event_type, txn_id):
        content = _body(request, MAX_EVENT_BODY)
        return {"event_id": await rooms.send_event(requester, room_id, event_type, content, txn_id)}

    async def put_state(request, requester, room_id, event_type, state_key=""):
        content = _body(request, MAX_EVENT_BODY)
        return {"event_id": await rooms.set_state(requester, room_id, event_type, state_key, content)}

    async def get_state(request, requester, room_id):
        return await rooms.get_state(requester, room_id)

    async def get_state_event(request, requester, room_id, event_type, state_key=""):
        fmt = query_string(request, "format", "content")
        return await rooms.get_state_event(requester, room_id, event_type, state_key, format=fmt)

    async def redact(request, requester, room_id, event_id, txn_id):
        body = _body(request, optional=True)
        return {"event_id": await rooms.redact(requester, room_id, event_id, txn_id, body.get("reason"))}

    async def joined_rooms(request, requester):
        return await rooms.joined_rooms(requester)

    authed("POST", "/v3/createRoom", create_room)
    authed("PUT", "/v3/rooms/{room_id}/send/{event_type}/{txn_id}", send)
    authed("PUT", "/v3/rooms/{room_id}/state/{event_type}/{state_key}", put_state)
    authed("PUT", "/v3/rooms/{room_id}/state/{event_type}", put_state)
    authed("GET", "/v3/rooms/{room_id}/state", get_state)
    authed("GET", "/v3/rooms/{room_id}/state/{event_type}/{state_key}", get_state_event)
    authed("GET", "/v3/rooms/{room_id}/state/{event_type}", get_state_event)
    authed("PUT", "/v3/rooms/{room_id}/redact/{event_id}/{txn_id}", redact)
    authed("GET", "/v3/joined_rooms", joined_rooms)


def _register_membership_routes(client_api: Any, membership: MembershipHandler) -> None:
    """Client-server API "Room membership": "Joining rooms" (``/join``, ``/invite``),
    "Knocking on rooms" (``/knock``), "Leaving rooms" (``/leave``, ``/forget``,
    ``/kick``), "Banning users in a room" (``/ban``, ``/unban``)."""
    authed = client_api.add_authed_route

    async def join_any(request, requester, room_id_or_alias):
        body = _body(request, optional=True)
        room_id = await membership.join(
            requester.user_id, room_id_or_alias, server_names=_room_hints(request), reason=body.get("reason")
        )
        return {"room_id": room_id}

    async def join_room(request, requester, room_id):
        body = _body(request, optional=True)
        return {"room_id": await membership.join(requester.user_id, room_id, reason=body.get("reason"))}

    async def leave(request, requester, room_id):
        body = _body(request, optional=True)
        await membership.leave(requester.user_id, room_id, reason=body.get("reason"))
        return {}

    async def invite(request, requester, room_id):
        body = _body(request)
        if "id_server" in body or "medium" in body:
            raise invalid_param("medium", "Third-party invites are not supported")
        await membership.invite(requester.user_id, room_id, _user_id_param(body), reason=body.get("reason"))
        return {}

    def moderate(action):
        async def handler(request, requester, room_id):
            body = _body(request)
            await action(requester.user_id, room_id, _user_id_param(body), reason=body.get("reason"))
            return {}

        return handler

    async def knock(request, requester, room_id_or_alias):
        body = _body(request, optional=True)
        room_id = await membership.knock(
            requester.user_id, room_id_or_alias, server_names=_room_hints(request), reason=body.get("reason")
        )
        return {"room_id": room_id}

    async def forget(request, requester, room_id):
        await membership.forget(requester.user_id, room_id)
        return {}

    authed("POST", "/v3/join/{room_id_or_alias}", join_any)
    authed("POST", "/v3/rooms/{room_id}/join", join_room)
    authed("POST", "/v3/rooms/{room_id}/leave", leave)
    authed("POST", "/v3/rooms/{room_id}/invite", invite)
    authed("POST", "/v3/rooms/{room_id}/kick", moderate(membership.kick))
    authed("POST", "/v3/rooms/{room_id}/ban", moderate(membership.ban))
    authed("POST", "/v3/rooms/{room_id}/unban", moderate(membership.unban))
    authed("POST", "/v3/knock/{room_id_or_alias}", knock)
    authed("POST", "/v3/rooms/{room_id}/forget", forget)


def _register_directory_routes(client_api: Any, directory: DirectoryHandler) -> None:
    """Client-server API "Room aliases" (``/directory/room/{roomAlias}``,
    ``/rooms/{roomId}/aliases``) and "Published room directory"
    (``/directory/list/room/{roomId}``, ``/publicRooms``)."""
    authed = client_api.add_authed_route
    public = client_api.add_public_route

    async def put_alias(request, requester, room_alias):
        body = _body(request)
        room_id = body.get("room_id")
        if room_id is None:
            raise missing_param("room_id")
        await directory.create_alias(requester.user_id, room_alias, room_id)
        return {}

    async def get_alias(request, room_alias):
        return await directory.resolve_alias(room_alias)

    async def delete_alias(request, requester, room_alias):
        await directory.delete_alias(requester.user_id, room_alias)
        return {}

    async def room_aliases(request, requester, room_id):
        return {"aliases": await directory.room_aliases(requester.user_id, room_id)}

    async def get_visibility(request, room_id):
        return {"visibility": await directory.get_visibility(room_id)}

    async def put_visibility(request, requester, room_id):
        body = _body(request)
        await directory.set_visibility(requester.user_id, room_id, body.get("visibility", "public"))
        return {}

    authed("PUT", "/v3/directory/room/{room_alias}", put_alias)
    public("GET", "/v3/directory/room/{room_alias}", get_alias)
    authed("DELETE", "/v3/directory/room/{room_alias}", delete_alias)
    authed("GET", "/v3/rooms/{room_id}/aliases", room_aliases)
    public("GET", "/v3/directory/list/room/{room_id}", get_visibility)
    authed("PUT", "/v3/directory/list/room/{room_id}", put_visibility)
    register_public_rooms_routes(client_api, directory)


def _register_sync_routes(client_api: Any, sync: SyncHandler) -> None:
    """Client-server API "Syncing" (``GET /sync``); a client that goes away ends its
    long-poll."""

    async def do_sync(request, requester):
        full_state = query_string(request, "full_state", "false")
        if full_state not in ("true", "false"):
            raise invalid_param("full_state", "full_state must be true or false")
        d = defer.ensureDeferred(
            sync.sync(
                requester,
                since=query_string(request, "since", None),
                timeout_ms=query_int(request, "timeout", 0, minimum=0),
                full_state=full_state == "true",
                filter_param=query_string(request, "filter", None),
                set_presence=query_string(request, "set_presence", None),
            )
        )
        # A client that goes away stops its long-poll (the waiter is removed).
        finished = request.notifyFinish()
        finished.addErrback(lambda _: d.cancel())
        try:
            return await d
        except defer.CancelledError:
            return None  # nobody is listening any more

    client_api.add_authed_route("GET", "/v3/sync", do_sync)
