"""Client endpoints for room tags and the user directory."""

from __future__ import annotations

from typing import Any

from fedserver.handlers.client.tags import TagsHandler
from fedserver.handlers.client.user_directory import UserDirectoryHandler
from fedserver.http.client.ephemeral import json_body


def register_tag_routes(client_api: Any, tags: TagsHandler) -> None:
    """``GET /user/{userId}/rooms/{roomId}/tags``, ``PUT`` and ``DELETE .../tags/{tag}``."""
    authed = client_api.add_authed_route

    async def get_tags(request, requester, user_id, room_id):
        return await tags.get_tags(requester, user_id, room_id)

    async def put_tag(request, requester, user_id, room_id, tag):
        await tags.put_tag(requester, user_id, room_id, tag, json_body(request))
        return {}

    async def delete_tag(request, requester, user_id, room_id, tag):
        await tags.delete_tag(requester, user_id, room_id, tag)
        return {}

    authed("GET", "/v3/user/{user_id}/rooms/{room_id}/tags", get_tags)
    authed("PUT", "/v3/user/{user_id}/rooms/{room_id}/tags/{tag}", put_tag)
    authed("DELETE", "/v3/user/{user_id}/rooms/{room_id}/tags/{tag}", delete_tag)


def register_user_directory_routes(client_api: Any, directory: UserDirectoryHandler) -> None:
    """``POST /user_directory/search``."""

    async def search(request, requester):
        return await directory.search(requester, json_body(request))

    client_api.add_authed_route("POST", "/v3/user_directory/search", search)


__all__ = ["register_tag_routes", "register_user_directory_routes"]
