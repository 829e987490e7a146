"""Storage for the content repository's metadata: local uploads, cached remote media, thumbnails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from twisted.internet.defer import Deferred, succeed

from fedserver.storage.database import Database, Txn, check_int, check_text
from fedserver.storage.interface import StorageError

#: ``last_access_ts`` is written at most this often per media (a download is not a write).
ACCESS_UPDATE_INTERVAL_MS = 10 * 60 * 1000

#: Called inside the write transaction that records a file, once the row is written: puts
#: the file in place (the transaction holds the database's write lock, so a purge in any
#: process cannot delete a file between the check and the new row).
PlaceFile = Callable[[], None]
#: Called inside the purge transaction for each content hash no row refers to any more.
DeleteFile = Callable[[str], None]


class MediaStoreError(StorageError):
    """Base of the media store's refusals."""


class MediaNotFound(MediaStoreError):
    """No such media id (or, for ``PUT /upload``, it expired)."""


class MediaAlreadyUploaded(MediaStoreError):
    """``PUT /upload`` to a media id that has content already."""


class MediaNotOwned(MediaStoreError):
    """``PUT /upload`` by another user than the one who created the id."""


class QuotaExceeded(MediaStoreError):
    """The upload would take the user past the quota."""


class MediaIdTaken(MediaStoreError):
    """A new media id collided with an existing one (retry with another)."""


@dataclass(frozen=True, slots=True)
class LocalMedia:
    """One of our users' media. ``sha256`` is ``None`` while a created id awaits content."""

    media_id: str
    user_id: str
    created_ts: int
    unused_expires_ts: Optional[int]
    upload_ts: Optional[int]
    content_type: Optional[str]
    upload_name: Optional[str]
    media_length: Optional[int]
    sha256: Optional[str]
    last_access_ts: int


