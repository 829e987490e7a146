"""Wakes /sync long-polls when something they wait for happens, keyed by room and user."""

from __future__ import annotations

from typing import Any, Iterable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

#: The longest a /sync may wait, in milliseconds, whatever the client asks.
MAX_TIMEOUT_MS = 120_000

#: The most long-polls waiting at once; beyond it a /sync answers at once.
MAX_WAITERS = 20_000


class _Waiter:
    __slots__ = ("keys", "deferred", "timer", "done")

    def __init__(self, keys: list[tuple[str, str]], deferred: defer.Deferred):
        self.keys = keys
        self.deferred = deferred
        self.timer: Any = None
        self.done = False


class Notifier:
    """A position that grows with every notification, and waiters keyed by room and user.

    A /sync reads :meth:`position` BEFORE reading the database, computes its answer and,
    if there is nothing new, calls :meth:`wait` with that position: a notification that
    came in between is not missed, because ``wait`` returns at once when one of its keys
    was notified after the position.

    Attach :meth:`on_persisted` to ``RoomPipeline.on_persisted``: every event taken into
    a room wakes the room's waiters, and a member event also wakes its target user (an
    invite reaches a user who is not in the room yet). Account data and other per-user
    streams call :meth:`notify_user`.

    :param clock: for timeouts (``callLater``).
    :param max_timeout_ms: upper bound on any wait.
    :param max_waiters: upper bound on waiting long-polls.
    """

    def __init__(self, clock: IReactorTime, *, max_timeout_ms: int = MAX_TIMEOUT_MS, max_waiters: int = MAX_WAITERS):
        self._clock = clock
        self._max_timeout_ms = max_timeout_ms
        self._max_waiters = max_waiters
        self._position = 0
        # key -> position of its last notification (one int per room and user notified).
        self._last: dict[tuple[str, str], int] = {}
        self._waiters: dict[tuple[str, str], set[_Waiter]] = {}
        self._count = 0

    def position(self) -> int:
        """The current notification position."""
        return self._position

    @property
    def waiting(self) -> int:
        """How many long-polls are waiting."""
        return self._count

    # -- notifying ------------------------------------------------------------------------

    def on_persisted(self, room_id: str, taken: Iterable[tuple[Any, Any]]) -> None:
        """``RoomPipeline.on_persisted`` callback: wake the room, and the users its member
        events are about."""
        users = set()
        any_event = False
        for event, _outcome in taken:
            any_event = True
            if event.type == "m.room.member" and event.state_key is not None:
                users.add(event.state_key)
        if any_event:
            self.notify(rooms=[room_id], users=users)

    def notify_room(self, room_id: str) -> None:
        """Something visible to the room's members happened."""
        self.notify(rooms=[room_id])

    def notify_user(self, user_id: str) -> None:
        """Something for this user happened (account data, an invite from elsewhere)."""
        self.notify(users=[user_id])

    def notify(self, *, rooms: Iterable[str] = (), users: Iterable[str] = ()) -> None:
        """Advance the position and wake whoever waits on one of these rooms or users."""
        self._position += 1
        pos = self._position
        keys = [("r", r) for r in rooms] + [("u", u) for u in users]
        woken: list[_Waiter] = []
        for key in keys:
            self._last[key] = pos
            waiters = self._waiters.get(key)
            if waiters:
                woken.extend(waiters)
        for w in woken:
            self._finish(w, True)

    # -- waiting --------------------------------------------------------------------------

    def wait(
        self, user_id: str, room_ids: Iterable[str], since_position: int, timeout_ms: int
    ) -> "defer.Deferred[bool]":
        """Wait until the user or one of the rooms is notified after ``since_position``,
        or the timeout passes.

        :param timeout_ms: clamped to ``[0, max_timeout_ms]``.
        :returns: Deferred firing with ``True`` if notified, ``False`` on timeout (or at
            once if too many are waiting). Cancelling it removes the waiter.
        """
        keys = [("u", user_id)] + [("r", r) for r in room_ids]
        for key in keys:
            if self._last.get(key, 0) > since_position:
                return defer.succeed(True)
        timeout_ms = max(0, min(int(timeout_ms), self._max_timeout_ms))
        if timeout_ms == 0 or self._count >= self._max_waiters:
            return defer.succeed(False)

        def cancel(d: defer.Deferred) -> None:
            self._remove(waiter)

        d: defer.Deferred = defer.Deferred(cancel)
        waiter = _Waiter(keys, d)
        for key in keys:
            self._waiters.setdefault(key, set()).add(waiter)
        self._count += 1
        waiter.timer = self._clock.callLater(timeout_ms / 1000.0, self._finish, waiter, False)
        return d

    def _remove(self, waiter: _Waiter) -> bool:
        """Unregister ``waiter``; ``False`` if it was already gone."""
        if waiter.done:
            return False
        waiter.done = True
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        for key in waiter.keys:
            s = self._waiters.get(key)
            if s is not None:
                s.discard(waiter)
                if not s:
                    del self._waiters[key]
        self._count -= 1
        return True

    def _finish(self, waiter: _Waiter, notified: bool) -> None:
        if self._remove(waiter):
            waiter.deferred.callback(notified)
