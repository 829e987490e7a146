"""Background work (loops, catch-ups, listeners): failures logged, but quietly through database outages, which the database logs once per episode."""

# When the database is unavailable (full disk, read-only file, I/O errors, a lock held too
# long), every query fails with StorageUnavailableError and the database itself logs one
# line when the episode starts, a reminder while it lasts and one when it ends
# (fedserver.storage.database). A background task that meets it logs nothing more (no
# traceback: nothing is wrong with the code) and tries again later; any other failure is
# a bug and is logged with its traceback.

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from fedserver.storage.interface import StorageUnavailableError

log = Logger()

#: How long a background task waits before trying again after a storage fault.
STORAGE_RETRY_S = 10.0


def is_storage_fault(failure: Any) -> bool:
    """Whether ``failure`` (a :class:`Failure` or an exception) is a database outage."""
    if isinstance(failure, Failure):
        return failure.check(StorageUnavailableError) is not None
    return isinstance(failure, StorageUnavailableError)


def log_background_failure(failure: Failure, message: str, *, logger: Logger | None = None, **kw: Any) -> None:
    """An errback for background work: log ``failure`` with ``message`` (a log format,
    with ``kw``), except a storage fault or a cancellation (a stop). Returns ``None`` (the
    failure is handled)."""
    if failure.check(StorageUnavailableError, CancelledError):
        return None
    (logger or log).failure(message, failure, **kw)
    return None


__all__ = ["STORAGE_RETRY_S", "is_storage_fault", "log_background_failure"]
