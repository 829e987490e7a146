"""Client endpoints reading a room's timeline: /messages, /context, /event, /members, /joined_members."""

from __future__ import annotations

from typing import Any, Optional

from twisted.web.iweb import IRequest

from fedserver.errors import invalid_param
from fedserver.events.canonical import CanonicalJSONError, parse_json
from fedserver.handlers.rooms.rooms import EventFilter
from fedserver.http.resource import query_int, query_string


def event_filter(request: IRequest) -> Optional[EventFilter]:
    """The ``filter`` query parameter: a JSON ``RoomEventFilter`` (400 if malformed)."""
    raw = query_string(request, "filter", None)
    if raw is None or raw == "":
        return None
    try:
        spec = parse_json(raw)  # the one strict parser, as for request bodies
    except CanonicalJSONError as e:
        raise invalid_param("filter", f"filter is not valid JSON: {e}") from None
    return EventFilter(spec)


def register_timeline_routes(client_api: Any, timeline: Any) -> None:
    """Add the timeline endpoints to a :class:`~fedserver.http.client.api.ClientAPI`.

    :param timeline: the :class:`~fedserver.handlers.rooms.timeline.TimelineHandler`.
    """
    authed = client_api.add_authed_route

    async def messages(request, requester, room_id):
        return await timeline.messages(
            requester,
            room_id,
            from_token=query_string(request, "from", None),
            to_token=query_string(request, "to", None),
            direction=query_string(request, "dir", "b"),
            limit=query_int(request, "limit", None, minimum=1, maximum=1000),
            event_filter=event_filter(request),
        )

    async def members(request, requester, room_id):
        return await timeline.members(
            requester,
            room_id,
            at=query_string(request, "at", None),
            membership=query_string(request, "membership", None),
            not_membership=query_string(request, "not_membership", None),
        )

    async def joined_members(request, requester, room_id):
        return await timeline.joined_members(requester, room_id)

    async def get_event(request, requester, room_id, event_id):
        return await timeline.get_event(requester, room_id, event_id)

    async def context(request, requester, room_id, event_id):
        limit = query_int(request, "limit", 10, minimum=0, maximum=1000)
        return await timeline.context(requester, room_id, event_id, limit=limit, event_filter=event_filter(request))

    authed("GET", "/v3/rooms/{room_id}/messages", messages)
    authed("GET", "/v3/rooms/{room_id}/members", members)
    authed("GET", "/v3/rooms/{room_id}/joined_members", joined_members)
    authed("GET", "/v3/rooms/{room_id}/event/{event_id}", get_event)
    authed("GET", "/v3/rooms/{room_id}/context/{event_id}", context)
