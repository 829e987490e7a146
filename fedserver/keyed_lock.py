"""One lock per key (a room, an origin, a client transaction), forgotten once nobody holds or waits for it."""

from __future__ import annotations

from typing import Any, Callable, Generic, Hashable, TypeVar

from twisted.internet import defer

K = TypeVar("K", bound=Hashable)


class KeyedLock(Generic[K]):
    """Runs work one at a time per key; different keys run concurrently.

    ``run(key, work)`` calls ``work()`` (returning a value, a Deferred or a coroutine) once
    every earlier ``run`` for the same key has finished, in call order. The per-key lock
    is dropped as soon as it is free and nobody waits, so the table holds only busy keys.
    """

    def __init__(self) -> None:
        self._locks: dict[K, defer.DeferredLock] = {}

    def run(self, key: K, work: Callable[[], Any]) -> defer.Deferred:
        """:returns: a Deferred firing with ``work()``'s result (or failure)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()
        d = lock.run(lambda: defer.ensureDeferred(_as_awaitable(work)))

        def release(result: Any) -> Any:
            if not lock.locked and not lock.waiting and self._locks.get(key) is lock:
                del self._locks[key]
            return result

        return d.addBoth(release)

    def __len__(self) -> int:
        """How many keys have work running or waiting."""
        return len(self._locks)

    def __contains__(self, key: object) -> bool:
        return key in self._locks


async def _as_awaitable(work: Callable[[], Any]) -> Any:
    result = work()
    if isinstance(result, defer.Deferred) or hasattr(result, "__await__"):
        return await result
    return result
