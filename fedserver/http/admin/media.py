"""The operator's purge of cached remote media, on the client listener: admin users only."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.web.iweb import IRequest

from fedserver.errors import bad_json, forbidden
from fedserver.http.resource import JsonResource, read_json_object

#: ``POST {ADMIN_MEDIA_PURGE_PATH}`` with ``{"older_than_days": N}`` or ``{"before_ts": ms}``.
ADMIN_MEDIA_PURGE_PATH = "/_fedserver/admin/v1/media/purge_remote"

#: ``authenticate(request)`` fires with the caller's Requester (401 without a valid token).
Authenticate = Callable[[IRequest], Awaitable[Any]]
#: ``is_admin(user_id)`` fires with whether that local user is a server admin.
IsAdmin = Callable[[str], Awaitable[bool]]

DAY_MS = 24 * 3600 * 1000


def purge_before_ts(body: dict[str, Any], now_ms: int) -> int:
    """The cut-off of a purge request: ``before_ts`` (ms) or ``older_than_days``.

    :raises MatrixError: 400 ``M_BAD_JSON`` unless exactly one of them is a non-negative
        number.
    """
    days, before = body.get("older_than_days"), body.get("before_ts")
    if (days is None) == (before is None):
        raise bad_json("Give exactly one of older_than_days or before_ts")
    if days is not None:
        if type(days) not in (int, float) or days < 0 or days > 100_000:
            raise bad_json("older_than_days must be a non-negative number")
        return now_ms - int(days * DAY_MS)
    if type(before) is not int or before < 0:
        raise bad_json("before_ts must be a timestamp in milliseconds")
    return before


def build_admin_media_resource(
    downloader: Any, *, authenticate: Authenticate, is_admin: IsAdmin, clock: Any
) -> dict[str, JsonResource]:
    """``{ADMIN_MEDIA_PURGE_PATH: resource}`` to mount on the client listener. The answer is
    ``{"deleted": media removed, "freed_bytes": bytes}``; a caller that is not a server
    admin gets 403 ``M_FORBIDDEN``.

    :param downloader: the :class:`fedserver.handlers.media.download.MediaDownloader`.
    :param clock: gives ``seconds()``.
    """

    async def purge(request: IRequest) -> Any:
        requester = await authenticate(request)
        if not await is_admin(requester.user_id):
            raise forbidden("Only server admins may purge media")
        before = purge_before_ts(read_json_object(request), int(clock.seconds() * 1000))
        return await downloader.purge_remote_cache(before)

    resource = JsonResource()
    resource.add_route("POST", "", purge)
    return {ADMIN_MEDIA_PURGE_PATH: resource}


__all__ = ["ADMIN_MEDIA_PURGE_PATH", "build_admin_media_resource", "purge_before_ts"]
