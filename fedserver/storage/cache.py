"""A bounded, thread-safe least-recently-used cache weighted by value size."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class LruCache(Generic[K, V]):
    """A least-recently-used map holding at most ``max_weight`` units of values.

    Each value weighs ``weigher(value)`` (1 by default), so a cache of state maps can be
    bounded by the number of entries they hold rather than by the number of maps. Every
    method takes a lock: storage fills the cache from its database thread while the
    reactor thread reads it.

    :param max_weight: the total weight kept; the least recently used values are dropped
        beyond it. A single value heavier than this is not cached at all.
    :param weigher: the weight of one value.
    """

    def __init__(self, max_weight: int, weigher: Callable[[V], int] | None = None):
        if max_weight < 0:
            raise ValueError("max_weight must not be negative")
        self._max_weight = max_weight
        self._weigher = weigher
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value for ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            item = self._data.get(key, _MISSING)
            if item is _MISSING:
                return default
            self._data.move_to_end(key)
            return item[0]

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """The cached values among ``keys``; missing keys are left out."""
        found: dict[K, V] = {}
        with self._lock:
            data = self._data
            for key in keys:
                item = data.get(key, _MISSING)
                if item is not _MISSING:
                    data.move_to_end(key)
                    found[key] = item[0]
        return found

    def put(self, key: K, value: V, weight: int | None = None) -> None:
        """Store ``value`` under ``key``, dropping the least recently used beyond the bound.

        :param weight: the value's weight when the caller knows it (e.g. the size of the
            text it was decoded from); by default the weigher's."""
        if weight is None:
            weight = 1 if self._weigher is None else self._weigher(value)
        with self._lock:
            old = self._data.pop(key, _MISSING)
            if old is not _MISSING:
                self._weight -= old[1]
            if weight > self._max_weight:
                return
            self._data[key] = (value, weight)
            self._weight += weight
            while self._weight > self._max_weight:
                _, (_, w) = self._data.popitem(last=False)
                self._weight -= w

    def invalidate(self, keys: Iterable[K]) -> None:
        """Forget ``keys``."""
        with self._lock:
            for key in keys:
                old = self._data.pop(key, _MISSING)
                if old is not _MISSING:
                    self._weight -= old[1]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._data.clear()
            self._weight = 0

    @property
    def weight(self) -> int:
        """The total weight currently held."""
        return self._weight

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data
