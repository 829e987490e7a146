"""The client media endpoints: ``/_matrix/client/v1/media/*`` (authenticated) and ``/_matrix/media/*``.

``/_matrix/media`` is its own URL tree next to ``/_matrix/client`` (see
:mod:`fedserver.http.site`): uploads (``POST /v3/upload``, ``POST /v1/create``,
``PUT /v3/upload/{serverName}/{mediaId}``, which stay there in the spec), the deprecated
``/config`` and ``/preview_url``, and the deprecated unauthenticated ``/download`` and
``/thumbnail``, frozen per ``enable_legacy_media``.

Upload bodies stream to a spool file in the media directory while they arrive, with
``max_upload_size`` enforced as they are read: :func:`media_request_factory` makes the
client listener's request class recognise the upload paths before their body arrives
(a twisted.web resource only runs once the whole body is in). An oversized or endless
body gets 413 ``M_TOO_LARGE`` and the spool is deleted (HOSTILE row 30).
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable, Optional, cast
from urllib.parse import unquote_to_bytes

from twisted.internet import threads
from twisted.web.iweb import IRequest

from fedserver.errors import invalid_param, too_large
from fedserver.handlers.media.common import check_media_path, clean_upload_name
from fedserver.handlers.media.download import DEFAULT_TIMEOUT_MS, MediaDownloader
from fedserver.handlers.media.files import MediaFiles, SpoolTooLarge, UploadSpool
from fedserver.handlers.media.thumbnails import Thumbnailer
from fedserver.handlers.media.upload import MediaUploader
from fedserver.http.media_responses import send_media
from fedserver.http.resource import JsonResource, MatrixRequest, query_int, query_string

#: Where the resource is mounted on the client listener.
MEDIA_PATH = "/_matrix/media"
#: Versions of ``/_matrix/media`` served (r0 and v1 for older clients).
LEGACY_VERSIONS = ("v3", "r0", "v1")

Authenticate = Callable[[IRequest], Awaitable[Any]]

# The upload paths, on percent-decoded segments (as twisted.web routes them).
_UPLOAD_POST = re.compile(rb"^/_matrix/media/(v3|r0|v1)/upload/?$")
_UPLOAD_PUT = re.compile(rb"^/_matrix/media/(v3|r0)/upload/[^/]+/[^/]+/?$")


class UploadBodies:
    """Which requests stream their body into a media spool, and with what limit.

    :param files: the :class:`MediaFiles` (spools live in its ``tmp/``).
    :param limit: ``max_upload_size``.
    """

    def __init__(self, files: MediaFiles, limit: int) -> None:
        self.files = files
        self.limit = limit

    @staticmethod
    def is_upload(method: bytes, raw_path: bytes) -> bool:
        """Whether a request line is one of the upload endpoints."""
        path = raw_path.split(b"?", 1)[0]
        decoded = b"/".join(unquote_to_bytes(seg) for seg in path.split(b"/"))
        if method == b"POST":
            return _UPLOAD_POST.match(decoded) is not None
        if method == b"PUT":
            return _UPLOAD_PUT.match(decoded) is not None
        return False


class MediaUploadRequest(MatrixRequest):
    """A :class:`MatrixRequest` whose upload bodies go to a spool in the media directory,
    capped at ``max_upload_size`` instead of ``max_request_body_size``."""

    upload_bodies: Optional[UploadBodies] = None
    _spool: Optional[UploadSpool] = None

    def gotLength(self, length: int | None) -> None:
        bodies = self.upload_bodies
        channel = self.channel
        # The request line is known to the channel before the body (twisted.web keeps it in
        # _command/_path until the request is complete).
        method = getattr(channel, "_command", b"")
        path = getattr(channel, "_path", b"")
        if bodies is None or not UploadBodies.is_upload(method.upper(), path):
            super().gotLength(length)
            return
        if length is not None and length > bodies.limit:
            self._reject_too_large(f"Upload of {length} bytes exceeds the limit of {bodies.limit} bytes")
            return
        self._spool = bodies.files.new_spool(bodies.limit)
        self.content = cast(Any, self._spool)
        # The body is media, whatever its Content-Type: never parse it as a form.
        self._parsePOSTFormSubmission = False

    def handleContentChunk(self, data: bytes) -> None:
        if self._spool is None:
            super().handleContentChunk(data)
            return
        if self._too_large:
            return
        try:
            self._spool.write(data)
        except SpoolTooLarge:
            self._reject_too_large(f"Upload exceeds the limit of {self._spool.limit} bytes")


def media_request_factory(bodies: UploadBodies) -> type:
    """The request class for the client listener's site (``site.requestFactory``)."""
    return type("MediaUploadRequest", (MediaUploadRequest,), {"upload_bodies": bodies})


