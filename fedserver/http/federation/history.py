"""The federation history endpoints (/event, /state, /state_ids, /event_auth, /backfill, /get_missing_events) as routes."""

from __future__ import annotations

from typing import Any, Optional

from twisted.web.iweb import IRequest

from fedserver.handlers.federation.history import BACKFILL_LIMIT_MAX, AclCheck, HistoryHandler, is_valid_id
from fedserver.errors import invalid_param, missing_param
from fedserver.http.resource import query_int, query_string, query_strings, read_json_body

#: Most event ids one ``/backfill`` may start from.
BACKFILL_MAX_V = 100


def _room_id(value: str) -> str:
    # HOSTILE.md row 28: ids carrying NUL, control characters, over 255 bytes or without
    # their sigil are refused before any lookup; anything else is only ever a bound SQL
    # parameter, and an id we do not hold is a 404.
    if not is_valid_id(value, "!"):
        raise invalid_param("roomId", "Invalid room id")
    return value


def _event_id(value: str, name: str = "eventId") -> str:
    if not is_valid_id(value, "$"):
        raise invalid_param(name, "Invalid event id")
    return value


def _backfill_ids(request: IRequest) -> list[str]:
    """The ``v`` parameter: the spec writes it as one comma-separated value (OpenAPI
    ``style: form, explode: false``) while Synapse repeats ``v=``; accept both. A value
    holding a comma is also kept whole, in case it is one (room v1-2) id with a comma:
    ids we do not hold in the room are skipped by the walk anyway."""
    raw = query_strings(request, "v")
    if not raw:
        raise missing_param("v")
    ids: dict[str, None] = {}
    for value in raw:
        for candidate in [value, *value.split(",")] if "," in value else [value]:
            if is_valid_id(candidate, "$"):
                ids[candidate] = None
    if not ids:
        raise invalid_param("v", "v must hold event ids")
    if len(ids) > BACKFILL_MAX_V:
        raise invalid_param("v", f"v may hold at most {BACKFILL_MAX_V} event ids")
    return list(ids)


class _HistoryRoutes:
    """Thin adapters: parse and validate, then call the :class:`HistoryHandler`."""

    def __init__(self, handler: HistoryHandler, acl_check: Optional[AclCheck]) -> None:
        self._handler = handler
        self._acl = acl_check

    async def event(self, request: IRequest, origin: str, event_id: str) -> Any:
        return await self._handler.get_event(origin, _event_id(event_id), self._acl)

    async def state(self, request: IRequest, origin: str, room_id: str) -> Any:
        room_id = _room_id(room_id)
        event_id = _event_id(query_string(request, "event_id"), "event_id")
        return await self._handler.get_state(origin, room_id, event_id, self._acl)

    async def state_ids(self, request: IRequest, origin: str, room_id: str) -> Any:
        room_id = _room_id(room_id)
        event_id = _event_id(query_string(request, "event_id"), "event_id")
        return await self._handler.get_state_ids(origin, room_id, event_id, self._acl)

    async def event_auth(self, request: IRequest, origin: str, room_id: str, event_id: str) -> Any:
        room_id = _room_id(room_id)
        return await self._handler.get_event_auth(origin, room_id, _event_id(event_id), self._acl)

    async def backfill(self, request: IRequest, origin: str, room_id: str) -> Any:
        room_id = _room_id(room_id)
        v = _backfill_ids(request)
        # Required by the spec; larger values are clamped, not refused.
        limit = query_int(request, "limit", minimum=0, maximum=BACKFILL_LIMIT_MAX)
        return await self._handler.backfill(origin, room_id, v, limit, self._acl)

    async def get_missing_events(self, request: IRequest, origin: str, room_id: str) -> Any:
        room_id = _room_id(room_id)
        # Already parsed (and cached) while the signature was checked; M_NOT_JSON if not
        # JSON, and the handler answers M_BAD_JSON for JSON of the wrong shape.
        body = read_json_body(request)
        return await self._handler.get_missing_events(origin, room_id, body, self._acl)


def register_history_routes(
    federation_resource: Any, history_handler: HistoryHandler, *, acl_check: Optional[AclCheck] = None
) -> None:
    """Add the history endpoints to the ``/_matrix/federation/v1`` resource.

    Every route requires a valid X-Matrix signature (through the resource's
    ``authenticated`` wrapper).

    :param federation_resource: the :class:`fedserver.http.federation.transport.FederationResource`
        (anything with ``add_route`` and ``authenticated``).
    :param history_handler: the :class:`fedserver.handlers.federation.history.HistoryHandler`.
    :param acl_check: ``acl_check(origin, room_id)`` firing with ``False`` when the room's
        server ACL denies ``origin`` (answered 403 ``M_FORBIDDEN``); ``None`` skips ACLs.
    :raises ValueError: if a route is already registered.
    """
    routes = _HistoryRoutes(history_handler, acl_check)
    authenticated = federation_resource.authenticated
    add = federation_resource.add_route
    add("GET", "/event/{event_id}", authenticated(routes.event))
    add("GET", "/state/{room_id}", authenticated(routes.state))
    add("GET", "/state_ids/{room_id}", authenticated(routes.state_ids))
    add("GET", "/event_auth/{room_id}/{event_id}", authenticated(routes.event_auth))
    add("GET", "/backfill/{room_id}", authenticated(routes.backfill))
    add("POST", "/get_missing_events/{room_id}", authenticated(routes.get_missing_events))


__all__ = ["BACKFILL_MAX_V", "register_history_routes"]
