"""Client endpoint for room upgrades: POST /v3/rooms/{roomId}/upgrade."""

from __future__ import annotations

from typing import Any

from fedserver.http.resource import read_json_object


def register_upgrade_routes(client_api: Any, upgrades: Any) -> None:
    """Add ``POST /rooms/{roomId}/upgrade`` (client-server API "Room Upgrades").

    :param upgrades: the :class:`~fedserver.handlers.rooms.upgrade.RoomUpgradeHandler`.
    """

    async def upgrade(request, requester, room_id):
        return await upgrades.upgrade(requester, room_id, read_json_object(request))

    client_api.add_authed_route("POST", "/v3/rooms/{room_id}/upgrade", upgrade)
