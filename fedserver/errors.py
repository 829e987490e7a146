"""Matrix error responses: the MatrixError exception, the spec's error codes and helpers."""

from __future__ import annotations

from typing import Any

# Error codes from the spec ("API standards" / "Standard error response" in
# content/client-server-api.md, and the server-server API's per-endpoint errors).
M_FORBIDDEN = "M_FORBIDDEN"
M_UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
M_MISSING_TOKEN = "M_MISSING_TOKEN"
M_UNAUTHORIZED = "M_UNAUTHORIZED"
M_BAD_JSON = "M_BAD_JSON"
M_NOT_JSON = "M_NOT_JSON"
M_NOT_FOUND = "M_NOT_FOUND"
M_LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
M_UNRECOGNIZED = "M_UNRECOGNIZED"
M_UNKNOWN = "M_UNKNOWN"
M_TOO_LARGE = "M_TOO_LARGE"
M_MISSING_PARAM = "M_MISSING_PARAM"
M_INVALID_PARAM = "M_INVALID_PARAM"
M_INCOMPATIBLE_ROOM_VERSION = "M_INCOMPATIBLE_ROOM_VERSION"
M_UNSUPPORTED_ROOM_VERSION = "M_UNSUPPORTED_ROOM_VERSION"
M_USER_IN_USE = "M_USER_IN_USE"
M_INVALID_USERNAME = "M_INVALID_USERNAME"
M_ROOM_IN_USE = "M_ROOM_IN_USE"
M_USER_DEACTIVATED = "M_USER_DEACTIVATED"
M_GUEST_ACCESS_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"
M_EXCLUSIVE = "M_EXCLUSIVE"


class MatrixError(Exception):
    """An error to answer with the spec's JSON error body and an HTTP status.

    Raise it from any handler; the HTTP layer renders
    ``{"errcode": errcode, "error": error, **extra}`` with status ``code``.

    :param code: HTTP status code.
    :param errcode: Matrix error code, e.g. :data:`M_FORBIDDEN`.
    :param error: human-readable message (never a traceback).
    :param extra: further top-level fields of the error body, e.g. ``room_version`` for
        :data:`M_INCOMPATIBLE_ROOM_VERSION` or ``retry_after_ms`` for
        :data:`M_LIMIT_EXCEEDED`.
    """

    def __init__(self, code: int, errcode: str, error: str, **extra: Any) -> None:
        super().__init__(f"{code} {errcode}: {error}")
        self.code = code
        self.errcode = errcode
        self.error = error
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        """:returns: the error body as a JSON-ready dict."""
        body = dict(self.extra)
        body["errcode"] = self.errcode
        body["error"] = self.error
        return body

    def __repr__(self) -> str:
        return f"MatrixError({self.code}, {self.errcode!r}, {self.error!r})"


def unrecognized(error: str = "Unrecognized request", *, method_not_allowed: bool = False) -> MatrixError:
    """Unknown endpoint (404) or known endpoint with the wrong method (405)."""
    return MatrixError(405 if method_not_allowed else 404, M_UNRECOGNIZED, error)


def not_json(error: str = "Content not JSON") -> MatrixError:
    """400 M_NOT_JSON: the body could not be parsed as JSON."""
    return MatrixError(400, M_NOT_JSON, error)


def bad_json(error: str) -> MatrixError:
    """400 M_BAD_JSON: the body is JSON but not of the required shape."""
    return MatrixError(400, M_BAD_JSON, error)


def too_large(error: str = "Request body too large") -> MatrixError:
    """413 M_TOO_LARGE."""
    return MatrixError(413, M_TOO_LARGE, error)


def unauthorized(error: str) -> MatrixError:
    """401 M_UNAUTHORIZED: missing or invalid (federation) authentication."""
    return MatrixError(401, M_UNAUTHORIZED, error)


def forbidden(error: str) -> MatrixError:
    """403 M_FORBIDDEN."""
    return MatrixError(403, M_FORBIDDEN, error)


def not_found(error: str = "Not found") -> MatrixError:
    """404 M_NOT_FOUND."""
    return MatrixError(404, M_NOT_FOUND, error)


def limit_exceeded(retry_after_ms: int | None = None, error: str = "Too many requests") -> MatrixError:
    """429 M_LIMIT_EXCEEDED, with ``retry_after_ms`` when known."""
    if retry_after_ms is None:
        return MatrixError(429, M_LIMIT_EXCEEDED, error)
    return MatrixError(429, M_LIMIT_EXCEEDED, error, retry_after_ms=int(retry_after_ms))


def incompatible_room_version(room_version: str, error: str | None = None) -> MatrixError:
    """400 M_INCOMPATIBLE_ROOM_VERSION carrying the room's version (make_join, invite)."""
    return MatrixError(
        400,
        M_INCOMPATIBLE_ROOM_VERSION,
        error or f"Your homeserver does not support the features required to join this room (version {room_version})",
        room_version=room_version,
    )


def unsupported_room_version(error: str = "Unsupported room version") -> MatrixError:
    """400 M_UNSUPPORTED_ROOM_VERSION."""
    return MatrixError(400, M_UNSUPPORTED_ROOM_VERSION, error)


def missing_param(name: str) -> MatrixError:
    """400 M_MISSING_PARAM naming the parameter."""
    return MatrixError(400, M_MISSING_PARAM, f"Missing parameter: {name}")


def invalid_param(name: str, error: str | None = None) -> MatrixError:
    """400 M_INVALID_PARAM naming the parameter."""
    return MatrixError(400, M_INVALID_PARAM, error or f"Invalid parameter: {name}")


def unknown(error: str = "Internal server error", code: int = 500) -> MatrixError:
    """M_UNKNOWN (500 unless told otherwise)."""
    return MatrixError(code, M_UNKNOWN, error)


def storage_unavailable(kind: str) -> MatrixError:
    """503 M_UNKNOWN: the server's database cannot do its work right now (disk full,
    read-only, I/O error, locked, stopping); nothing was committed; try again later.

    :param kind: the fault's kind (see ``fedserver.storage.interface.StorageUnavailableError``).
    """
    what = {
        "full": "its disk is full",
        "read-only": "it is read-only",
        "io": "of an I/O error",
        "locked": "it is busy (a lock held elsewhere, a conflict or a cancelled statement)",
        "corrupt": "it is damaged",
        "closed": "the server is stopping",
    }.get(kind, "it is unavailable")
    return MatrixError(503, M_UNKNOWN, f"The server cannot use its database right now because {what}; nothing was stored, try again later")
