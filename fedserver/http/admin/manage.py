"""The admin API's users, rooms and destinations under /_synapse/admin (Synapse's paths and shapes), admins only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from twisted.web.iweb import IRequest

from fedserver import __version__
from fedserver.errors import bad_json, forbidden, invalid_param
from fedserver.http.resource import JsonResource, query_int, query_string, read_json_object, read_json_object_or_empty

#: ``authenticate(request)`` fires with the caller's Requester (401 without a valid token).
Authenticate = Callable[[IRequest], Awaitable[Any]]
#: ``is_admin(user_id)`` fires with whether that local user is a server admin.
IsAdmin = Callable[[str], Awaitable[bool]]

#: Largest page of any listing.
MAX_LIMIT = 1000


class AdminAuth:
    """Admin users only: a valid access token (401 ``M_MISSING_TOKEN`` /
    ``M_UNKNOWN_TOKEN`` otherwise) of a local user who is a server admin and not
    deactivated (403 ``M_FORBIDDEN`` otherwise)."""

    def __init__(self, authenticate: Authenticate, is_admin: IsAdmin) -> None:
        self._authenticate = authenticate
        self._is_admin = is_admin

    async def __call__(self, request: IRequest) -> str:
        """:returns: the admin's user id."""
        requester = await self._authenticate(request)
        if not await self._is_admin(requester.user_id):
            raise forbidden("You are not a server admin")
        return requester.user_id


def _bool_param(request: IRequest, name: str, default: Optional[bool]) -> Optional[bool]:
    raw = query_string(request, name, None)
    if raw is None:
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise invalid_param(name, f"{name} must be true or false")


def _page(request: IRequest, from_name: str = "from") -> tuple[int, int]:
    offset = query_int(request, from_name, 0, minimum=0)
    limit = query_int(request, "limit", 100, minimum=1, maximum=MAX_LIMIT)
    return offset, limit


def _direction(request: IRequest) -> bool:
    direction = query_string(request, "dir", "f")
    if direction not in ("f", "b"):
        raise invalid_param("dir", "dir must be f or b")
    return direction == "b"



@dataclass
class AdminHandlers:
    """What the routes call: :class:`~fedserver.handlers.admin.users.AdminUsers`,
    :class:`~fedserver.handlers.admin.rooms.AdminRooms` and
    :class:`~fedserver.handlers.admin.destinations.AdminDestinations`."""

    users: Any
    rooms: Any
    destinations: Any


def register_admin_routes(admin: JsonResource, handlers: AdminHandlers, auth: AdminAuth) -> None:
    """Add the users, rooms and destinations endpoints to the resource mounted at
    ``/_synapse/admin`` (see docs/admin-api.md; every one needs an admin's token)."""

    def route(method: str, template: str, handler: Callable[..., Awaitable[Any]]) -> None:
        async def run(request: IRequest, **params: str) -> Any:
            admin_id = await auth(request)
            return await handler(request, admin_id, **params)

        admin.add_route(method, template, run)

    async def server_version(request: IRequest, admin_id: str) -> Any:
        return {"server_version": f"fedserver {__version__}"}

    route("GET", "/v1/server_version", server_version)  # docs/admin-api.md "Server"
    _register_user_routes(route, handlers.users)
    _register_room_routes(route, handlers.rooms)
    _register_destination_routes(route, handlers.destinations)


#: ``route(method, template, handler)`` adds an admin-only route whose handler is called
#: with ``(request, admin_id, **path_params)``.
_Route = Callable[[str, str, Callable[..., Awaitable[Any]]], None]


def _register_user_routes(route: _Route, users: Any) -> None:
    """docs/admin-api.md "Users": list, show, create or change, deactivate, reset a
    password, devices, rooms of a user, the admin flag."""

    async def list_users(request: IRequest, admin_id: str) -> Any:
        offset, limit = _page(request)
        name = query_string(request, "name", None) or query_string(request, "user_id", None)
        return await users.list_users(
            offset=offset, limit=limit, name=name,
            deactivated=bool(_bool_param(request, "deactivated", False)),
            admins=_bool_param(request, "admins", None),
            guests=bool(_bool_param(request, "guests", True)),
            order_by=query_string(request, "order_by", "name"), backwards=_direction(request),
        )

    async def get_user(request: IRequest, admin_id: str, user_id: str) -> Any:
        return await users.get_user(user_id)

    async def put_user(request: IRequest, admin_id: str, user_id: str) -> Any:
        return await users.put_user(user_id, read_json_object(request))

    async def devices(request: IRequest, admin_id: str, user_id: str) -> Any:
        return await users.devices(user_id)

    async def joined_rooms(request: IRequest, admin_id: str, user_id: str) -> Any:
        return await users.joined_rooms(user_id)

    async def get_admin(request: IRequest, admin_id: str, user_id: str) -> Any:
        return {"admin": (await users.get_user(user_id))["admin"]}

    async def put_admin(request: IRequest, admin_id: str, user_id: str) -> Any:
        body = read_json_object(request)
        if user_id == admin_id and body.get("admin") is False:
            raise bad_json("You may not demote yourself")
        await users.set_admin(user_id, body.get("admin"))
        return {}

    async def deactivate(request: IRequest, admin_id: str, user_id: str) -> Any:
        body = read_json_object_or_empty(request)
        return await users.deactivate(user_id, erase=body.get("erase", False))

    async def reset_password(request: IRequest, admin_id: str, user_id: str) -> Any:
        body = read_json_object(request)
        await users.reset_password(user_id, body.get("new_password"), logout_devices=body.get("logout_devices", True))
        return {}

    route("GET", "/v2/users", list_users)
    route("GET", "/v2/users/{user_id}", get_user)
    route("PUT", "/v2/users/{user_id}", put_user)
    route("GET", "/v2/users/{user_id}/devices", devices)
    route("GET", "/v1/users/{user_id}/joined_rooms", joined_rooms)
    route("GET", "/v1/users/{user_id}/admin", get_admin)
    route("PUT", "/v1/users/{user_id}/admin", put_admin)
    route("POST", "/v1/deactivate/{user_id}", deactivate)
    route("POST", "/v1/reset_password/{user_id}", reset_password)


