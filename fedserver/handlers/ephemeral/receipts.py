"""Read receipts and the fully read marker: client requests, m.receipt EDUs both ways, /sync."""

# Client-Server "Receipts" and "Read and unread markers"; Server-Server "Receipts".
# - m.read is shared with the room (and its servers, as an m.receipt EDU); m.read.private
#   is seen only by its user and never federated ("MUST NOT appear in this federated
#   m.receipt EDU"); m.fully_read is room account data, never a receipt.
# - A receipt is "up to" an event; one per (user, type, thread). A receipt that would move
#   a user's receipt of that type and thread backwards is ignored.
# - Every m.read / m.read.private of a local user moves their read position, which the
#   unread counts follow (listeners in ``on_read``).

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping, Optional

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.errors import bad_json, forbidden, invalid_param, not_found
from fedserver.handlers.client.sync_sections import SyncContext
from fedserver.handlers.ephemeral import ephemeral_filter_allows, server_of
from fedserver.handlers.push.threads import thread_of
from fedserver.storage.interface import StorageUnavailableError
from fedserver.storage.users.receipts_store import PRIVATE_READ, Receipt
from fedserver.handlers.requester import Requester

log = Logger()

READ = "m.read"
FULLY_READ = "m.fully_read"
#: Receipt types clients may send (``POST /receipt/{receiptType}/{eventId}``).
CLIENT_RECEIPT_TYPES = frozenset({READ, PRIVATE_READ, FULLY_READ})
#: Longest thread id accepted.
MAX_THREAD_ID = 255
#: Most receipts of one m.receipt EDU looked at (the rest is ignored).
MAX_EDU_RECEIPTS = 1000

#: ``(user_id, room_id, thread_id or "", event_nid)``, called when a local user's read
#: receipt moves.
ReadListener = Callable[[str, str, str, int], Any]


class ReceiptsHandler:
    """Receipts of local users (client API) and of remote users (EDUs).

    :param store: the store (``rooms``, ``receipts``, ``accounts``, events).
    :param server_name: ours.
    :param clock: ``seconds()`` for receipt timestamps.
    :param notifier: wakes /sync (``notify_room``, ``notify_user``).
    :param send_edu: ``async (edu_type, content, destinations) -> None``: the persisted
        outbound queue (receipts are state worth delivering late).
    """

    def __init__(self, store: Any, server_name: str, clock: Any, notifier: Any, send_edu: Callable[..., Any]) -> None:
        self._store = store
        self._server_name = server_name
        self._clock = clock
        self._notifier = notifier
        self._send_edu = send_edu
        #: called with ``(user_id, room_id, thread_id, event_nid)`` when a local user's
        #: m.read or m.read.private receipt moves (the push area keeps unread counts).
        self.on_read: list[ReadListener] = []
        self.section = ReceiptsSection(store)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def _check_joined(self, user_id: str, room_id: str) -> None:
        membership = await self._store.rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            raise forbidden("You are not joined to this room")

    # -- client API -------------------------------------------------------------------------

    async def post_receipt(
        self, requester: Requester, room_id: str, receipt_type: str, event_id: str, body: Mapping[str, Any]
    ) -> None:
        """``POST /rooms/{roomId}/receipt/{receiptType}/{eventId}``.

        :raises MatrixError: 400 ``M_INVALID_PARAM`` (unknown type; ``thread_id`` not a
            non-empty string, given with ``m.fully_read``, or not the event's thread); 403
            ``M_FORBIDDEN`` (not joined); 404 ``M_NOT_FOUND`` (no such event in the room).
        """
        if receipt_type not in CLIENT_RECEIPT_TYPES:
            raise invalid_param("receiptType", f"Unknown receipt type {receipt_type[:50]!r}")
        thread_id = body.get("thread_id")
        if thread_id is not None:
            if not isinstance(thread_id, str) or not thread_id or len(thread_id) > MAX_THREAD_ID:
                raise invalid_param("thread_id", "thread_id field must be a non-empty string")
            if receipt_type == FULLY_READ:
                raise invalid_param("thread_id", f"thread_id is not compatible with {FULLY_READ}")
        user_id = requester.user_id
        await self._check_joined(user_id, room_id)
        event = await self._store.get_event(event_id, allow_rejected=False)
        if event is None or event.room_id != room_id:
            raise not_found("Event not found")
        if receipt_type == FULLY_READ:
            await self.set_fully_read(user_id, room_id, event_id)
            return
        if thread_id is not None and thread_id != event_id:
            actual = await thread_of(self._store, event)
            if actual != thread_id:
                raise invalid_param("thread_id", "The event is not in this thread")
        await self._store_local(room_id, receipt_type, user_id, thread_id, event_id)

    async def set_read_markers(self, requester: Requester, room_id: str, body: Mapping[str, Any]) -> None:
        """``POST /rooms/{roomId}/read_markers``: the fully read marker and, optionally,
        the read receipts, each as its own endpoint would set it.

        :raises MatrixError: 400 ``M_BAD_JSON`` for a value that is not a string; else as
            :meth:`post_receipt`.
        """
        wanted = {}
        for key in (FULLY_READ, READ, PRIVATE_READ):
            value = body.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise bad_json(f"{key} must be an event id")
            wanted[key] = value
        if not wanted:
            await self._check_joined(requester.user_id, room_id)
        for key, event_id in wanted.items():
            await self.post_receipt(requester, room_id, key, event_id, {})

    async def set_fully_read(self, user_id: str, room_id: str, event_id: str) -> None:
        """Move the user's ``m.fully_read`` room account data (the client cannot write it
        directly) and wake their /sync."""
        await self._store.accounts.set_account_data(user_id, room_id, FULLY_READ, {"event_id": event_id})
        self._notifier.notify_user(user_id)

    async def _store_local(
        self, room_id: str, receipt_type: str, user_id: str, thread_id: Optional[str], event_id: str
    ) -> None:
        data: dict[str, Any] = {"ts": self._now_ms()}
        if thread_id is not None:
            data["thread_id"] = thread_id
        stored = await self._store.receipts.add_receipt(room_id, receipt_type, user_id, thread_id or "", event_id, data)
        if stored is None:
            return
        if receipt_type == PRIVATE_READ:
            self._notifier.notify_user(user_id)
        else:
            self._notifier.notify_room(room_id)
            hosts = await self._store.get_joined_hosts(room_id)
            hosts.discard(self._server_name)
            if hosts:
                content = {room_id: {READ: {user_id: {"event_ids": [event_id], "data": data}}}}
                await self._send_edu("m.receipt", content, sorted(hosts))
        if stored.event_nid is not None:
            for listener in list(self.on_read):
                try:
                    await defer.maybeDeferred(listener, user_id, room_id, thread_id or "", stored.event_nid)
                except StorageUnavailableError:
                    pass  # the database logs each episode
                except Exception:
                    log.failure("Read receipt listener failed")

    # -- federation ---------------------------------------------------------------------------

    async def on_edu(self, origin: str, content: dict[str, Any]) -> None:
        """An ``m.receipt`` EDU from ``origin``: ``{room_id: {"m.read": {user_id: {event_ids,
        data}}}}``. Receipts of users of other servers than ``origin``, of users not
        joined to the room, of other types, or malformed, are ignored; the rest are
        stored as deltas (what the EDU does not list is left alone)."""
        rooms_touched = set()
        budget = MAX_EDU_RECEIPTS
        for room_id, by_type in content.items():
            if not isinstance(room_id, str) or not room_id.startswith("!") or not isinstance(by_type, dict):
                continue
            users = by_type.get(READ)
            if not isinstance(users, dict):
                continue
            for user_id, receipt in users.items():
                budget -= 1
                if budget < 0:
                    break
                if server_of(user_id) != origin:
                    log.info("Ignoring a receipt from {origin} for {user_id!r:.100}", origin=origin, user_id=user_id)
                    continue
                parsed = _parse_edu_receipt(receipt)
                if parsed is None:
                    continue
                event_id, data = parsed
                membership = await self._store.rooms.get_membership(room_id, user_id)
                if membership is None or membership.membership != "join":
                    continue
                thread = data.get("thread_id", "")
                stored = await self._store.receipts.add_receipt(room_id, READ, user_id, thread, event_id, data)
                if stored is not None:
                    rooms_touched.add(room_id)
        for room_id in rooms_touched:
            self._notifier.notify_room(room_id)


