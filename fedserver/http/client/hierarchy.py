"""Client endpoint of the space hierarchy: ``GET /_matrix/client/v1/rooms/{roomId}/hierarchy``
(client-server API "Spaces")."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from fedserver.http.resource import query_bool, query_int, query_string


def register_hierarchy_routes(client_api: Any, hierarchy: Any) -> None:
    """Add ``GET /v1/rooms/{roomId}/hierarchy`` to a
    :class:`~fedserver.http.client.api.ClientAPI`.

    :param hierarchy: the :class:`~fedserver.handlers.rooms.hierarchy.SpaceHierarchy`.
    """

    async def get_hierarchy(request: IRequest, requester: Any, room_id: str) -> Any:
        return await hierarchy.hierarchy(
            requester.user_id,
            room_id,
            suggested_only=query_bool(request, "suggested_only"),
            # "Must be an integer greater than zero" / "a non-negative integer": the
            # handler refuses the rest with 400 M_INVALID_PARAM.
            limit=query_int(request, "limit", None, minimum=-1, maximum=1_000_000),
            max_depth=query_int(request, "max_depth", None, minimum=-1, maximum=1_000_000),
            from_token=query_string(request, "from", None),
        )

    client_api.add_authed_route("GET", "/v1/rooms/{room_id}/hierarchy", get_hierarchy, r0=False)


__all__ = ["register_hierarchy_routes"]
