"""The operator's "why was this event refused?" endpoints on the client (local) listener."""

from __future__ import annotations

import ipaddress
from typing import Any, Awaitable, Callable, Optional

from twisted.web.iweb import IRequest

from fedserver.handlers.federation.history import REFUSALS_LIMIT_DEFAULT, REFUSALS_LIMIT_MAX, EventStatusHandler, is_valid_id
from fedserver.errors import forbidden, invalid_param
from fedserver.http.resource import JsonResource, query_int, query_string

#: Where the endpoints live: ``GET {ADMIN_EVENTS_PATH}/{eventId}/status``.
ADMIN_EVENTS_PATH = "/_fedserver/admin/v1/events"
#: ``GET {ADMIN_REFUSALS_PATH}?room_id=&kind=&limit=&from=``.
ADMIN_REFUSALS_PATH = "/_fedserver/admin/v1/refusals"

#: ``authenticate_admin(request)`` fires with the admin's user id, or fails with a
#: MatrixError (401 ``M_MISSING_TOKEN`` / ``M_UNKNOWN_TOKEN``, 403 ``M_FORBIDDEN``).
AuthenticateAdmin = Callable[[IRequest], Awaitable[str]]

# Headers a reverse proxy adds: a request carrying one did not really come from this
# machine, however loopback its TCP peer is.
_PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip", b"x-forwarded-host")


def is_loopback_request(request: IRequest) -> bool:
    """Whether ``request`` came straight from this machine: a loopback TCP peer (or a
    UNIX socket) and no proxy forwarding header."""
    for header in _PROXY_HEADERS:
        if request.requestHeaders.hasHeader(header):
            return False
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    if host is None:
        # UNIX sockets have no host: only local processes can reach them.
        return type(peer).__name__ == "UNIXAddress"
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class AdminGuard:
    """Decides who may use the admin endpoints.

    With ``authenticate_admin`` wired (the accounts module's admin access tokens), every
    request must carry an admin's token. Without it, only loopback callers (see
    :func:`is_loopback_request`) are served, if ``allow_loopback`` (the default); all
    others get 403 ``M_FORBIDDEN``.
    """

    def __init__(self, authenticate_admin: Optional[AuthenticateAdmin] = None, *, allow_loopback: bool = True) -> None:
        self._authenticate = authenticate_admin
        self._allow_loopback = allow_loopback

    async def check(self, request: IRequest) -> Optional[str]:
        """:returns: the admin's user id, or ``None`` for an unauthenticated loopback
        caller.
        :raises MatrixError: when the caller may not use the endpoints."""
        if self._authenticate is not None:
            return await self._authenticate(request)
        if self._allow_loopback and is_loopback_request(request):
            return None
        raise forbidden("Admin endpoints answer only local callers here")


class _AdminEventRoutes:
    def __init__(self, handler: EventStatusHandler, guard: AdminGuard) -> None:
        self._handler = handler
        self._guard = guard

    async def status(self, request: IRequest, event_id: str) -> Any:
        await self._guard.check(request)
        if not is_valid_id(event_id, "$"):
            raise invalid_param("eventId", "Invalid event id")
        return await self._handler.get_status(event_id)

    async def refusals(self, request: IRequest) -> Any:
        await self._guard.check(request)
        room_id = query_string(request, "room_id", None)
        if room_id is not None and not is_valid_id(room_id, "!"):
            raise invalid_param("room_id", "Invalid room id")
        kind = query_string(request, "kind", None)
        limit = query_int(request, "limit", REFUSALS_LIMIT_DEFAULT, minimum=1, maximum=REFUSALS_LIMIT_MAX)
        from_token = query_string(request, "from", None)
        return await self._handler.list_refusals(room_id, kind, limit, from_token)


def build_admin_events_resources(
    handler: EventStatusHandler,
    *,
    authenticate_admin: Optional[AuthenticateAdmin] = None,
    allow_loopback: bool = True,
) -> dict[str, JsonResource]:
    """Build the two admin resources, keyed by where to mount them on the client
    listener (pass the dict as ``extra`` to :func:`fedserver.http.site.build_client_root`):

    - ``GET /_fedserver/admin/v1/events/{eventId}/status``: ``{event_id, room_id, status:
      accepted|rejected|soft_failed|outlier|unknown, outlier, reason, rule, plugin,
      refused_ts}``;
    - ``GET /_fedserver/admin/v1/refusals?room_id=&kind=&limit=&from=``: ``{refusals:
      [...], next_batch}``, newest first; pass ``next_batch`` as ``from`` for the next
      page.

    :param handler: the :class:`fedserver.handlers.federation.history.EventStatusHandler`.
    :param authenticate_admin: see :class:`AdminGuard`.
    :param allow_loopback: see :class:`AdminGuard`.
    """
    routes = _AdminEventRoutes(handler, AdminGuard(authenticate_admin, allow_loopback=allow_loopback))
    events = JsonResource()
    events.add_route("GET", "/{event_id}/status", routes.status)
    refusals = JsonResource()
    refusals.add_route("GET", "", routes.refusals)
    return {ADMIN_EVENTS_PATH: events, ADMIN_REFUSALS_PATH: refusals}


__all__ = [
    "ADMIN_EVENTS_PATH",
    "ADMIN_REFUSALS_PATH",
    "AdminGuard",
    "build_admin_events_resources",
    "is_loopback_request",
]