def query_bool(request: IRequest, name: str, default: Optional[bool]) -> Optional[bool]:
    """A ``true``/``false`` query parameter.

    :raises MatrixError: 400 ``M_INVALID_PARAM`` for another value.
    """
    raw = query_string(request, name, None)
    if raw is None:
        return default
    if raw in ("true", "false"):
        return raw == "true"
    raise invalid_param(name, f"{name} must be true or false")


class MediaRoutes:
    """The media endpoints as handler functions (registered by :func:`build_media_resource`
    and :func:`register_client_media_routes`).

    :param authenticate: ``authenticate(request)`` firing with the
        :class:`~fedserver.handlers.client.accounts.Requester` or failing 401
        (:meth:`fedserver.http.client.api.ClientAPI.authenticate`).
    :param uploader: the :class:`MediaUploader`.
    :param downloader: the :class:`MediaDownloader`.
    :param thumbnailer: the :class:`Thumbnailer`.
    :param previews: the :class:`fedserver.handlers.media.preview.UrlPreviewer`, or
        ``None`` when previews are off (the endpoints are then not served).
    :param reactor: thread pool for copying a body that did not arrive in a spool.
    :param never_fetch: never fetch remote media (the legacy endpoints on the federation
        listener: another server must not make us fetch from a third).
    """

    def __init__(
        self,
        *,
        authenticate: Authenticate,
        uploader: MediaUploader,
        downloader: MediaDownloader,
        thumbnailer: Thumbnailer,
        previews: Any = None,
        files: MediaFiles,
        reactor: Any,
        never_fetch: bool = False,
    ) -> None:
        self._authenticate = authenticate
        self._never_fetch = never_fetch
        self.uploader = uploader
        self.downloader = downloader
        self.thumbnailer = thumbnailer
        self.previews = previews
        self._files = files
        self._reactor = reactor

    # -- uploads --------------------------------------------------------------------------

    async def _spool_of(self, request: IRequest) -> UploadSpool:
        content = request.content
        if isinstance(content, UploadSpool):
            return content.claim()
        # A body that did not stream into a spool (a test harness, or a path spelt with
        # escapes the listener did not recognise): copy it, with the same limit.
        limit = self.uploader.max_upload_size
        spool = self._files.new_spool(limit).claim()

        def copy() -> None:
            if content is None:
                return
            content.seek(0)
            while chunk := content.read(1 << 20):
                spool.write(chunk)

        try:
            await threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), copy)
        except SpoolTooLarge:
            raise too_large(f"Cannot upload files larger than {limit} bytes") from None
        except BaseException:
            spool.discard()
            raise
        return spool

    @staticmethod
    def _upload_params(request: IRequest) -> tuple[Optional[bytes], Optional[str]]:
        ctype = request.requestHeaders.getRawHeaders(b"Content-Type")
        name = clean_upload_name(query_string(request, "filename", None))
        return (ctype[0] if ctype else None), name

    async def upload(self, request: IRequest) -> Any:
        # POST /_matrix/media/v3/upload?filename=
        requester = await self._authenticate(request)
        ctype, name = self._upload_params(request)
        spool = await self._spool_of(request)
        uri = await self.uploader.upload(requester.user_id, spool, ctype, name)
        return {"content_uri": uri}

    async def create(self, request: IRequest) -> Any:
        # POST /_matrix/media/v1/create
        requester = await self._authenticate(request)
        return await self.uploader.create(requester.user_id)

    async def upload_to(self, request: IRequest, server_name: str, media_id: str) -> Any:
        # PUT /_matrix/media/v3/upload/{serverName}/{mediaId}
        requester = await self._authenticate(request)
        check_media_path(server_name, media_id)
        ctype, name = self._upload_params(request)
        spool = await self._spool_of(request)
        await self.uploader.upload_to(requester.user_id, server_name, media_id, spool, ctype, name)
        return {}

    async def config(self, request: IRequest) -> Any:
        await self._authenticate(request)
        return {"m.upload.size": self.uploader.max_upload_size}

    async def preview_url(self, request: IRequest) -> Any:
        await self._authenticate(request)
        url = query_string(request, "url")
        ts = query_int(request, "ts", None)
        return await self.previews.preview(url, ts)

    # -- downloads ------------------------------------------------------------------------

    async def _download(self, request: IRequest, server_name: str, media_id: str, file_name: Optional[str],
                        *, legacy: bool) -> None:
        check_media_path(server_name, media_id)
        timeout_ms = query_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS, minimum=0)
        allow_remote = query_bool(request, "allow_remote", True) if legacy else True
        media = await self.downloader.get_media(
            server_name, media_id, timeout_ms=timeout_ms, allow_remote=bool(allow_remote) and not self._never_fetch,
            legacy=legacy,
        )
        if file_name is not None:
            file_name = clean_upload_name(file_name)
        await send_media(request, media, file_name=file_name)

    async def _thumbnail(self, request: IRequest, server_name: str, media_id: str, *, legacy: bool) -> None:
        check_media_path(server_name, media_id)
        width = query_int(request, "width")
        height = query_int(request, "height")
        method = query_string(request, "method", "scale")
        animated = bool(query_bool(request, "animated", False))
        self.thumbnailer.check_request(width, height, method)
        timeout_ms = query_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS, minimum=0)
        allow_remote = query_bool(request, "allow_remote", True) if legacy else True
        media = await self.downloader.get_media(
            server_name, media_id, timeout_ms=timeout_ms, allow_remote=bool(allow_remote) and not self._never_fetch,
            legacy=legacy,
        )
        thumb = await self.thumbnailer.thumbnail(media, width, height, method, animated)
        await send_media(request, thumb, inline=True)

    async def download(self, request: IRequest, server_name: str, media_id: str) -> None:
        await self._authenticate(request)
        await self._download(request, server_name, media_id, None, legacy=False)

    async def download_named(self, request: IRequest, server_name: str, media_id: str, file_name: str) -> None:
        await self._authenticate(request)
        await self._download(request, server_name, media_id, file_name, legacy=False)

    async def thumbnail(self, request: IRequest, server_name: str, media_id: str) -> None:
        await self._authenticate(request)
        await self._thumbnail(request, server_name, media_id, legacy=False)

    async def legacy_download(self, request: IRequest, server_name: str, media_id: str) -> None:
        await self._download(request, server_name, media_id, None, legacy=True)

    async def legacy_download_named(self, request: IRequest, server_name: str, media_id: str, file_name: str) -> None:
        await self._download(request, server_name, media_id, file_name, legacy=True)

    async def legacy_thumbnail(self, request: IRequest, server_name: str, media_id: str) -> None:
        await self._thumbnail(request, server_name, media_id, legacy=True)


