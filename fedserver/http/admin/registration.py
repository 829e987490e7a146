"""Admin endpoints on the client listener under /_synapse/admin (shared-secret registration)."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from fedserver.handlers.client.accounts import SharedSecretRegistration
from fedserver.http.client.api import client_ip
from fedserver.errors import bad_json
from fedserver.http.resource import JsonResource, read_json_object
from fedserver.storage.interface import InvalidDataError

#: Where :func:`build_admin_api`'s resource is mounted on the client listener.
ADMIN_PATH = "/_synapse/admin"


class AdminResource(JsonResource):
    """``/_synapse/admin``: ``GET`` and ``POST /v1/register``, Synapse's shared-secret
    registration (``docs/admin_api/register_api.md`` in Synapse), so that Synapse's
    ``register_new_matrix_user`` and other tools work against fedserver.

    :param shared_secret: the :class:`~fedserver.handlers.client.accounts.SharedSecretRegistration`.
    """

    def __init__(self, shared_secret: SharedSecretRegistration) -> None:
        super().__init__()
        self._shared = shared_secret
        self.add_route("GET", "/v1/register", self._get_nonce)
        self.add_route("POST", "/v1/register", self._register)

    def _get_nonce(self, request: IRequest) -> Any:
        return {"nonce": self._shared.new_nonce()}

    async def _register(self, request: IRequest) -> Any:
        body = read_json_object(request)
        try:
            return await self._shared.register(body, ip=client_ip(request))
        except InvalidDataError as e:  # e.g. a lone surrogate in the display name
            raise bad_json(f"Cannot store this: {e}") from None


def build_admin_api(shared_secret: SharedSecretRegistration) -> AdminResource:
    """The resource to mount at :data:`ADMIN_PATH` on the client listener."""
    return AdminResource(shared_secret)


__all__ = ["ADMIN_PATH", "AdminResource", "build_admin_api"]
