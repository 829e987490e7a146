"""Uploads: ``POST /upload``, and ``POST /create`` followed by ``PUT /upload/{serverName}/{mediaId}``."""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer, threads
from twisted.logger import Logger

from fedserver.errors import MatrixError, M_FORBIDDEN, forbidden, limit_exceeded, not_found, too_large
from fedserver.handlers.media.common import clean_upload_name, new_media_id, sanitise_content_type
from fedserver.handlers.media.files import MediaFiles, UploadSpool
from fedserver.storage.operations.media_store import (
    MediaAlreadyUploaded,
    MediaIdTaken,
    MediaNotFound,
    MediaNotOwned,
    QuotaExceeded,
)

log = Logger()

#: Spec ``POST /create``: "The recommended default expiration is 24 hours".
UNUSED_EXPIRY_MS = 24 * 3600 * 1000
#: Most created-but-not-uploaded ids one user may hold (spec: "should limit the number of
#: concurrent pending media uploads"; beyond it 429 ``M_LIMIT_EXCEEDED``).
MAX_PENDING_PER_USER = 50

M_CANNOT_OVERWRITE_MEDIA = "M_CANNOT_OVERWRITE_MEDIA"


class UploadWaiters:
    """Lets downloads of a created id wait for its content (``timeout_ms``)."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._waiting: dict[str, list[defer.Deferred]] = {}

    def wait(self, media_id: str, timeout_s: float) -> defer.Deferred:
        """:returns: a Deferred firing with ``True`` when ``media_id`` gets content, or
        ``False`` after ``timeout_s`` seconds."""
        d: defer.Deferred = defer.Deferred()
        self._waiting.setdefault(media_id, []).append(d)

        def expire() -> None:
            waiters = self._waiting.get(media_id, [])
            if d in waiters:
                waiters.remove(d)
                if not waiters:
                    self._waiting.pop(media_id, None)
                d.callback(False)

        call = self._clock.callLater(timeout_s, expire)
        d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        return d

    def uploaded(self, media_id: str) -> None:
        """Wake the downloads waiting for ``media_id``."""
        for d in self._waiting.pop(media_id, []):
            d.callback(True)


class MediaUploader:
    """Stores our users' uploads (spec "Content repository", ``POST /_matrix/media/v3/upload``,
    ``POST /_matrix/media/v1/create``, ``PUT /_matrix/media/v3/upload/{serverName}/{mediaId}``).

    :param store: has ``media`` (:class:`fedserver.storage.operations.media_store.MediaStore`).
    :param files: the :class:`MediaFiles`.
    :param server_name: our server name (the mxc authority).
    :param reactor: clock (``seconds``, ``callLater``) and thread pool (fsync off the reactor).
    :param max_upload_size: largest upload in bytes.
    :param user_quota: most bytes a user may have uploaded in total, or ``None``.
    :param waiters: the :class:`UploadWaiters` woken when a created id gets content.
    """

    def __init__(
        self,
        store: Any,
        files: MediaFiles,
        server_name: str,
        reactor: Any,
        *,
        max_upload_size: int,
        user_quota: Optional[int] = None,
        waiters: Optional[UploadWaiters] = None,
    ) -> None:
        self._store = store
        self._files = files
        self._server_name = server_name
        self._reactor = reactor
        self.max_upload_size = max_upload_size
        self._quota = user_quota
        self.waiters = waiters if waiters is not None else UploadWaiters(reactor)

    def _now_ms(self) -> int:
        return int(self._reactor.seconds() * 1000)

    def _in_thread(self, f: Callable[[], Any]) -> defer.Deferred:
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f)

    def mxc(self, media_id: str) -> str:
        """The ``mxc://`` URI of one of our media ids."""
        return f"mxc://{self._server_name}/{media_id}"

    async def upload(
        self, user_id: str, spool: UploadSpool, content_type: Any, upload_name: Optional[str]
    ) -> str:
        """Store a whole upload under a new media id. The spool is consumed (deleted
        whatever happens).

        :returns: the ``mxc://`` URI.
        :raises MatrixError: 413 ``M_TOO_LARGE``, 403 ``M_FORBIDDEN`` (quota).
        """
        try:
            for _ in range(5):
                media_id = new_media_id()
                try:
                    await self._store_content(user_id, media_id, spool, content_type, upload_name, new=True)
                except MediaIdTaken:
                    continue
                return self.mxc(media_id)
            raise MatrixError(500, "M_UNKNOWN", "Could not allocate a media id")
        finally:
            spool.discard()

    async def create(self, user_id: str) -> dict[str, Any]:
        """``POST /create``: a new media id whose content comes later.

        :returns: ``{"content_uri", "unused_expires_at"}``.
        :raises MatrixError: 429 ``M_LIMIT_EXCEEDED`` beyond :data:`MAX_PENDING_PER_USER`.
        """
        now = self._now_ms()
        expires = now + UNUSED_EXPIRY_MS
        for _ in range(5):
            media_id = new_media_id()
            try:
                await self._store.media.create_pending(media_id, user_id, now, expires, MAX_PENDING_PER_USER)
            except MediaIdTaken:
                continue
            except QuotaExceeded:
                raise limit_exceeded(error="Too many pending uploads; upload to or let expire the ids you have") from None
            return {"content_uri": self.mxc(media_id), "unused_expires_at": expires}
        raise MatrixError(500, "M_UNKNOWN", "Could not allocate a media id")

    async def upload_to(
        self,
        user_id: str,
        server_name: str,
        media_id: str,
        spool: UploadSpool,
        content_type: Any,
        upload_name: Optional[str],
    ) -> None:
        """``PUT /upload/{serverName}/{mediaId}``: the content of an id made by
        :meth:`create`. The spool is consumed.

        :raises MatrixError: 404 ``M_NOT_FOUND`` (unknown, expired or not ours), 403
            ``M_FORBIDDEN`` (another user's id, quota), 409 ``M_CANNOT_OVERWRITE_MEDIA``,
            413 ``M_TOO_LARGE``.
        """
        try:
            if server_name != self._server_name:
                raise not_found("Media ids of other servers cannot be uploaded to here")
            try:
                await self._store_content(user_id, media_id, spool, content_type, upload_name, new=False)
            except MediaNotFound:
                raise not_found("Unknown or expired media id") from None
            except MediaNotOwned:
                raise forbidden("This media id was created by another user") from None
            except MediaAlreadyUploaded:
                raise MatrixError(409, M_CANNOT_OVERWRITE_MEDIA, "Media already uploaded") from None
            self.waiters.uploaded(media_id)
        finally:
            spool.discard()

    async def _store_content(
        self, user_id: str, media_id: str, spool: UploadSpool, content_type: Any, upload_name: Optional[str], *, new: bool
    ) -> None:
        if spool.size > self.max_upload_size:
            raise too_large(f"Cannot upload files larger than {self.max_upload_size} bytes")
        await self._in_thread(spool.sync)
        try:
            await self._store.media.store_local_content(
                media_id,
                user_id,
                content_type=sanitise_content_type(content_type),
                upload_name=clean_upload_name(upload_name),
                media_length=spool.size,
                sha256=spool.sha256,
                now_ms=self._now_ms(),
                new=new,
                quota=self._quota,
                place_file=lambda: self._files.place(spool),
            )
        except QuotaExceeded:
            raise MatrixError(403, M_FORBIDDEN, "Media quota exceeded: delete media or ask the server's operator") from None
        log.info("{user} uploaded {media_id} ({size} bytes)", user=user_id, media_id=media_id, size=spool.size)


__all__ = ["M_CANNOT_OVERWRITE_MEDIA", "MAX_PENDING_PER_USER", "MediaUploader", "UNUSED_EXPIRY_MS", "UploadWaiters"]
