"""Client endpoints for relations: /v1/rooms/{roomId}/relations/... and /v1/rooms/{roomId}/threads."""

from __future__ import annotations

from typing import Any

from fedserver.errors import invalid_param
from fedserver.http.resource import query_int, query_string


def _recurse(request: Any) -> Any:
    value = query_string(request, "recurse", None)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise invalid_param("recurse", "recurse must be true or false")
    return value == "true"


def register_relations_routes(client_api: Any, relations: Any) -> None:
    """Add the relations endpoints (client-server API "Relationships API", "Querying
    threads in a room") to a :class:`~fedserver.http.client.api.ClientAPI`.

    :param relations: the :class:`~fedserver.handlers.rooms.relations.RelationsHandler`.
    """
    authed = client_api.add_authed_route

    async def children(request, requester, room_id, event_id, rel_type=None, event_type=None):
        return await relations.relations(
            requester,
            room_id,
            event_id,
            rel_type=rel_type,
            event_type=event_type,
            from_token=query_string(request, "from", None),
            to_token=query_string(request, "to", None),
            direction=query_string(request, "dir", "b"),
            limit=query_int(request, "limit", None, minimum=1, maximum=1000),
            recurse=_recurse(request),
        )

    async def threads(request, requester, room_id):
        return await relations.threads(
            requester,
            room_id,
            include=query_string(request, "include", "all"),
            from_token=query_string(request, "from", None),
            limit=query_int(request, "limit", None, minimum=1, maximum=1000),
        )

    authed("GET", "/v1/rooms/{room_id}/relations/{event_id}", children)
    authed("GET", "/v1/rooms/{room_id}/relations/{event_id}/{rel_type}", children)
    authed("GET", "/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}", children)
    authed("GET", "/v1/rooms/{room_id}/threads", threads)
