"""Client endpoints for receipts, read markers, typing and presence, and their wiring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.web.iweb import IRequest

from fedserver.errors import too_large
from fedserver.handlers.ephemeral.presence import PresenceHandler
from fedserver.handlers.ephemeral.receipts import ReceiptsHandler
from fedserver.handlers.ephemeral.typing import TypingHandler
from fedserver.http.resource import read_json_object

#: Largest body of these small requests.
MAX_BODY = 65536


def json_body(request: IRequest, limit: int = MAX_BODY, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body (``{}`` for an empty body when ``optional``).

    :raises MatrixError: 413 ``M_TOO_LARGE`` beyond ``limit``; 400 ``M_NOT_JSON`` /
        ``M_BAD_JSON``.
    """
    content = request.content
    if content is None:
        if optional:
            return {}
        return read_json_object(request)
    content.seek(0, 2)
    size = content.tell()
    if size > limit:
        raise too_large(f"Body larger than {limit} bytes")
    if size == 0 and optional:
        return {}
    return read_json_object(request)


@dataclass
class EphemeralServices:
    """The handlers of the ephemeral area (see :func:`build_ephemeral_services`)."""

    receipts: ReceiptsHandler
    typing: TypingHandler
    presence: PresenceHandler


def build_ephemeral_services(
    *,
    store: Any,
    server_name: str,
    clock: Any,
    notifier: Any,
    send_edu: Callable[..., Any],
    send_ephemeral_edu: Callable[..., Any],
    presence_enabled: bool = True,
) -> EphemeralServices:
    """Build the receipts, typing and presence handlers.

    :param send_edu: the persisted outbound queue (``FederationSender.send_edu``).
    :param send_ephemeral_edu: the in-memory path (``FederationSender.send_ephemeral_edu``).
    """
    return EphemeralServices(
        ReceiptsHandler(store, server_name, clock, notifier, send_edu),
        TypingHandler(clock, store, server_name, notifier, send_ephemeral_edu),
        PresenceHandler(clock, store, server_name, notifier, send_ephemeral_edu, enabled=presence_enabled),
    )


def register_ephemeral_routes(client_api: Any, services: EphemeralServices) -> None:
    """Add the receipt, read marker, typing and presence endpoints (each also under ``/r0/``)."""
    receipts, typing, presence = services.receipts, services.typing, services.presence
    authed = client_api.add_authed_route

    async def receipt(request, requester, room_id, receipt_type, event_id):
        await receipts.post_receipt(requester, room_id, receipt_type, event_id, json_body(request, optional=True))
        return {}

    async def read_markers(request, requester, room_id):
        await receipts.set_read_markers(requester, room_id, json_body(request, optional=True))
        return {}

    async def put_typing(request, requester, room_id, user_id):
        body = json_body(request)
        await typing.set_typing(requester, room_id, user_id, body.get("typing"), body.get("timeout"))
        return {}

    async def put_presence(request, requester, user_id):
        await presence.set_status(requester, user_id, json_body(request))
        return {}

    async def get_presence(request, requester, user_id):
        return await presence.get_status(requester, user_id)

    authed("POST", "/v3/rooms/{room_id}/receipt/{receipt_type}/{event_id}", receipt)
    authed("POST", "/v3/rooms/{room_id}/read_markers", read_markers)
    authed("PUT", "/v3/rooms/{room_id}/typing/{user_id}", put_typing)
    authed("PUT", "/v3/presence/{user_id}/status", put_presence)
    authed("GET", "/v3/presence/{user_id}/status", get_presence)


__all__ = ["EphemeralServices", "build_ephemeral_services", "json_body", "register_ephemeral_routes"]