def _parse_edu_receipt(receipt: Any) -> Optional[tuple[str, dict[str, Any]]]:
    """``(event_id, data)`` of one user's receipt in an EDU, keeping only ``ts`` and
    ``thread_id``; ``None`` if malformed."""
    if not isinstance(receipt, dict):
        return None
    event_ids = receipt.get("event_ids")
    if not isinstance(event_ids, list) or not event_ids or not isinstance(event_ids[0], str):
        return None
    event_id = event_ids[0]
    if not event_id.startswith("$") or len(event_id) > 255:
        return None
    raw = receipt.get("data")
    data: dict[str, Any] = {}
    if isinstance(raw, dict):
        ts = raw.get("ts")
        if type(ts) is int and 0 <= ts < 2**53:
            data["ts"] = ts
        thread = raw.get("thread_id")
        if isinstance(thread, str) and thread and len(thread) <= MAX_THREAD_ID:
            data["thread_id"] = thread
    data.setdefault("ts", 0)
    return event_id, data


class ReceiptsSection:
    """The receipts part of /sync (key ``r``): per joined room, one ``m.receipt`` event
    with the receipts that changed since the client's position (all of them for rooms
    joined since, or on an initial sync), the viewer's private ones included."""

    key = "r"

    def __init__(self, store: Any) -> None:
        self._store = store

    def current_position(self, user_id: str) -> defer.Deferred:
        return self._store.receipts.get_max_stream_id()

    async def contribute(self, ctx: SyncContext, since: Optional[int], now: int) -> bool:
        if not ctx.joined or not ephemeral_filter_allows(ctx.filter, "m.receipt"):
            return False
        fresh = [r for r in ctx.joined if since is None or r in ctx.newly_joined]
        rest = [r for r in ctx.joined if since is not None and r not in ctx.newly_joined]
        receipts: list[Receipt] = []
        if fresh:
            receipts += await self._store.receipts.get_receipts(fresh, since=None, upto=now, viewer=ctx.user_id)
        if rest:
            receipts += await self._store.receipts.get_receipts(rest, since=since, upto=now, viewer=ctx.user_id)
        if not receipts:
            return False
        by_room: dict[str, dict[str, dict[str, dict[str, Any]]]] = defaultdict(dict)
        for r in receipts:
            content = by_room[r.room_id]
            content.setdefault(r.event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = dict(r.data)
        for room_id, content in by_room.items():
            ctx.joined_room(room_id)["ephemeral"]["events"].append({"type": "m.receipt", "content": content})
        return True


__all__ = ["CLIENT_RECEIPT_TYPES", "FULLY_READ", "READ", "ReceiptsHandler", "ReceiptsSection"]
