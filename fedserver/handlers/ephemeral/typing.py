"""Typing notifications: in memory with timeouts, m.typing EDUs both ways, typing in /sync."""

# Client-Server "Typing Notifications": a user types in a room for ``timeout`` ms or until
# they say they stopped; clients REPLACE their list with each m.typing event, so /sync
# sends a room's whole list whenever it changed. Server-Server "Typing Notifications":
# "Receiving servers should verify that the user is in the room, and is a user belonging
# to the sending server."
#
# Nothing is stored: after a restart nobody is typing. The stream position starts at the
# clock's milliseconds, so tokens handed out before a restart are never ahead of it.
# Outbound EDUs are kept in memory (``send_ephemeral_edu``) and dropped once stale: after
# an outage a peer is never told, late, that someone is typing.

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

from fedserver.errors import bad_json, forbidden
from fedserver.handlers.client.sync_sections import SyncContext
from fedserver.handlers.ephemeral import ephemeral_filter_allows, server_of
from fedserver.handlers.requester import Requester

log = Logger()

#: Typing timeout when the client gives none, and the most it may ask for (ms).
DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 120_000
#: How long a remote user counts as typing after an EDU saying so (they are refreshed
#: while the user types).
REMOTE_TIMEOUT_MS = 30_000
#: How long an outbound typing EDU may wait for its destination before it is dropped.
EDU_TTL_MS = 20_000


class TypingHandler:
    """Who is typing where.

    :param clock: ``seconds()`` and ``callLater`` (timeouts).
    :param store: for memberships and the joined servers of a room.
    :param server_name: ours.
    :param notifier: wakes /sync (``notify_room``).
    :param send_ephemeral_edu: ``(edu_type, content, destinations, key=, ttl_ms=)``: the
        sender's in-memory path (``FederationSender.send_ephemeral_edu``).
    """

    def __init__(
        self, clock: Any, store: Any, server_name: str, notifier: Any, send_ephemeral_edu: Callable[..., Any]
    ) -> None:
        self._clock = clock
        self._store = store
        self._server_name = server_name
        self._notifier = notifier
        self._send = send_ephemeral_edu
        self._position = int(clock.seconds() * 1000)
        #: room -> {user: expiry in ms}
        self._typing: dict[str, dict[str, int]] = {}
        #: room -> the position of its last change
        self._changed: dict[str, int] = {}
        self._timers: dict[str, Any] = {}
        self.section = TypingSection(self)

    # -- reading ----------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The typing stream position."""
        return self._position

    def typing_users(self, room_id: str) -> list[str]:
        """Who is typing in the room now, sorted."""
        now = self._now_ms()
        return sorted(u for u, expires in self._typing.get(room_id, {}).items() if expires > now)

    def changed_since(self, room_id: str, position: Optional[int]) -> bool:
        """Whether the room's list changed after ``position`` (``None``: someone is typing)."""
        if position is None:
            return bool(self.typing_users(room_id))
        return self._changed.get(room_id, 0) > position

    # -- changes ----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def set_typing(self, requester: Requester, room_id: str, user_id: str, typing: Any, timeout: Any) -> None:
        """``PUT /rooms/{roomId}/typing/{userId}``.

        :raises MatrixError: 403 ``M_FORBIDDEN`` (another user, or not joined); 400
            ``M_BAD_JSON`` (``typing`` not a boolean, ``timeout`` not a non-negative integer).
        """
        if user_id != requester.user_id:
            raise forbidden("You may only set your own typing state")
        if not isinstance(typing, bool):
            raise bad_json("typing must be a boolean")
        if timeout is None:
            timeout = DEFAULT_TIMEOUT_MS
        elif type(timeout) is not int or timeout < 0:
            raise bad_json("timeout must be a non-negative integer")
        membership = await self._store.rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            raise forbidden("You are not joined to this room")
        self._set(room_id, user_id, typing, min(timeout, MAX_TIMEOUT_MS))
        hosts = await self._store.get_joined_hosts(room_id)
        hosts.discard(self._server_name)
        if hosts:
            self._send(
                "m.typing", {"room_id": room_id, "user_id": user_id, "typing": typing}, sorted(hosts),
                key=("m.typing", room_id, user_id), ttl_ms=EDU_TTL_MS,
            )

    async def on_edu(self, origin: str, content: dict[str, Any]) -> None:
        """An ``m.typing`` EDU: ignored unless its user is of ``origin`` and joined to the
        room."""
        room_id, user_id, typing = content.get("room_id"), content.get("user_id"), content.get("typing")
        if not isinstance(room_id, str) or not isinstance(user_id, str) or not isinstance(typing, bool):
            return
        if server_of(user_id) != origin:
            log.info("Ignoring typing from {origin} for {user_id!r:.100}", origin=origin, user_id=user_id)
            return
        membership = await self._store.rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            return
        self._set(room_id, user_id, typing, REMOTE_TIMEOUT_MS)

    def _set(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> None:
        before = self.typing_users(room_id)
        users = self._typing.setdefault(room_id, {})
        if typing and timeout_ms > 0:
            users[user_id] = self._now_ms() + timeout_ms
        else:
            users.pop(user_id, None)
        if not users:
            self._typing.pop(room_id, None)
        self._schedule(room_id)
        if self.typing_users(room_id) != before:
            self._bump(room_id)

    def _bump(self, room_id: str) -> None:
        self._position = max(self._position + 1, self._now_ms())
        self._changed[room_id] = self._position
        self._notifier.notify_room(room_id)

    def _schedule(self, room_id: str) -> None:
        """One timer per room, at its earliest expiry."""
        timer = self._timers.pop(room_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        users = self._typing.get(room_id)
        if not users:
            return
        delay = max(0.0, (min(users.values()) - self._now_ms()) / 1000.0)
        self._timers[room_id] = self._clock.callLater(delay + 0.001, self._expire, room_id)

    def _expire(self, room_id: str) -> None:
        self._timers.pop(room_id, None)
        users = self._typing.get(room_id, {})
        now = self._now_ms()
        gone = [u for u, expires in users.items() if expires <= now]
        for u in gone:
            del users[u]
        if not users:
            self._typing.pop(room_id, None)
        self._schedule(room_id)
        if gone:
            self._bump(room_id)

    def stop(self) -> None:
        """Cancel the timers (server stopping)."""
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()


class TypingSection:
    """The typing part of /sync (key ``t``): an ``m.typing`` event for each joined room
    whose list changed since the client's position (on an initial sync or for rooms
    joined since, rooms where someone is typing)."""

    key = "t"

    def __init__(self, handler: TypingHandler) -> None:
        self._handler = handler

    def current_position(self, user_id: str) -> int:
        return self._handler.position

    async def contribute(self, ctx: SyncContext, since: Optional[int], now: int) -> bool:
        if not ephemeral_filter_allows(ctx.filter, "m.typing"):
            return False
        added = False
        for room_id in ctx.joined:
            start = None if since is None or room_id in ctx.newly_joined else since
            if not self._handler.changed_since(room_id, start):
                continue
            users = self._handler.typing_users(room_id)
            ctx.joined_room(room_id)["ephemeral"]["events"].append({"type": "m.typing", "content": {"user_ids": users}})
            added = True
        return added


__all__ = ["DEFAULT_TIMEOUT_MS", "MAX_TIMEOUT_MS", "TypingHandler", "TypingSection"]