class _TrailingSlashTolerant(JsonResource):
    def render(self, request: IRequest) -> Any:
        postpath = list(request.postpath or ())
        if len(postpath) > 1 and postpath[-1] == b"":
            request.postpath = postpath[:-1]
        return super().render(request)


def _add_legacy_downloads(res: JsonResource, routes: MediaRoutes) -> None:
    for v in LEGACY_VERSIONS:
        res.add_route("GET", f"/{v}/download/{{server_name}}/{{media_id}}", routes.legacy_download)
        res.add_route("GET", f"/{v}/download/{{server_name}}/{{media_id}}/{{file_name}}", routes.legacy_download_named)
        res.add_route("GET", f"/{v}/thumbnail/{{server_name}}/{{media_id}}", routes.legacy_thumbnail)


def build_media_resource(routes: MediaRoutes) -> JsonResource:
    """The resource to mount at :data:`MEDIA_PATH` on the client listener."""
    res = _TrailingSlashTolerant()
    for v in LEGACY_VERSIONS:
        res.add_route("POST", f"/{v}/upload", routes.upload, raw_body=True)
        res.add_route("GET", f"/{v}/config", routes.config)
        if routes.previews is not None:
            res.add_route("GET", f"/{v}/preview_url", routes.preview_url)
    for v in ("v3", "r0"):
        res.add_route("PUT", f"/{v}/upload/{{server_name}}/{{media_id}}", routes.upload_to, raw_body=True)
    res.add_route("POST", "/v1/create", routes.create)
    _add_legacy_downloads(res, routes)
    return res


def build_legacy_download_resource(routes: MediaRoutes) -> JsonResource:
    """The deprecated unauthenticated downloads alone, for the federation listener (servers
    that predate federation media ask there, with ``allow_remote=false``). ``routes``
    should be made with ``never_fetch``: only our media and what is cached is served."""
    res = _TrailingSlashTolerant()
    _add_legacy_downloads(res, routes)
    return res


def register_client_media_routes(client_api: Any, routes: MediaRoutes) -> None:
    """Add ``/v1/media/*`` (spec v1.11 authenticated media) to the
    :class:`~fedserver.http.client.api.ClientAPI`. The handlers authenticate themselves
    (401 before anything else), so these are public routes of the API."""
    add = client_api.add_public_route
    add("GET", "/v1/media/config", routes.config, r0=False)
    add("GET", "/v1/media/download/{server_name}/{media_id}", routes.download, r0=False)
    add("GET", "/v1/media/download/{server_name}/{media_id}/{file_name}", routes.download_named, r0=False)
    add("GET", "/v1/media/thumbnail/{server_name}/{media_id}", routes.thumbnail, r0=False)
    if routes.previews is not None:
        add("GET", "/v1/media/preview_url", routes.preview_url, r0=False)


__all__ = [
    "MEDIA_PATH",
    "MediaRoutes",
    "MediaUploadRequest",
    "UploadBodies",
    "build_legacy_download_resource",
    "build_media_resource",
    "media_request_factory",
    "query_bool",
    "register_client_media_routes",
]
