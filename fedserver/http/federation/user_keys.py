"""The federation device and key endpoints: /user/devices/{userId}, /user/keys/query, /user/keys/claim."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from fedserver.errors import forbidden, invalid_param
from fedserver.http.resource import read_json_body


def register_user_keys_routes(federation_resource: Any, local_lists: Any, keys: Any) -> None:
    """Add the endpoints to the ``/_matrix/federation/v1`` resource; each requires a
    valid X-Matrix signature.

    :param local_lists: the :class:`~fedserver.handlers.e2ee.devices.LocalDeviceLists`.
    :param keys: the :class:`~fedserver.handlers.e2ee.e2e_keys.E2eKeysHandler`.
    :raises ValueError: if a route is already registered.
    """
    authenticated = federation_resource.authenticated
    add = federation_resource.add_route

    async def user_devices(request: IRequest, origin: str, user_id: str) -> Any:
        # "The user ID to retrieve devices for. Must be a user local to the receiving
        # homeserver."
        if not user_id.startswith("@") or len(user_id.encode("utf-8", "surrogatepass")) > 255:
            raise invalid_param("userId", "Invalid user id")
        if not local_lists.is_mine(user_id):
            raise forbidden("Not a user of this server")
        return await local_lists.user_devices(user_id)

    async def query(request: IRequest, origin: str) -> Any:
        return await keys.on_federation_query(origin, read_json_body(request))

    async def claim(request: IRequest, origin: str) -> Any:
        return await keys.on_federation_claim(origin, read_json_body(request))

    add("GET", "/user/devices/{user_id}", authenticated(user_devices))
    add("POST", "/user/keys/query", authenticated(query))
    add("POST", "/user/keys/claim", authenticated(claim))


__all__ = ["register_user_keys_routes"]