def _register_room_routes(route: _Route, rooms: Any) -> None:
    """docs/admin-api.md "Rooms": list, one room, members and state, block a room,
    purge history, delete a room (at once or in the background, with its status)."""

    async def list_rooms(request: IRequest, admin_id: str) -> Any:
        offset, limit = _page(request)
        return await rooms.list_rooms(
            offset=offset, limit=limit, order_by=query_string(request, "order_by", "name"),
            backwards=_direction(request), search_term=query_string(request, "search_term", None),
        )

    async def get_room(request: IRequest, admin_id: str, room_id: str) -> Any:
        return await rooms.get_room(room_id)

    async def members(request: IRequest, admin_id: str, room_id: str) -> Any:
        return await rooms.members(room_id)

    async def state(request: IRequest, admin_id: str, room_id: str) -> Any:
        return await rooms.state(room_id)

    async def get_block(request: IRequest, admin_id: str, room_id: str) -> Any:
        return rooms.block_status(room_id)

    async def put_block(request: IRequest, admin_id: str, room_id: str) -> Any:
        return await rooms.set_block(room_id, read_json_object(request).get("block"), admin_id)

    async def purge(request: IRequest, admin_id: str, room_id: str, event_id: Optional[str] = None) -> Any:
        body = read_json_object_or_empty(request)
        delete_local = body.get("delete_local_events", False)
        if type(delete_local) is not bool:
            raise bad_json("delete_local_events must be a boolean")
        return await rooms.purge_history(
            room_id, event_id=event_id or body.get("purge_up_to_event_id"), before_ts=body.get("purge_up_to_ts"),
            delete_local=delete_local,
        )

    async def purge_status(request: IRequest, admin_id: str, purge_id: str) -> Any:
        return rooms.job_status("purge", purge_id)

    async def delete_v1(request: IRequest, admin_id: str, room_id: str) -> Any:
        return await rooms.delete_room(room_id, read_json_object_or_empty(request), admin_id)

    async def delete_v2(request: IRequest, admin_id: str, room_id: str) -> Any:
        return rooms.delete_room_in_background(room_id, read_json_object_or_empty(request), admin_id)

    async def delete_status(request: IRequest, admin_id: str, delete_id: str) -> Any:
        return rooms.job_status("delete", delete_id)

    async def delete_statuses(request: IRequest, admin_id: str, room_id: str) -> Any:
        return rooms.delete_statuses(room_id)

    route("GET", "/v1/rooms", list_rooms)
    route("GET", "/v1/rooms/{room_id}", get_room)
    route("GET", "/v1/rooms/{room_id}/members", members)
    route("GET", "/v1/rooms/{room_id}/state", state)
    route("GET", "/v1/rooms/{room_id}/block", get_block)
    route("PUT", "/v1/rooms/{room_id}/block", put_block)
    route("POST", "/v1/purge_history/{room_id}", purge)
    route("POST", "/v1/purge_history/{room_id}/{event_id}", purge)
    route("GET", "/v1/purge_history_status/{purge_id}", purge_status)
    route("DELETE", "/v1/rooms/{room_id}", delete_v1)
    route("DELETE", "/v2/rooms/{room_id}", delete_v2)
    route("GET", "/v2/rooms/delete_status/{delete_id}", delete_status)
    route("GET", "/v2/rooms/{room_id}/delete_status", delete_statuses)


def _register_destination_routes(route: _Route, dests: Any) -> None:
    """docs/admin-api.md "Destinations (other servers)": list, one destination, reset
    the connection (forget its backoff and send what is queued now)."""

    async def list_destinations(request: IRequest, admin_id: str) -> Any:
        offset, limit = _page(request)
        return await dests.list_destinations(
            offset=offset, limit=limit, name=query_string(request, "destination", None),
            order_by=query_string(request, "order_by", "destination"), backwards=_direction(request),
        )

    async def get_destination(request: IRequest, admin_id: str, destination: str) -> Any:
        return await dests.get_destination(destination)

    async def reset_connection(request: IRequest, admin_id: str, destination: str) -> Any:
        return await dests.reset_connection(destination)

    route("GET", "/v1/federation/destinations", list_destinations)
    route("GET", "/v1/federation/destinations/{destination}", get_destination)
    route("POST", "/v1/federation/destinations/{destination}/reset_connection", reset_connection)


__all__ = ["AdminAuth", "AdminHandlers", "MAX_LIMIT", "register_admin_routes"]
