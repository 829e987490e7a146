"""PUT /sendToDevice/{eventType}/{txnId} of the Client-Server API."""

from __future__ import annotations

from typing import Any

from fedserver.http.client.keys import json_body

#: Largest /sendToDevice body (encrypted room keys for a few thousand devices).
MAX_TO_DEVICE_BODY = 8 * 1024 * 1024


def register_to_device_routes(client_api: Any, to_device: Any) -> None:
    """Add ``/sendToDevice`` to a :class:`~fedserver.http.client.api.ClientAPI`.

    :param to_device: the :class:`~fedserver.handlers.e2ee.to_device.ToDeviceHandler`.
    """

    async def send(request, requester, event_type, txn_id):
        await to_device.send(requester, event_type, txn_id, json_body(request, MAX_TO_DEVICE_BODY))
        return {}

    client_api.add_authed_route("PUT", "/v3/sendToDevice/{event_type}/{txn_id}", send)


__all__ = ["register_to_device_routes"]
