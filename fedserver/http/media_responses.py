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

from fedserver.errors import not_found
from fedserver.handlers.media.common import CONTENT_SECURITY_POLICY, ServableMedia, content_disposition
from fedserver.handlers.media.multipart import closing, new_boundary, part_head

log = Logger()

#: Bytes read from disk per write.
CHUNK_SIZE = 256 * 1024


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

    def __init__(self, request: Any, f: IO[bytes], trailer: bytes = b"") -> None:
        self._request: Optional[Any] = request
        self._file = f
        self._trailer = trailer
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
            data = self._file.read(CHUNK_SIZE)
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
    name = file_name if file_name is not None else media.upload_name
    set_media_headers(request, media.content_type, content_disposition(media.content_type, name, force_inline=inline))
    request.setHeader(b"Content-Length", b"%d" % os.fstat(f.fileno()).st_size)
    request.setResponseCode(200)
    if request.method == b"HEAD":
        f.close()
        request.write(b"")
        request.finish()
        return
    await FileProducer(request, f).start()


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


__all__ = ["FileProducer", "send_media", "send_multipart_media", "set_media_headers"]
