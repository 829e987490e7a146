"""Sending media: safe headers, files streamed from disk, and the federation multipart framing.

Requests are ``twisted.web`` requests (``IRequest``), typed ``Any`` here: mypy does not read
zope interfaces.
"""

from __future__ import annotations

import os
from typing import IO, Any, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from zope.interface import implementer

from fedserver.errors import M_UNKNOWN, MatrixError, not_found
from fedserver.handlers.media.common import CONTENT_SECURITY_POLICY, ServableMedia, content_disposition
from fedserver.handlers.media.multipart import closing, new_boundary, part_head

log = Logger()

#: Bytes read from disk per write.
CHUNK_SIZE = 256 * 1024
#: Longest Range header read (longer ones are ignored: the whole content is sent).
MAX_RANGE_HEADER = 1024


class Unsatisfiable(Exception):
    """No range of a Range header overlaps the content (RFC 9110 "416 Range Not
    Satisfiable")."""


def parse_byte_range(header: Optional[bytes], size: int) -> Optional[tuple[int, int]]:
    """The one byte range to send for a ``Range`` header (RFC 9110 section 14), as
    ``(first, last)`` inclusive offsets into ``size`` bytes, or ``None`` to send the whole
    content: no header, a unit other than ``bytes`` (which a server "MUST ignore"), a
    range set that does not parse, or several ranges (a server "MAY ignore the Range
    header field": the whole content rather than a multipart/byteranges answer).

    :raises Unsatisfiable: a valid single range that starts at or beyond the end (or
        a zero-length suffix).
    """
    if header is None or len(header) > MAX_RANGE_HEADER:
        return None
    try:
        text = header.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    unit, sep, spec = text.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges = [r.strip() for r in spec.split(",") if r.strip()]
    if len(ranges) != 1:
        return None
    first_s, dash, last_s = ranges[0].partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or not (first_s or last_s) or not all(x.isdigit() for x in (first_s, last_s) if x):
        return None
    if not first_s:  # a suffix: the last N bytes
        n = int(last_s)
        if n == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - n), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # invalid: ignored
    if first >= size:
        raise Unsatisfiable()
    return first, min(last, size - 1)


def set_media_headers(request: Any, content_type: str, disposition: bytes) -> None:
    """Headers for served content: its type and disposition, and what keeps a browser
    from running it even if opened directly (spec "Content repository": the recommended
    ``Content-Security-Policy`` and ``Cross-Origin-Resource-Policy``; ``nosniff`` so the
    declared type is the one used: HOSTILE row 32)."""
    request.setHeader(b"Content-Type", content_type.encode("ascii"))
    request.setHeader(b"Content-Disposition", disposition)
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode("ascii"))
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Cross-Origin-Resource-Policy", b"cross-origin")
    # Media never changes under its id; access control is the access token's.
    request.setHeader(b"Cache-Control", b"private, max-age=604800, immutable")


@implementer(IPullProducer)
class FileProducer:
    """Writes a file to a request a chunk at a time as the connection drains, then an
    optional ``trailer``, then finishes the request. :attr:`done` fires when it is over
    (successfully or because the client went away)."""

    def __init__(self, request: Any, f: IO[bytes], trailer: bytes = b"", *, length: Optional[int] = None) -> None:
        self._request: Optional[Any] = request
        self._file = f
        self._trailer = trailer
        #: bytes still to send from the file's current position (``None``: to the end).
        self._left = length
        self.done: defer.Deferred = defer.Deferred()

    def start(self) -> defer.Deferred:
        """Begin; :returns: :attr:`done`."""
        assert self._request is not None
        self._request.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        request = self._request
        if request is None:
            return
        try:
            want = CHUNK_SIZE if self._left is None else min(CHUNK_SIZE, self._left)
            data = self._file.read(want) if want else b""
            if self._left is not None:
                self._left -= len(data)
        except OSError:
            log.failure("Reading a media file failed")
            self._stop()
            request.unregisterProducer()
            request.loseConnection()
            return
        if data:
            request.write(data)
            return
        if self._trailer:
            request.write(self._trailer)
        request.unregisterProducer()
        request.finish()
        self._stop()

    def stopProducing(self) -> None:
        # The connection went away.
        self._stop()

    def _stop(self) -> None:
        self._request = None
        self._file.close()
        if not self.done.called:
            self.done.callback(None)


