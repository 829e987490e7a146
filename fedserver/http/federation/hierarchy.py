"""The federation space hierarchy: ``GET /_matrix/federation/v1/hierarchy/{roomId}``
(server-server API "Spaces")."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from fedserver.http.resource import query_bool


def register_federation_hierarchy_routes(federation_resource: Any, hierarchy: Any) -> None:
    """Serve the hierarchy of a room we hold to other servers (signed requests only).

    :param hierarchy: the :class:`~fedserver.handlers.rooms.hierarchy.SpaceHierarchy`
        (it applies the server ACLs, the blocked rooms and who may see what).
    """

    async def get_hierarchy(request: IRequest, origin: str, room_id: str) -> Any:
        return await hierarchy.federation_hierarchy(origin, room_id, query_bool(request, "suggested_only"))

    federation_resource.add_route("GET", "/hierarchy/{room_id}", federation_resource.authenticated(get_hierarchy))


__all__ = ["register_federation_hierarchy_routes"]
