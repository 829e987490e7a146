"""``GET /_matrix/federation/v1/media/download/{mediaId}`` and ``/thumbnail/{mediaId}``: our media for other servers."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from fedserver.errors import invalid_param
from fedserver.handlers.media.common import is_valid_media_id
from fedserver.handlers.media.download import DEFAULT_TIMEOUT_MS, MediaDownloader
from fedserver.handlers.media.thumbnails import Thumbnailer
from fedserver.http.client.media import query_bool
from fedserver.http.media_responses import send_multipart_media
from fedserver.http.resource import query_int, query_string


class _FederationMediaRoutes:
    """Server-server API "Content Repository": only media of this server is served (each
    server fetches media from the server in its ``mxc://`` URI); the answer is
    ``multipart/mixed`` with a JSON metadata part and the bytes."""

    def __init__(self, downloader: MediaDownloader, thumbnailer: Thumbnailer) -> None:
        self._downloader = downloader
        self._thumbnailer = thumbnailer

    async def _local(self, request: IRequest, media_id: str) -> Any:
        if not is_valid_media_id(media_id):
            raise invalid_param("mediaId", "Invalid media id")
        timeout_ms = query_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS, minimum=0)
        return await self._downloader.get_media(
            self._downloader.server_name, media_id, timeout_ms=timeout_ms, allow_remote=False
        )

    async def download(self, request: IRequest, origin: str, media_id: str) -> None:
        media = await self._local(request, media_id)
        await send_multipart_media(request, media)

    async def thumbnail(self, request: IRequest, origin: str, media_id: str) -> None:
        width = query_int(request, "width")
        height = query_int(request, "height")
        method = query_string(request, "method", "scale")
        animated = bool(query_bool(request, "animated", False))
        self._thumbnailer.check_request(width, height, method)
        media = await self._local(request, media_id)
        thumb = await self._thumbnailer.thumbnail(media, width, height, method, animated)
        await send_multipart_media(request, thumb, inline=True)


def register_federation_media_routes(resource: Any, downloader: MediaDownloader, thumbnailer: Thumbnailer) -> None:
    """Add the two endpoints to the :class:`~fedserver.http.federation.transport.FederationResource`
    (X-Matrix authentication required: HOSTILE rows 1-4)."""
    routes = _FederationMediaRoutes(downloader, thumbnailer)
    resource.add_route("GET", "/media/download/{media_id}", resource.authenticated(routes.download))
    resource.add_route("GET", "/media/thumbnail/{media_id}", resource.authenticated(routes.thumbnail))


__all__ = ["register_federation_media_routes"]
