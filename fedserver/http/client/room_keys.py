"""The server-side key backup endpoints of the Client-Server API (/room_keys/*)."""

from __future__ import annotations

from typing import Any

from fedserver.http.client.keys import json_body
from fedserver.http.resource import query_string

#: Largest backup upload (the server's request cap still applies first).
MAX_ROOM_KEYS_BODY = 12 * 1024 * 1024


def register_room_keys_routes(client_api: Any, backups: Any) -> None:
    """Add ``/room_keys/*`` to a :class:`~fedserver.http.client.api.ClientAPI`.

    :param backups: the :class:`~fedserver.handlers.e2ee.key_backup.KeyBackupHandler`.
    """
    authed = client_api.add_authed_route

    async def create_version(request, requester):
        return await backups.create_version(requester, json_body(request))

    async def current_version(request, requester):
        return await backups.get_version(requester)

    async def get_version(request, requester, version):
        return await backups.get_version(requester, version)

    async def put_version(request, requester, version):
        return await backups.update_version(requester, version, json_body(request))

    async def delete_version(request, requester, version):
        return await backups.delete_version(requester, version)

    def keys_route(method: str):
        async def handle(request, requester, room_id=None, session_id=None):
            version = query_string(request, "version")
            if method == "PUT":
                return await backups.put_keys(requester, version, json_body(request, MAX_ROOM_KEYS_BODY), room_id, session_id)
            if method == "GET":
                return await backups.get_keys(requester, version, room_id, session_id)
            return await backups.delete_keys(requester, version, room_id, session_id)

        return handle

    authed("POST", "/v3/room_keys/version", create_version)
    authed("GET", "/v3/room_keys/version", current_version)
    authed("GET", "/v3/room_keys/version/{version}", get_version)
    authed("PUT", "/v3/room_keys/version/{version}", put_version)
    authed("DELETE", "/v3/room_keys/version/{version}", delete_version)
    for method in ("PUT", "GET", "DELETE"):
        handler = keys_route(method)
        authed(method, "/v3/room_keys/keys", handler)
        authed(method, "/v3/room_keys/keys/{room_id}", handler)
        authed(method, "/v3/room_keys/keys/{room_id}/{session_id}", handler)


__all__ = ["register_room_keys_routes"]
