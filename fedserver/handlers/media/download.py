"""Downloads: local media, remote media fetched over federation and cached, the legacy freeze, the purge.

Remote media (server-server API "Content Repository") is fetched from the server named in
the ``mxc://`` URI with ``GET /_matrix/federation/v1/media/download/{mediaId}``: a
``multipart/mixed`` answer whose first part is JSON metadata and whose second part is the
bytes or a ``Location`` to fetch them from. A server that answers ``404 M_UNRECOGNIZED``
is asked on the deprecated ``/_matrix/media/v3/download/...?allow_remote=false`` instead
("servers MUST be sure to set allow_remote to false"). Bodies stream into a spool file
with a size cap: a remote server sending too much or garbage is cut off, nothing is
cached and our user gets a 502 (HOSTILE row 33).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.internet import defer, threads
from twisted.logger import Logger

from fedserver.background import log_background_failure
from fedserver.errors import MatrixError, M_TOO_LARGE, M_UNKNOWN, M_UNRECOGNIZED, not_found
from fedserver.federation.client import (
    BodyConsumerError,
    FederationClientError,
    HttpResponseError,
    ResponseTooLarge,
    fed_path,
)
from fedserver.handlers.media.common import (
    ServableMedia,
    file_name_from_disposition,
    sanitise_content_type,
)
from fedserver.handlers.media.files import MediaFiles, SpoolTooLarge, UploadSpool
from fedserver.handlers.media.multipart import MultipartError, MultipartReader, boundary_from_content_type
from fedserver.handlers.media.upload import UploadWaiters
from fedserver.storage.operations.media_store import RemoteMedia

log = Logger()

M_NOT_YET_UPLOADED = "M_NOT_YET_UPLOADED"
#: Spec ``timeout_ms``: default 20 s; "The content repository SHOULD impose a maximum".
DEFAULT_TIMEOUT_MS = 20_000
MAX_TIMEOUT_MS = 60_000
#: Largest JSON metadata part accepted from a remote server.
MAX_METADATA_BYTES = 64 * 1024
#: Seconds a remote fetch may take in all (connecting, redirect, the whole body).
DEFAULT_FETCH_TIMEOUT = 120.0


def not_yet_uploaded() -> MatrixError:
    """504 ``M_NOT_YET_UPLOADED`` (spec: content created but not uploaded in time)."""
    return MatrixError(504, M_NOT_YET_UPLOADED, "Content has not yet been uploaded")


def _bad_remote(why: str) -> MatrixError:
    return MatrixError(502, M_UNKNOWN, f"Failed to fetch remote media: {why}")


def _remote_too_large(limit: int) -> MatrixError:
    # Spec "Security considerations": remote media too large to proxy is 502 M_TOO_LARGE.
    return MatrixError(502, M_TOO_LARGE, f"Remote media is larger than this server's limit of {limit} bytes")


class _FetchedPart:
    """Collects the multipart answer of ``/federation/v1/media/download``: the metadata
    part in memory (capped), the media part into the spool."""

    def __init__(self, spool: UploadSpool) -> None:
        self.spool = spool
        self.metadata = b""
        self.headers: Optional[dict[str, str]] = None
        self.reader: Optional[MultipartReader] = None

    def on_response(self, code: int, headers: Any) -> None:
        values = headers.getRawHeaders(b"Content-Type") or [b""]
        boundary = boundary_from_content_type(values[0])
        if boundary is None:
            raise MultipartError(f"not a multipart/mixed answer: {values[0][:100]!r}")
        self.reader = MultipartReader(boundary, self._on_part, self._on_data, max_parts=2)

    def _on_part(self, index: int, headers: dict[str, str]) -> None:
        if index == 0:
            ctype = headers.get("content-type", "")
            if ctype.split(";", 1)[0].strip().lower() != "application/json":
                raise MultipartError("the first part is not application/json")
        else:
            self.headers = headers

    def _on_data(self, index: int, data: bytes) -> None:
        if index == 0:
            self.metadata += data
            if len(self.metadata) > MAX_METADATA_BYTES:
                raise MultipartError("metadata part too large")
        else:
            self.spool.write(data)

    def feed(self, data: bytes) -> None:
        assert self.reader is not None
        self.reader.feed(data)

    def finish(self) -> dict[str, str]:
        if self.reader is None:
            raise MultipartError("no multipart body")
        self.reader.finish()
        if self.headers is None:
            raise MultipartError("the answer has no media part")
        return self.headers


class MediaDownloader:
    """Finds media to serve: ours, or another server's (fetched once, then cached).

    :param store: has ``media`` (:class:`fedserver.storage.operations.media_store.MediaStore`).
    :param files: the :class:`MediaFiles`.
    :param server_name: our server name.
    :param reactor: clock and thread pool.
    :param federation_client: a :class:`fedserver.federation.client.FederationClient`
        (``get_streaming``, ``get_url_streaming``); ``None`` serves local media only.
    :param max_remote_size: largest remote media fetched (bytes).
    :param legacy_media: the ``enable_legacy_media`` option: ``True``, ``False``, or a
        freeze timestamp (ms) before which stored media stays on the legacy endpoints.
    :param waiters: the uploader's :class:`UploadWaiters`.
    :param fetch_timeout: seconds a remote fetch may take in all.
    """

    def __init__(
        self,
        store: Any,
        files: MediaFiles,
        server_name: str,
        reactor: Any,
        federation_client: Any,
        *,
        max_remote_size: int,
        legacy_media: bool | int = False,
        waiters: Optional[UploadWaiters] = None,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
    ) -> None:
        self._store = store
        self._files = files
        self.server_name = server_name
        self._reactor = reactor
        self._client = federation_client
        self.max_remote_size = max_remote_size
        self._legacy = legacy_media
        self._waiters = waiters if waiters is not None else UploadWaiters(reactor)
        self._fetch_timeout = fetch_timeout
        self._in_flight: dict[tuple[str, str], list[defer.Deferred]] = {}

    def _now_ms(self) -> int:
        return int(self._reactor.seconds() * 1000)

    def legacy_allows(self, stored_ts: int) -> bool:
        """Whether the deprecated unauthenticated endpoints may serve media stored (uploaded,
        or cached from another server) at ``stored_ts`` (client-server API "Client
        behaviour": the freeze)."""
        if self._legacy is True:
            return True
        if self._legacy is False:
            return False
        return stored_ts < int(self._legacy)

    async def get_media(
        self,
        server_name: str,
        media_id: str,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        allow_remote: bool = True,
        legacy: bool = False,
    ) -> ServableMedia:
        """The media ``mxc://server_name/media_id`` (both already validated), fetching it
        if it is remote and not cached.

        :param timeout_ms: how long to wait for content still to be uploaded (capped at
            :data:`MAX_TIMEOUT_MS`).
        :param allow_remote: fetch from other servers (``false`` on the legacy endpoint
            avoids loops).
        :param legacy: for a deprecated unauthenticated endpoint (the freeze applies).
        :raises MatrixError: 404 ``M_NOT_FOUND``, 504 ``M_NOT_YET_UPLOADED``, 502.
        """
        if server_name == self.server_name:
            return await self._get_local(media_id, timeout_ms, legacy)
        return await self._get_remote(server_name, media_id, allow_remote, legacy)

    # -- local ------------------------------------------------------------------------------

    async def _get_local(self, media_id: str, timeout_ms: int, legacy: bool) -> ServableMedia:
        media = await self._store.media.get_local(media_id)
        if media is None:
            raise not_found("Media not found")
        if media.sha256 is None:
            now = self._now_ms()
            if media.unused_expires_ts is not None and media.unused_expires_ts <= now:
                raise not_found("Media not found")
            wait_ms = max(0, min(timeout_ms, MAX_TIMEOUT_MS))
            if not wait_ms or not await self._waiters.wait(media_id, wait_ms / 1000):
                raise not_yet_uploaded()
            media = await self._store.media.get_local(media_id)
            if media is None or media.sha256 is None:
                raise not_yet_uploaded()
        if legacy and not self.legacy_allows(media.created_ts):
            raise not_found("Media not found: use the authenticated /_matrix/client/v1/media endpoints")
        path = self._files.path_for(media.sha256)
        if not os.path.isfile(path):
            log.error("Media {media_id}: file {sha} is missing from the media directory", media_id=media_id, sha=media.sha256)
            raise not_found("Media not found")
        self._touch(self._store.media.touch_local(media, self._now_ms()))
        return ServableMedia(
            path, media.content_type or "application/octet-stream", media.upload_name, media.media_length or 0,
            media.sha256, self.server_name, media_id,
        )

    @staticmethod
    def _touch(d: defer.Deferred) -> None:
        d.addErrback(log_background_failure, "Recording a media access failed", logger=log)

    # -- remote -----------------------------------------------------------------------------

    async def _get_remote(self, server_name: str, media_id: str, allow_remote: bool, legacy: bool) -> ServableMedia:
        cached = await self._store.media.get_remote(server_name, media_id)
        if cached is not None and not os.path.isfile(self._files.path_for(cached.sha256)):
            log.warn("Cached {server}/{media_id} lost its file; fetching it again", server=server_name, media_id=media_id)
            await self._store.media.forget_remote(server_name, media_id, self._files.delete)
            cached = None
        if cached is None:
            if not allow_remote or self._client is None:
                raise not_found("Media not found")
            if legacy and not self.legacy_allows(self._now_ms()):
                # Media cached now would be "new" for the freeze: do not fetch it at all.
                raise not_found("Media not found: use the authenticated /_matrix/client/v1/media endpoints")
            cached = await self._fetch_once(server_name, media_id)
        else:
            self._touch(self._store.media.touch_remote(cached, self._now_ms()))
        if legacy and not self.legacy_allows(cached.created_ts):
            raise not_found("Media not found: use the authenticated /_matrix/client/v1/media endpoints")
        return ServableMedia(
            self._files.path_for(cached.sha256), cached.content_type, cached.upload_name, cached.media_length,
            cached.sha256, server_name, media_id,
        )

    async def _fetch_once(self, server_name: str, media_id: str) -> RemoteMedia:
        """One fetch per media at a time; concurrent askers share its outcome."""
        key = (server_name, media_id)
        waiting = self._in_flight.get(key)
        if waiting is not None:
            d: defer.Deferred = defer.Deferred()
            waiting.append(d)
            return await d
        self._in_flight[key] = []
        try:
            result = await self._fetch(server_name, media_id)
        except BaseException as e:
            for d in self._in_flight.pop(key, []):
                d.errback(e)
            raise
        for d in self._in_flight.pop(key, []):
            d.callback(result)
        return result

    async def _fetch(self, server_name: str, media_id: str) -> RemoteMedia:
        try:
            spool, content_type, disposition = await self._fetch_federation(server_name, media_id)
        except _Unrecognized:
            spool, content_type, disposition = await self._fetch_legacy(server_name, media_id)
        try:
            await threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), spool.sync)
            now = self._now_ms()
            media = RemoteMedia(
                server_name, media_id, now, sanitise_content_type(content_type),
                file_name_from_disposition(disposition), spool.size, spool.sha256, now,
            )
            await self._store.media.store_remote(media, lambda: self._files.place(spool))
        finally:
            spool.discard()
        log.info("Cached {server}/{media_id} ({size} bytes)", server=server_name, media_id=media_id, size=media.media_length)
        return media

    def _new_spool(self) -> UploadSpool:
        return self._files.new_spool(self.max_remote_size).claim()

    async def _fetch_federation(self, server_name: str, media_id: str) -> tuple[UploadSpool, Optional[str], Optional[str]]:
        spool = self._new_spool()
        part = _FetchedPart(spool)
        try:
            try:
                await self._client.get_streaming(
                    server_name,
                    fed_path("/_matrix/federation/v1/media/download/{}", media_id),
                    {"timeout_ms": DEFAULT_TIMEOUT_MS},
                    write=part.feed,
                    on_response=part.on_response,
                    # The multipart framing and metadata come on top of the media.
                    max_size=self.max_remote_size + MAX_METADATA_BYTES + 16384,
                    timeout=self._fetch_timeout,
                )
                headers = part.finish()
            except HttpResponseError as e:
                if _is_unrecognized(e):
                    raise _Unrecognized() from None
                raise self._translate(e, server_name, media_id) from None
            except (FederationClientError, MultipartError, SpoolTooLarge, ValueError) as e:
                raise self._translate(e, server_name, media_id) from None
            location = headers.get("location")
            if location is not None:
                # Spec: the second part may be a Location to fetch the media from instead.
                spool.discard()
                spool = self._new_spool()
                response = await self._follow(location, spool, server_name, media_id)
                return spool, response.header("Content-Type"), response.header("Content-Disposition")
            return spool, headers.get("content-type"), headers.get("content-disposition")
        except BaseException:
            spool.discard()
            raise

    async def _fetch_legacy(self, server_name: str, media_id: str) -> tuple[UploadSpool, Optional[str], Optional[str]]:
        spool = self._new_spool()
        try:
            try:
                response = await self._client.get_streaming(
                    server_name,
                    fed_path("/_matrix/media/v3/download/{}/{}", server_name, media_id),
                    {"allow_remote": False, "allow_redirect": True, "timeout_ms": DEFAULT_TIMEOUT_MS},
                    write=spool.write,
                    max_size=self.max_remote_size,
                    sign=False,
                    timeout=self._fetch_timeout,
                )
            except (FederationClientError, SpoolTooLarge, ValueError) as e:
                raise self._translate(e, server_name, media_id) from None
            if 300 <= response.code < 400:
                location = response.header("Location")
                if not location:
                    raise _bad_remote("redirect without a Location")
                response = await self._follow(location, spool, server_name, media_id)
            return spool, response.header("Content-Type"), response.header("Content-Disposition")
        except BaseException:
            spool.discard()
            raise

    async def _follow(self, location: str, spool: UploadSpool, server_name: str, media_id: str) -> Any:
        try:
            response = await self._client.get_url_streaming(
                location, write=spool.write, max_size=self.max_remote_size, timeout=self._fetch_timeout
            )
        except (FederationClientError, SpoolTooLarge, ValueError) as e:
            raise self._translate(e, server_name, media_id) from None
        if not 200 <= response.code < 300:
            raise _bad_remote(f"the redirect answered {response.code}")
        return response

    def _translate(self, error: Exception, server_name: str, media_id: str) -> MatrixError:
        if isinstance(error, BodyConsumerError) and isinstance(error.cause, Exception):
            error = error.cause
        log.info("Fetching {server}/{media_id} failed: {error}", server=server_name, media_id=media_id, error=error)
        if isinstance(error, (ResponseTooLarge, SpoolTooLarge)):
            return _remote_too_large(self.max_remote_size)
        if isinstance(error, HttpResponseError):
            if error.code == 404:
                return not_found("Media not found")
            if error.errcode == M_NOT_YET_UPLOADED:
                return not_yet_uploaded()
            if error.errcode == M_TOO_LARGE:
                return _remote_too_large(self.max_remote_size)
            return _bad_remote(f"{server_name} answered {error.code}")
        if isinstance(error, MultipartError):
            return _bad_remote(f"{server_name} sent a malformed answer ({error})")
        return _bad_remote(str(error)[:200])

    # -- purge ------------------------------------------------------------------------------

    async def purge_remote_cache(self, before_ts: int) -> dict[str, int]:
        """Drop cached remote media not accessed since ``before_ts`` (ms) and their
        thumbnails, and delete the files nothing else refers to. Media is fetched again if
        someone asks for it later.

        :returns: ``{"deleted": media removed, "freed_bytes": bytes of files deleted}``.
        """
        return await purge_remote_cache(self._store, self._files, before_ts)


