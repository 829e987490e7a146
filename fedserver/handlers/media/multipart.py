"""``multipart/mixed`` (RFC 2046 section 5.1) for federation media: an incremental reader and the writer's framing.

Pure code: no I/O. The reader is fed the body as it arrives and hands each part's
headers and bytes to callbacks, so a large media part streams to disk without being held.
"""

from __future__ import annotations

import re
import secrets
from typing import Callable, Optional

# RFC 2046: boundary := 0*69<bchars> bcharsnospace
_BOUNDARY_PARAM = re.compile(r';\s*boundary\s*=\s*("([^"]{1,70})"|([^\s;"]{1,70}))\s*(?:;|$)', re.IGNORECASE)
_BCHARS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")

#: Longest block of part headers accepted.
MAX_HEADER_BYTES = 16 * 1024


class MultipartError(Exception):
    """The body is not well-formed multipart, or breaks a limit."""


def boundary_from_content_type(content_type: Optional[str | bytes]) -> Optional[bytes]:
    """The boundary of a ``multipart/mixed`` Content-Type, or ``None`` if it is not one."""
    if content_type is None:
        return None
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "multipart/mixed":
        return None
    m = _BOUNDARY_PARAM.search(content_type)
    if m is None:
        return None
    boundary = m.group(2) if m.group(2) is not None else m.group(3)
    if not _BCHARS.match(boundary):
        return None
    return boundary.encode("ascii")


def new_boundary() -> str:
    """A random boundary (hex digits never occur in a way that matters: the delimiter is
    ``CRLF--boundary`` and 32 random hex digits will not be in the media by chance)."""
    return secrets.token_hex(16)


def part_head(boundary: str, headers: list[tuple[str, str]], first: bool) -> bytes:
    """The delimiter and header block that start a part."""
    lead = b"" if first else b"\r\n"
    lines = [f"--{boundary}"] + [f"{k}: {v}" for k, v in headers]
    return lead + ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def closing(boundary: str) -> bytes:
    """The close delimiter that ends the body."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


_PREAMBLE, _AFTER_DELIM, _HEADERS, _BODY, _DONE = range(5)


class MultipartReader:
    """Feed it the body in chunks; it calls ``on_part(index, headers)`` when a part's
    headers are complete (``headers`` maps lower-case names to values) and
    ``on_data(index, chunk)`` with the part's bytes.

    :param boundary: from :func:`boundary_from_content_type`.
    :param max_parts: more parts than this is an error.
    :raises MultipartError: from :meth:`feed` or :meth:`finish` for malformed input.
    """

    def __init__(
        self,
        boundary: bytes,
        on_part: Callable[[int, dict[str, str]], None],
        on_data: Callable[[int, bytes], None],
        *,
        max_parts: int = 2,
    ) -> None:
        self._dash = b"--" + boundary
        self._delim = b"\r\n--" + boundary
        self._on_part = on_part
        self._on_data = on_data
        self._max_parts = max_parts
        self._buf = b""
        self._state = _PREAMBLE
        self._index = -1

    @property
    def done(self) -> bool:
        """Whether the close delimiter was seen."""
        return self._state == _DONE

    def feed(self, data: bytes) -> None:
        """Consume the next bytes of the body."""
        if self._state == _DONE:
            return  # the epilogue is ignored
        self._buf += data
        while self._step():
            pass

    def finish(self) -> None:
        """The body ended.

        :raises MultipartError: if it ended before the close delimiter.
        """
        if self._state != _DONE:
            raise MultipartError("multipart body ended before its close delimiter")

    def _step(self) -> bool:
        buf = self._buf
        if self._state == _PREAMBLE:
            if buf.startswith(self._dash):
                self._buf = buf[len(self._dash):]
                self._state = _AFTER_DELIM
                return True
            i = buf.find(self._delim)
            if i < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError("no multipart delimiter found")
                return False
            self._buf = buf[i + len(self._delim):]
            self._state = _AFTER_DELIM
            return True
        if self._state == _AFTER_DELIM:
            if len(buf) < 2:
                return False
            if buf.startswith(b"--"):
                self._state = _DONE
                self._buf = b""
                return False
            stripped = buf.lstrip(b" \t")
            if len(stripped) < 2:
                return False
            if not stripped.startswith(b"\r\n"):
                raise MultipartError("garbage after a multipart delimiter")
            self._buf = stripped[2:]
            self._index += 1
            if self._index >= self._max_parts:
                raise MultipartError(f"more than {self._max_parts} parts")
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buf.startswith(b"\r\n"):
                block, rest = b"", buf[2:]
            else:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEADER_BYTES:
                        raise MultipartError("part headers too long")
                    return False
                block, rest = buf[:end], buf[end + 4:]
            if len(block) > MAX_HEADER_BYTES:
                raise MultipartError("part headers too long")
            self._buf = rest
            self._on_part(self._index, _parse_headers(block))
            self._state = _BODY
            return True
        if self._state == _BODY:
            i = buf.find(self._delim)
            if i >= 0:
                if i:
                    self._on_data(self._index, buf[:i])
                self._buf = buf[i + len(self._delim):]
                self._state = _AFTER_DELIM
                return True
            # Keep what could be the start of a delimiter split across chunks.
            keep = len(self._delim) - 1
            if len(buf) > keep:
                self._on_data(self._index, buf[:-keep])
                self._buf = buf[-keep:]
            return False
        return False


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise MultipartError("malformed part header")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


__all__ = [
    "MultipartError",
    "MultipartReader",
    "boundary_from_content_type",
    "closing",
    "new_boundary",
    "part_head",
]
