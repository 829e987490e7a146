"""Media files on disk: content-addressed paths, spool files written atomically into place.

Layout under the media directory::

    content/ab/cd/abcd...(64 hex digits)   every file, named by the SHA-256 of its bytes
    tmp/                                   files being received or made; emptied at start

A path is only ever built from a SHA-256 we computed ourselves (checked to be 64 hex
digits), never from a media id or a server name (HOSTILE row 31). A file reaches its
place by a hard link from a fsynced spool file, inside the database transaction that
records it: the row and the file appear together or not at all, and a crash half way
leaves at most an unreferenced file or a spool in ``tmp/``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from typing import IO, Optional

from twisted.logger import Logger

log = Logger()

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class SpoolTooLarge(Exception):
    """More bytes were written to a spool than its limit allows."""


class UploadSpool:
    """A temporary file in ``tmp/`` that hashes and counts what is written to it.

    It is file-like enough to be a ``twisted.web`` request's ``content`` (``write``,
    ``seek``, ``tell``, ``read``, ``close``). Closing it deletes it, unless it was
    :meth:`claim`-ed, in which case :meth:`discard` deletes it once the claimer is done.

    :param directory: where to create it.
    :param limit: most bytes it accepts; beyond that :meth:`write` raises
        :class:`SpoolTooLarge` and the spool deletes itself.
    """

    def __init__(self, directory: str, limit: Optional[int] = None) -> None:
        fd, self.path = tempfile.mkstemp(dir=directory, prefix="spool-")
        self._file: IO[bytes] = os.fdopen(fd, "w+b")
        self._sha = hashlib.sha256()
        self.size = 0
        self.limit = limit
        self._claimed = False
        self._deleted = False

    # -- file-like ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append ``data`` (hashing it).

        :raises SpoolTooLarge: past the limit (the spool is then deleted).
        """
        if self.limit is not None and self.size + len(data) > self.limit:
            self.discard()
            raise SpoolTooLarge(f"more than {self.limit} bytes")
        self._file.write(data)
        self._sha.update(data)
        self.size += len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def read(self, n: int = -1) -> bytes:
        return self._file.read(n)

    def close(self) -> None:
        """Delete the spool, unless claimed."""
        if not self._claimed:
            self.discard()

    @property
    def closed(self) -> bool:
        return self._deleted

    # -- ownership ------------------------------------------------------------------------

    def claim(self) -> "UploadSpool":
        """Take the spool over from whoever would close it (the request): only
        :meth:`discard` deletes it from now on."""
        self._claimed = True
        return self

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of what was written."""
        return self._sha.hexdigest()

    def sync(self) -> None:
        """Flush and fsync the bytes (blocking: call from a thread for large files)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def discard(self) -> None:
        """Close and delete the spool (idempotent)."""
        if self._deleted:
            return
        self._deleted = True
        try:
            self._file.close()
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class MediaFiles:
    """The media directory (see the module docstring).

    :param root: the media directory (``media_store_path``); created if missing.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.content_dir = os.path.join(self.root, "content")
        self.tmp_dir = os.path.join(self.root, "tmp")
        os.makedirs(self.content_dir, exist_ok=True)
        os.makedirs(self.tmp_dir, exist_ok=True)

    def clean_tmp(self) -> int:
        """Delete what a previous run left in ``tmp/`` (at start, before anything new).

        :returns: how many files were removed.
        """
        removed = 0
        for name in os.listdir(self.tmp_dir):
            try:
                os.unlink(os.path.join(self.tmp_dir, name))
                removed += 1
            except OSError as e:
                log.warn("Cannot remove {name} from the media tmp directory: {e}", name=name, e=e)
        return removed

    def new_spool(self, limit: Optional[int] = None) -> UploadSpool:
        """A new :class:`UploadSpool` in ``tmp/``."""
        return UploadSpool(self.tmp_dir, limit)

    def path_for(self, sha256: str) -> str:
        """The path of the file with this content hash.

        :raises ValueError: if ``sha256`` is not 64 lower-case hex digits.
        """
        if type(sha256) is not str or not _SHA256_HEX.match(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r:.80}")
        return os.path.join(self.content_dir, sha256[:2], sha256[2:4], sha256)

    def exists(self, sha256: str) -> bool:
        """Whether the file with this hash is on disk."""
        return os.path.isfile(self.path_for(sha256))

    def place(self, spool: UploadSpool) -> None:
        """Link a synced spool into its content-addressed place (nothing to do if a file
        with the same content is there already) and make the link durable. Runs inside the
        recording transaction (see :mod:`fedserver.storage.operations.media_store`)."""
        final = self.path_for(spool.sha256)
        directory = os.path.dirname(final)
        os.makedirs(directory, exist_ok=True)
        try:
            os.link(spool.path, final)
        except FileExistsError:
            return
        except OSError:
            # A filesystem without hard links: copy the (synced) spool under a temporary
            # name in the same directory, then rename it into place atomically.
            fd, partial = tempfile.mkstemp(dir=directory, prefix=".partial-")
            try:
                with os.fdopen(fd, "wb") as out, open(spool.path, "rb") as src:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(partial, final)
            except BaseException:
                try:
                    os.unlink(partial)
                except OSError:
                    pass
                raise
        _fsync_directory(directory)

    def content_hashes(self, older_than: float) -> list[str]:
        """The hashes of the files in ``content/`` last modified before ``older_than`` (a
        time in seconds), and stale ``.partial-`` copies removed (blocking: run in a
        thread). Anything else found there is left alone."""
        out = []
        for directory, _dirs, names in os.walk(self.content_dir):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    if os.stat(path).st_mtime >= older_than:
                        continue
                except FileNotFoundError:
                    continue
                if name.startswith(".partial-"):
                    try:
                        os.unlink(path)  # a copy that never reached its name
                    except OSError:
                        pass
                elif _SHA256_HEX.match(name) and path == self.path_for(name):
                    out.append(name)
        return sorted(out)

    def delete(self, sha256: str) -> None:
        """Delete the file with this hash (no error if it is gone)."""
        try:
            os.unlink(self.path_for(sha256))
        except FileNotFoundError:
            pass

    def write_spool(self, data: bytes) -> UploadSpool:
        """A synced spool holding ``data`` (blocking: for thumbnails made in a thread)."""
        spool = self.new_spool()
        try:
            spool.write(data)
            spool.sync()
        except BaseException:
            spool.discard()
            raise
        return spool.claim()


def _fsync_directory(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["MediaFiles", "SpoolTooLarge", "UploadSpool"]
