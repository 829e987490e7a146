"""Shared rules of the content repository: id and server name checks, content types, dispositions."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote, unquote

from fedserver.config import split_server_name
from fedserver.errors import invalid_param

#: Spec "Matrix Content (mxc://) URIs": the media id is only ``A-Za-z0-9``, ``_`` and ``-``.
_MEDIA_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
#: Length of the ids we make (24 URL-safe base64 characters: 144 random bits).
MEDIA_ID_BYTES = 18

#: Content types served ``inline`` (client-server API "Serving inline content"); anything
#: else is an ``attachment``.
INLINE_CONTENT_TYPES = frozenset({
    "text/css", "text/plain", "text/csv", "application/json", "application/ld+json",
    "image/jpeg", "image/gif", "image/png", "image/apng", "image/webp", "image/avif",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mp4", "audio/webm", "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave", "audio/wav",
    "audio/x-wav", "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})

#: The spec's recommended policy for served content ("Content repository"), so that even a
#: file opened straight in a browser runs nothing.
CONTENT_SECURITY_POLICY = (
    "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
    "style-src 'unsafe-inline'; object-src 'self';"
)

DEFAULT_CONTENT_TYPE = "application/octet-stream"

# RFC 9110 token characters.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"^\s*({_TOKEN})/({_TOKEN})\s*(;.*)?$")
_CHARSET = re.compile(rf"(?:^|;)\s*charset\s*=\s*\"?({_TOKEN})\"?\s*(?:;|$)", re.IGNORECASE)
#: Longest file name kept from an upload or a remote server, in characters.
MAX_UPLOAD_NAME = 255


def new_media_id() -> str:
    """A fresh random media id (URL-safe base64, within the spec's alphabet)."""
    return secrets.token_urlsafe(MEDIA_ID_BYTES)


def is_valid_media_id(media_id: str) -> bool:
    """Whether ``media_id`` follows the spec's alphabet (which rules out ``.``, ``/``, NUL
    and every encoded separator: HOSTILE row 31)."""
    return type(media_id) is str and _MEDIA_ID.match(media_id) is not None


def is_valid_server_name(server_name: str) -> bool:
    """Whether ``server_name`` is a server name (appendix "Server Name"), with no empty DNS
    label (so no ``..``)."""
    try:
        host, _port = split_server_name(server_name)
    except ValueError:
        return False
    if ":" not in host and (host.startswith(".") or ".." in host or host.endswith("..")):
        return False
    return True


def check_media_path(server_name: str, media_id: str) -> None:
    """Validate the ``{serverName}/{mediaId}`` of a media URL.

    :raises MatrixError: 400 ``M_INVALID_PARAM`` for either.
    """
    if not is_valid_server_name(server_name):
        raise invalid_param("serverName", "Invalid server name")
    if not is_valid_media_id(media_id):
        raise invalid_param("mediaId", "Invalid media id: only A-Z, a-z, 0-9, '_' and '-' are allowed")


def sanitise_content_type(raw: Optional[str | bytes]) -> str:
    """The content type to store and serve for what a client or server declared.

    ``type/subtype`` in lower case, plus a ``charset`` for ``text/*``; every other
    parameter is dropped. Anything unparseable, absent or too long becomes
    ``application/octet-stream`` (spec: "reasonably close" to what was uploaded).
    """
    if raw is None:
        return DEFAULT_CONTENT_TYPE
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return DEFAULT_CONTENT_TYPE
    if len(raw) > 255:
        return DEFAULT_CONTENT_TYPE
    m = _MEDIA_TYPE.match(raw)
    if m is None:
        return DEFAULT_CONTENT_TYPE
    media_type = f"{m.group(1).lower()}/{m.group(2).lower()}"
    if media_type.startswith("text/") and m.group(3):
        charset = _CHARSET.search(m.group(3))
        if charset is not None:
            return f"{media_type}; charset={charset.group(1).lower()}"
    return media_type


def base_type(content_type: str) -> str:
    """``type/subtype`` without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def is_inline(content_type: str) -> bool:
    """Whether content of this type may be served ``inline`` (spec "Serving inline
    content"); SVG, HTML, XML, PDF and the rest are attachments (HOSTILE row 32)."""
    return base_type(content_type) in INLINE_CONTENT_TYPES


def clean_upload_name(name: Optional[str]) -> Optional[str]:
    """A file name fit to store and echo in ``Content-Disposition``: no control
    characters, no path, at most :data:`MAX_UPLOAD_NAME` characters; ``None`` if nothing
    is left."""
    if name is None:
        return None
    name = "".join(ch for ch in name if ch.isprintable())
    name = name.replace("/", "_").replace("\\", "_").strip()
    if not name:
        return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return name[:MAX_UPLOAD_NAME]


def content_disposition(content_type: str, file_name: Optional[str], *, force_inline: bool = False) -> bytes:
    """The ``Content-Disposition`` header value: ``inline`` or ``attachment`` by content
    type, with the file name (RFC 6266: a quoted ASCII ``filename`` when it is plain
    ASCII, else ``filename*=utf-8''...``)."""
    kind = "inline" if force_inline or is_inline(content_type) else "attachment"
    if not file_name:
        return kind.encode("ascii")
    if file_name.isascii() and all(c.isprintable() and c not in '"\\' for c in file_name):
        return f'{kind}; filename="{file_name}"'.encode("ascii")
    return f"{kind}; filename*=utf-8''{quote(file_name, safe='')}".encode("ascii")


_DISPOSITION_PARAM = re.compile(
    r";\s*(filename\*?)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^;]*)", re.IGNORECASE
)


def file_name_from_disposition(value: Optional[str | bytes]) -> Optional[str]:
    """The file name of a ``Content-Disposition`` header from another server (``filename*``
    preferred over ``filename``), cleaned; ``None`` if it has none."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    found: dict[str, str] = {}
    for name, raw in _DISPOSITION_PARAM.findall(value):
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        found[name.lower()] = raw
    extended = found.get("filename*")
    if extended is not None:
        charset, _, rest = extended.partition("'")
        _lang, _, encoded = rest.partition("'")
        try:
            return clean_upload_name(unquote(encoded, encoding=charset or "utf-8", errors="strict"))
        except (LookupError, UnicodeDecodeError):
            pass
    plain = found.get("filename")
    if plain is not None:
        try:
            plain = plain.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
        return clean_upload_name(plain)
    return None


@dataclass(frozen=True, slots=True)
class ServableMedia:
    """What the HTTP layer needs to send a media file.

    :ivar path: the file on disk (content-addressed).
    :ivar content_type: sanitised content type.
    :ivar upload_name: the file name to give, or ``None``.
    :ivar length: size in bytes.
    :ivar sha256: the content hash (what thumbnails are made from).
    :ivar server_name: the media's origin server.
    :ivar media_id: its id there.
    """

    path: str
    content_type: str
    upload_name: Optional[str]
    length: int
    sha256: str
    server_name: str
    media_id: str


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "DEFAULT_CONTENT_TYPE",
    "INLINE_CONTENT_TYPES",
    "ServableMedia",
    "base_type",
    "check_media_path",
    "clean_upload_name",
    "content_disposition",
    "file_name_from_disposition",
    "is_inline",
    "is_valid_media_id",
    "is_valid_server_name",
    "new_media_id",
    "sanitise_content_type",
]
