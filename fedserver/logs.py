"""Log output: request ids carried through a request's work, text or JSON-lines formats, files with rotation.

- :data:`REQUEST_ID` is a :mod:`contextvars` variable set while a request is handled
  (:class:`fedserver.http.resource.MatrixRequest`). Twisted runs coroutines and
  ``inlineCallbacks`` in a copy of the context they started in, so every line logged on
  behalf of a request, however many database round trips later, carries its id.
- :func:`text_formatter` and :func:`json_formatter` turn twisted.logger events into one line
  each; :func:`build_observer` puts one of them on a file with the level filter.
- :class:`RotatingFile` is the file behind ``log_file`` (rotated by size, a fixed number of
  old files kept, reopened on SIGHUP for an external logrotate).
"""

from __future__ import annotations

import contextvars
import json
import os
import secrets
import string
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, TextIO

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

#: The id of the request being handled in this context (``None`` outside requests).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("fedserver_request_id", default=None)

#: Characters we accept in a request id given by a trusted proxy (``X-Request-Id``).
_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_.:")
MAX_REQUEST_ID_LENGTH = 64

LOG_FORMATS = ("text", "json")

#: Event keys that are twisted.logger's own bookkeeping, not data worth a JSON field.
_INTERNAL_KEYS = frozenset({
    "log_logger", "log_source", "log_format", "log_level", "log_namespace", "log_time",
    "log_failure", "log_io", "log_text", "log_legacy", "log_flattened", "log_trace",
    "log_system", "log_stack", "log_observer", "format", "message", "isError", "system",
    "time", "why", "failure", "stdlib_message", "request_id",
})


def new_request_id() -> str:
    """A fresh request id: 16 hex digits (random, so ids from several processes or restarts
    do not collide)."""
    return secrets.token_hex(8)


def valid_request_id(value: str) -> bool:
    """Whether ``value`` (e.g. from a proxy's ``X-Request-Id``) is safe to log and echo:
    1-64 characters of ``A-Za-z0-9-_.:``."""
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and all(c in _ID_CHARS for c in value)


def _time_iso(event: Mapping[str, Any]) -> str:
    ts = event.get("log_time")
    if not isinstance(ts, (int, float)):
        ts = time.time()
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _message(event: Mapping[str, Any]) -> str:
    text = formatEvent(dict(event))
    failure = event.get("log_failure")
    if failure is not None and "stdlib_message" not in event:
        try:
            tb = failure.getTraceback()
        except Exception:  # noqa: BLE001 - a broken failure must not break logging
            tb = repr(failure)
        text = f"{text}\n{tb}".rstrip("\n")
    return text


def _level_name(event: Mapping[str, Any]) -> str:
    level = event.get("log_level")
    return level.name if isinstance(level, type(LogLevel.info)) else "info"


def text_formatter(event: Mapping[str, Any]) -> str:
    """``2025-01-31T10:11:12.345Z [namespace#level] [request id] message``, one line per
    event (a traceback continues on the following lines)."""
    rid = event.get("request_id")
    where = f"{event.get('log_namespace', '-')}#{_level_name(event)}"
    prefix = f"{_time_iso(event)} [{where}]" + (f" [{rid}]" if rid else "")
    return f"{prefix} {_message(event)}\n"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def json_formatter(event: Mapping[str, Any]) -> str:
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``namespace``,
    ``message`` (the formatted text, with the traceback if any), ``request_id`` when the
    event belongs to a request, and the event's own fields (e.g. ``method``, ``path``,
    ``status``, ``duration_ms`` of the access log) as plain values."""
    out: dict[str, Any] = {
        "time": _time_iso(event),
        "level": _level_name(event),
        "namespace": event.get("log_namespace", "-"),
        "message": _message(event),
    }
    rid = event.get("request_id")
    if rid:
        out["request_id"] = rid
    for key, value in event.items():
        if key in _INTERNAL_KEYS or key.startswith("log_") or key in out or not isinstance(key, str):
            continue
        out[key] = _jsonable(value)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n"


@implementer(ILogObserver)
class RequestIdObserver:
    """Adds the current :data:`REQUEST_ID` to each event (as ``request_id``) and passes it
    on to ``observer``."""

    def __init__(self, observer: Any) -> None:
        self._observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        if "request_id" not in event:
            rid = REQUEST_ID.get()
            if rid is not None:
                event["request_id"] = rid
        self._observer(event)


def build_observer(out_file: TextIO, log_format: str, level: str) -> Any:
    """The observer that writes events at ``level`` or above to ``out_file`` in
    ``log_format`` (``text`` or ``json``), with request ids.

    :raises ValueError: for an unknown format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    formatter: Callable[[Mapping[str, Any]], str] = json_formatter if log_format == "json" else text_formatter
    predicate: Any = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    file_observer: Any = FileLogObserver(out_file, formatter)
    return RequestIdObserver(FilteringLogObserver(file_observer, [predicate]))


class RotatingFile:
    """The ``log_file``: rotated when it reaches ``max_bytes`` (``name.1`` is the newest
    old file), at most ``backups`` old files kept; :meth:`reopen` (on SIGHUP) starts a new
    file after an external tool such as logrotate moved the old one away.

    :param path: the log file.
    :param max_bytes: rotate at this size; 0 never rotates.
    :param backups: how many rotated files to keep.
    """

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        path = os.path.abspath(path)
        self._file = LogFile(
            os.path.basename(path), os.path.dirname(path),
            rotateLength=max_bytes if max_bytes > 0 else None,
            maxRotatedFiles=backups if backups > 0 else None,
            defaultMode=0o640,
        )

    @property
    def path(self) -> str:
        return self._file.path

    def write(self, text: str) -> None:
        self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def reopen(self) -> None:
        """Close the file and open ``path`` again (created anew if it was moved away)."""
        self._file.reopen()

    def close(self) -> None:
        self._file.close()


__all__ = [
    "LOG_FORMATS",
    "REQUEST_ID",
    "RequestIdObserver",
    "RotatingFile",
    "build_observer",
    "json_formatter",
    "new_request_id",
    "text_formatter",
    "valid_request_id",
]