@dataclass(frozen=True, slots=True)
class RemoteMedia:
    """Media of another server, cached here. ``created_ts`` is when it was cached."""

    server_name: str
    media_id: str
    created_ts: int
    content_type: str
    upload_name: Optional[str]
    media_length: int
    sha256: str
    last_access_ts: int


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A thumbnail made for ``(width, height, method, animated)``."""

    content_type: str
    media_length: int
    sha256: str


_LOCAL_COLUMNS = (
    "media_id, user_id, created_ts, unused_expires_ts, upload_ts, content_type, upload_name,"
    " media_length, sha256, last_access_ts"
)
_REMOTE_COLUMNS = (
    "server_name, media_id, created_ts, content_type, upload_name, media_length, sha256, last_access_ts"
)


def _is_referenced_txn(txn: Txn, sha256: str) -> bool:
    for table in ("local_media", "remote_media", "media_thumbnails"):
        if txn.execute(f"SELECT 1 FROM {table} WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone():
            return True
    return False


class MediaStore:
    """The content repository's tables (schema 010). Every method returns a Deferred.

    :param db: the :class:`fedserver.storage.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- local media ----------------------------------------------------------------------

    def create_pending(
        self, media_id: str, user_id: str, now_ms: int, expires_ts: int, max_pending: int
    ) -> "Deferred[None]":
        """Reserve ``media_id`` for ``user_id`` (``POST /create``), content to come.

        :param max_pending: most unexpired pending ids a user may hold.
        :raises QuotaExceeded: (through the Deferred) if the user holds ``max_pending``.
        :raises MediaIdTaken: if the id exists.
        """
        check_text(media_id, "media_id")
        check_text(user_id, "user_id")

        def txn(t: Txn) -> None:
            # Ids whose content never came in time are forgotten as the user makes new ones.
            t.execute(
                "DELETE FROM local_media WHERE user_id = ? AND sha256 IS NULL AND unused_expires_ts <= ?",
                (user_id, now_ms),
            )
            (pending,) = t.execute(
                "SELECT COUNT(*) FROM local_media WHERE user_id = ? AND sha256 IS NULL AND unused_expires_ts > ?",
                (user_id, now_ms),
            ).fetchone()
            if pending >= max_pending:
                raise QuotaExceeded(f"{user_id} has {pending} pending uploads")
            if t.execute("SELECT 1 FROM local_media WHERE media_id = ?", (media_id,)).fetchone():
                raise MediaIdTaken(media_id)
            t.execute(
                f"INSERT INTO local_media ({_LOCAL_COLUMNS}) VALUES (?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, ?)",
                (media_id, user_id, now_ms, expires_ts, now_ms),
            )

        return self._db.run_write(txn)

    def store_local_content(
        self,
        media_id: str,
        user_id: str,
        *,
        content_type: str,
        upload_name: Optional[str],
        media_length: int,
        sha256: str,
        now_ms: int,
        new: bool,
        quota: Optional[int],
        place_file: PlaceFile,
    ) -> "Deferred[None]":
        """Record uploaded content, in one transaction with ``place_file``.

        :param new: a new id (``POST /upload``) rather than one made by ``POST /create``.
        :param quota: most bytes the user may have in total, or ``None``.
        :raises MediaNotFound: (through the Deferred) the created id is unknown or expired.
        :raises MediaNotOwned: it was created by another user.
        :raises MediaAlreadyUploaded: it has content already.
        :raises QuotaExceeded: the user would exceed ``quota``.
        :raises MediaIdTaken: a new id collided.
        """
        for value, name in ((media_id, "media_id"), (user_id, "user_id"), (content_type, "content_type"),
                            (sha256, "sha256")):
            check_text(value, name)
        check_text(upload_name, "upload_name", nullable=True)
        check_int(media_length, "media_length")

        def txn(t: Txn) -> None:
            row = t.execute(
                "SELECT user_id, sha256, unused_expires_ts FROM local_media WHERE media_id = ?", (media_id,)
            ).fetchone()
            if new and row is not None:
                raise MediaIdTaken(media_id)
            if not new:
                if row is None or (row[1] is None and row[2] is not None and row[2] <= now_ms):
                    raise MediaNotFound(media_id)
                if row[0] != user_id:
                    raise MediaNotOwned(media_id)
                if row[1] is not None:
                    raise MediaAlreadyUploaded(media_id)
            if quota is not None:
                (used,) = t.execute(
                    "SELECT COALESCE(SUM(media_length), 0) FROM local_media WHERE user_id = ?", (user_id,)
                ).fetchone()
                if used + media_length > quota:
                    raise QuotaExceeded(f"{user_id} uses {used} of {quota} bytes")
            if new:
                t.execute(
                    f"INSERT INTO local_media ({_LOCAL_COLUMNS}) VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)",
                    (media_id, user_id, now_ms, now_ms, content_type, upload_name, media_length, sha256, now_ms),
                )
            else:
                t.execute(
                    "UPDATE local_media SET upload_ts = ?, content_type = ?, upload_name = ?, media_length = ?,"
                    " sha256 = ?, unused_expires_ts = NULL, last_access_ts = ? WHERE media_id = ?",
                    (now_ms, content_type, upload_name, media_length, sha256, now_ms, media_id),
                )
            place_file()

        return self._db.run_write(txn)

    def get_local(self, media_id: str) -> "Deferred[Optional[LocalMedia]]":
        """:returns: Deferred firing with the :class:`LocalMedia` or ``None``."""
        check_text(media_id, "media_id")

        def txn(t: Txn) -> Optional[LocalMedia]:
            row = t.execute(f"SELECT {_LOCAL_COLUMNS} FROM local_media WHERE media_id = ?", (media_id,)).fetchone()
            return LocalMedia(*row) if row else None

        return self._db.run_read(txn)

    def user_usage(self, user_id: str) -> "Deferred[int]":
        """:returns: Deferred firing with the bytes of content ``user_id`` has uploaded."""

        def txn(t: Txn) -> int:
            return t.execute(
                "SELECT COALESCE(SUM(media_length), 0) FROM local_media WHERE user_id = ?", (user_id,)
            ).fetchone()[0]

        return self._db.run_read(txn)

    def delete_expired_pending(self, now_ms: int) -> "Deferred[int]":
        """Forget created ids whose content never came before they expired.

        :returns: Deferred firing with how many were removed.
        """

        def txn(t: Txn) -> int:
            cur = t.execute(
                "DELETE FROM local_media WHERE sha256 IS NULL AND unused_expires_ts <= ?", (now_ms,)
            )
            return cur.rowcount

        return self._db.run_write(txn)

    def touch_local(self, media: LocalMedia, now_ms: int) -> "Deferred[None]":
        """Note an access (written only if the last one is older than
        :data:`ACCESS_UPDATE_INTERVAL_MS`)."""
        if now_ms - media.last_access_ts < ACCESS_UPDATE_INTERVAL_MS:
            return succeed(None)

        def txn(t: Txn) -> None:
            t.execute("UPDATE local_media SET last_access_ts = ? WHERE media_id = ?", (now_ms, media.media_id))

        return self._db.run_write(txn)

    # -- remote media ---------------------------------------------------------------------

    def get_remote(self, server_name: str, media_id: str) -> "Deferred[Optional[RemoteMedia]]":
        """:returns: Deferred firing with the cached :class:`RemoteMedia` or ``None``."""
        check_text(server_name, "server_name")
        check_text(media_id, "media_id")

        def txn(t: Txn) -> Optional[RemoteMedia]:
            row = t.execute(
                f"SELECT {_REMOTE_COLUMNS} FROM remote_media WHERE server_name = ? AND media_id = ?",
                (server_name, media_id),
            ).fetchone()
            return RemoteMedia(*row) if row else None

        return self._db.run_read(txn)

    def store_remote(self, media: RemoteMedia, place_file: PlaceFile) -> "Deferred[None]":
        """Record a remote media just fetched (replacing a previous record of it), in one
        transaction with ``place_file``."""
        for value, name in ((media.server_name, "server_name"), (media.media_id, "media_id"),
                            (media.content_type, "content_type"), (media.sha256, "sha256")):
            check_text(value, name)
        check_text(media.upload_name, "upload_name", nullable=True)
        check_int(media.media_length, "media_length")

        def txn(t: Txn) -> None:
            t.execute(
                f"INSERT INTO remote_media ({_REMOTE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (server_name, media_id) DO UPDATE SET created_ts = excluded.created_ts,"
                " content_type = excluded.content_type, upload_name = excluded.upload_name,"
                " media_length = excluded.media_length, sha256 = excluded.sha256,"
                " last_access_ts = excluded.last_access_ts",
                (media.server_name, media.media_id, media.created_ts, media.content_type, media.upload_name,
                 media.media_length, media.sha256, media.last_access_ts),
            )
            place_file()

        return self._db.run_write(txn)

    def forget_remote(self, server_name: str, media_id: str, delete_file: DeleteFile) -> "Deferred[None]":
        """Drop one cached remote media and its thumbnails (e.g. its file went missing);
        files no longer referenced are handed to ``delete_file``."""

        def txn(t: Txn) -> None:
            self._drop_remote_txn(t, [(server_name, media_id)], delete_file)

        return self._db.run_write(txn)

    def touch_remote(self, media: RemoteMedia, now_ms: int) -> "Deferred[None]":
        """Note an access (rate-limited like :meth:`touch_local`)."""
        if now_ms - media.last_access_ts < ACCESS_UPDATE_INTERVAL_MS:
            return succeed(None)

        def txn(t: Txn) -> None:
            t.execute(
                "UPDATE remote_media SET last_access_ts = ? WHERE server_name = ? AND media_id = ?",
                (now_ms, media.server_name, media.media_id),
            )

        return self._db.run_write(txn)

    def purge_remote(self, before_ts: int, delete_file: DeleteFile) -> "Deferred[tuple[int, int]]":
        """Drop cached remote media not accessed since ``before_ts`` (ms), with their
        thumbnails; each file no row refers to any more goes to ``delete_file`` inside the
        transaction.

        :returns: Deferred firing with ``(media removed, bytes of files deleted)``.
        """
        check_int(before_ts, "before_ts")

        def txn(t: Txn) -> tuple[int, int]:
            rows = t.execute(
                "SELECT server_name, media_id FROM remote_media WHERE last_access_ts < ?", (before_ts,)
            ).fetchall()
            freed = self._drop_remote_txn(t, rows, delete_file)
            return len(rows), freed

        return self._db.run_write(txn)

    @staticmethod
    def _drop_remote_txn(t: Txn, keys: list, delete_file: DeleteFile) -> int:
        hashes: dict[str, int] = {}
        for server_name, media_id in keys:
            for sha, length in t.execute(
                "SELECT sha256, media_length FROM remote_media WHERE server_name = ? AND media_id = ?"
                " UNION ALL SELECT sha256, media_length FROM media_thumbnails WHERE server_name = ? AND media_id = ?",
                (server_name, media_id, server_name, media_id),
            ).fetchall():
                hashes[sha] = length
            t.execute("DELETE FROM remote_media WHERE server_name = ? AND media_id = ?", (server_name, media_id))
            t.execute("DELETE FROM media_thumbnails WHERE server_name = ? AND media_id = ?", (server_name, media_id))
        freed = 0
        for sha, length in hashes.items():
            if not _is_referenced_txn(t, sha):
                delete_file(sha)
                freed += length
        return freed

    # -- thumbnails -----------------------------------------------------------------------

    def get_thumbnail(
        self, server_name: str, media_id: str, width: int, height: int, method: str, animated: bool
    ) -> "Deferred[Optional[Thumbnail]]":
        """:returns: Deferred firing with the :class:`Thumbnail` made for these
        parameters, or ``None``."""

        def txn(t: Txn) -> Optional[Thumbnail]:
            row = t.execute(
                "SELECT content_type, media_length, sha256 FROM media_thumbnails WHERE server_name = ?"
                " AND media_id = ? AND width = ? AND height = ? AND method = ? AND animated = ?",
                (server_name, media_id, width, height, method, int(animated)),
            ).fetchone()
            return Thumbnail(*row) if row else None

        return self._db.run_read(txn)

    def store_thumbnail(
        self,
        server_name: str,
        media_id: str,
        width: int,
        height: int,
        method: str,
        animated: bool,
        thumbnail: Thumbnail,
        now_ms: int,
        place_file: PlaceFile,
    ) -> "Deferred[None]":
        """Record a thumbnail, in one transaction with ``place_file``."""

        def txn(t: Txn) -> None:
            t.execute(
                "INSERT INTO media_thumbnails (server_name, media_id, width, height, method, animated,"
                " content_type, media_length, sha256, created_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (server_name, media_id, width, height, method, animated) DO UPDATE SET"
                " content_type = excluded.content_type, media_length = excluded.media_length,"
                " sha256 = excluded.sha256, created_ts = excluded.created_ts",
                (server_name, media_id, width, height, method, int(animated), thumbnail.content_type,
                 thumbnail.media_length, thumbnail.sha256, now_ms),
            )
            place_file()

        return self._db.run_write(txn)

    def delete_unreferenced(self, hashes: list[str], delete_file: DeleteFile) -> "Deferred[int]":
        """Delete the files of ``hashes`` that no row refers to, checked and deleted
        inside one write transaction: a file linked by a transaction that committed is
        referenced; one linked by a transaction that failed after the link is not (an
        orphan), and no transaction that could still commit a row for it runs meanwhile.

        :returns: Deferred firing with how many files went to ``delete_file``.
        """

        def txn(t: Txn) -> int:
            n = 0
            for sha in hashes:
                check_text(sha, "sha256")
                if not _is_referenced_txn(t, sha):
                    delete_file(sha)
                    n += 1
            return n

        return self._db.run_write(txn)

    def is_referenced(self, sha256: str) -> "Deferred[bool]":
        """:returns: Deferred firing with whether any row refers to the file ``sha256``."""
        return self._db.run_read(_is_referenced_txn, sha256)


__all__ = [
    "LocalMedia",
    "MediaAlreadyUploaded",
    "MediaIdTaken",
    "MediaNotFound",
    "MediaNotOwned",
    "MediaStore",
    "MediaStoreError",
    "QuotaExceeded",
    "RemoteMedia",
    "Thumbnail",
]
