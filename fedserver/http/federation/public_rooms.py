"""The federation room directory: ``GET``/``POST /_matrix/federation/v1/publicRooms``
(server-server API "Public Room Directory")."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable

from twisted.web.iweb import IRequest

from fedserver.errors import forbidden, invalid_param
from fedserver.handlers.rooms.directory import MAX_PUBLIC_ROOMS_PAGE, public_rooms_request
from fedserver.http.resource import query_bool, query_int, query_string, read_json_body


def register_public_rooms_routes(
    federation_resource: Any,
    directory: Any,
    *,
    denied_rooms: Callable[[str, Iterable[str]], Awaitable[Iterable[str]]] | None = None,
    enabled: bool = True,
) -> None:
    """Serve our published rooms to other servers (signed requests only).

    "This SHOULD not return rooms that are listed on another homeserver's directory":
    only our own list, never a relayed one. Rooms whose server ACL denies the asking
    server are left out (server-server API "Server Access Control Lists": a denied
    server may not take part in the room, so it is not invited to it either), as are
    rooms an administrator blocked (the directory handler's own rule).

    :param directory: the :class:`~fedserver.handlers.rooms.directory.DirectoryHandler`.
    :param denied_rooms: ``denied_rooms(origin, room_ids)``: those whose ACL denies
        ``origin`` (:meth:`fedserver.federation.acl.ServerAcls.denied_rooms`).
    :param enabled: ``False`` (option ``public_rooms_over_federation``): every request is
        answered 403 ``M_FORBIDDEN`` (after its signature is checked).
    """
    authenticated = federation_resource.authenticated

    def hide_for(origin: str) -> Any:
        if denied_rooms is None:
            return None
        return lambda room_ids: denied_rooms(origin, room_ids)

    def check_enabled() -> None:
        if not enabled:
            raise forbidden("This server does not share its room directory with other servers")

    async def get_public_rooms(request: IRequest, origin: str) -> Any:
        check_enabled()
        # "limit ... Defaults to 0 (no limit)": 0 is our largest page (next_batch follows).
        limit = query_int(request, "limit", None, minimum=0, maximum=MAX_PUBLIC_ROOMS_PAGE)
        all_networks = query_bool(request, "include_all_networks")
        instance = query_string(request, "third_party_instance_id", None)
        if instance is not None and all_networks:
            raise invalid_param("third_party_instance_id", "third_party_instance_id cannot be used with include_all_networks")
        return await directory.public_rooms(
            limit=limit, since=query_string(request, "since", None), third_party_instance_id=instance,
            hide=hide_for(origin),
        )

    async def post_public_rooms(request: IRequest, origin: str) -> Any:
        check_enabled()
        params = public_rooms_request(read_json_body(request))
        return await directory.public_rooms(**params, hide=hide_for(origin))

    federation_resource.add_route("GET", "/publicRooms", authenticated(get_public_rooms))
    federation_resource.add_route("POST", "/publicRooms", authenticated(post_public_rooms))


__all__ = ["register_public_rooms_routes"]
