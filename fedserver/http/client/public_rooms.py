"""Client endpoints of the published room directory: ``GET``/``POST /v3/publicRooms``,
ours or, with ``server``, another server's (client-server API "Published Room Directory")."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from fedserver.errors import too_large
from fedserver.handlers.rooms.directory import DirectoryHandler, public_rooms_request
from fedserver.http.resource import query_int, query_string, read_json_object_or_empty

#: Largest ``POST /publicRooms`` body.
MAX_PUBLIC_ROOMS_BODY = 65536


def _server(request: IRequest, directory: DirectoryHandler) -> Any:
    """The ``server`` query parameter, ``None`` for ours (absent, or our own name)."""
    server = query_string(request, "server", None)
    return None if server is None or server == directory.server_name else server


def register_public_rooms_routes(client_api: Any, directory: DirectoryHandler) -> None:
    """Add ``GET`` (no access token needed for our own list) and ``POST /publicRooms``
    (with an access token) to a :class:`~fedserver.http.client.api.ClientAPI`.

    Another server's list (``server`` naming it) is asked over federation, and only for
    a user with an access token, on ``GET`` too: anyone else would use us as an
    anonymous relay to other servers (the spec lets ``GET`` go without a token; we ask
    one for this case only).
    """

    async def get_public_rooms(request: IRequest) -> Any:
        server = _server(request, directory)
        if server is not None:
            await client_api.authenticate(request)  # 401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN
        return await directory.public_rooms(
            limit=query_int(request, "limit", None, minimum=0, maximum=10_000),
            since=query_string(request, "since", None),
            third_party_instance_id=query_string(request, "third_party_instance_id", None),
            server=server,
        )

    async def post_public_rooms(request: IRequest, requester: Any) -> Any:
        content = request.content
        if content is not None:
            content.seek(0, 2)
            size = content.tell()
            content.seek(0)
            if size > MAX_PUBLIC_ROOMS_BODY:
                raise too_large(f"Body larger than {MAX_PUBLIC_ROOMS_BODY} bytes")
        params = public_rooms_request(read_json_object_or_empty(request))
        return await directory.public_rooms(**params, server=_server(request, directory))

    client_api.add_public_route("GET", "/v3/publicRooms", get_public_rooms)
    client_api.add_authed_route("POST", "/v3/publicRooms", post_public_rooms)


__all__ = ["register_public_rooms_routes"]
