"""Client endpoint for deactivating one's own account (``POST /account/deactivate``)."""

from __future__ import annotations

from typing import Any

from fedserver.handlers.client.deactivate import AccountDeactivation
from fedserver.http.client.ephemeral import json_body


def register_deactivation_routes(client_api: Any, deactivation: AccountDeactivation) -> None:
    """``POST /v3/account/deactivate`` (User-Interactive Authentication with the password;
    an access token is required)."""

    async def deactivate(request, requester):
        return await deactivation.request(requester, json_body(request))

    client_api.add_authed_route("POST", "/v3/account/deactivate", deactivate)


__all__ = ["register_deactivation_routes"]