def _open(media: ServableMedia) -> IO[bytes]:
    try:
        return open(media.path, "rb")
    except FileNotFoundError:
        log.error("Media file {path} is missing", path=media.path)
        raise not_found("Media not found") from None


async def send_media(
    request: Any, media: ServableMedia, *, file_name: Optional[str] = None, inline: bool = False
) -> None:
    """Stream ``media`` from disk as the whole response.

    :param file_name: the name from the URL, overriding the stored one.
    :param inline: always ``inline`` (thumbnails: spec "MUST be inline"); else by type.
    """
    f = _open(media)
    size = os.fstat(f.fileno()).st_size
    etag = b'"%s"' % media.sha256.encode("ascii") if media.sha256 and media.sha256.isascii() else None
    # Byte ranges (RFC 9110 section 14): browsers seek in audio and video with them. Only
    # for GET; an If-Range that is not our (strong, content-addressed) ETag gets it all.
    wanted = None
    if request.method == b"GET":
        if_range = request.getHeader(b"if-range")
        if if_range is None or (etag is not None and if_range.strip() == etag):
            try:
                wanted = parse_byte_range(request.getHeader(b"range"), size)
            except Unsatisfiable:
                f.close()
                request.setHeader(b"Content-Range", b"bytes */%d" % size)
                raise MatrixError(416, M_UNKNOWN, "Requested range not satisfiable") from None
    name = file_name if file_name is not None else media.upload_name
    set_media_headers(request, media.content_type, content_disposition(media.content_type, name, force_inline=inline))
    request.setHeader(b"Accept-Ranges", b"bytes")
    if etag is not None:
        request.setHeader(b"ETag", etag)
    length = size
    if wanted is not None:
        first, last = wanted
        length = last - first + 1
        request.setHeader(b"Content-Range", b"bytes %d-%d/%d" % (first, last, size))
        request.setResponseCode(206)
        f.seek(first)
    else:
        request.setResponseCode(200)
    request.setHeader(b"Content-Length", b"%d" % length)
    if request.method == b"HEAD":
        f.close()
        request.write(b"")
        request.finish()
        return
    await FileProducer(request, f, length=length if wanted is not None else None).start()


async def send_multipart_media(request: Any, media: ServableMedia, *, inline: bool = False) -> None:
    """Stream ``media`` as the server-server API's ``multipart/mixed`` answer: a JSON part
    (``{}``, the metadata) then the bytes with their own headers (server-server API
    "Content Repository")."""
    f = _open(media)
    boundary = new_boundary()
    disposition = content_disposition(media.content_type, media.upload_name, force_inline=inline).decode("ascii")
    head = part_head(boundary, [("Content-Type", "application/json")], first=True) + b"{}"
    head += part_head(boundary, [("Content-Type", media.content_type), ("Content-Disposition", disposition)], first=False)
    tail = closing(boundary)
    request.setHeader(b"Content-Type", f"multipart/mixed; boundary={boundary}".encode("ascii"))
    request.setHeader(b"Content-Length", b"%d" % (len(head) + os.fstat(f.fileno()).st_size + len(tail)))
    request.setResponseCode(200)
    if request.method == b"HEAD":
        f.close()
        request.write(b"")
        request.finish()
        return
    request.write(head)
    await FileProducer(request, f, tail).start()


__all__ = ["FileProducer", "Unsatisfiable", "parse_byte_range", "send_media", "send_multipart_media", "set_media_headers"]