async def purge_remote_cache(store: Any, files: MediaFiles, before_ts: int) -> dict[str, int]:
    """See :meth:`MediaDownloader.purge_remote_cache` (also run by ``fedserver-purge-media``
    on a stopped or running server: the files are deleted inside the database's write
    transaction, so an upload in the server cannot reuse one half way)."""
    deleted, freed = await store.media.purge_remote(before_ts, files.delete)
    log.info("Purged {n} cached remote media ({b} bytes freed)", n=deleted, b=freed)
    return {"deleted": deleted, "freed_bytes": freed}


class _Unrecognized(Exception):
    """The remote server does not know the federation media endpoints."""


def _is_unrecognized(e: HttpResponseError) -> bool:
    # Spec: fall back to /_matrix/media/* "when they receive a 404 M_UNRECOGNIZED error".
    # Servers (and proxies) older than the endpoints also answer 404/405 without a Matrix
    # body; M_NOT_FOUND is a real answer about the media.
    if e.errcode == M_UNRECOGNIZED:
        return e.code in (400, 404, 405)
    return e.errcode is None and e.code in (404, 405, 501)


__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "M_NOT_YET_UPLOADED",
    "MAX_TIMEOUT_MS",
    "MediaDownloader",
    "not_yet_uploaded",
    "purge_remote_cache",
]
