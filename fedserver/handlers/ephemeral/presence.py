"""Presence: local users' state (set, synced, idle, offline), remote users' from EDUs, /sync."""

# Client-Server "Presence":
# - ``online`` while the user syncs; ``unavailable`` after 5 minutes without a pro-active
#   action ("Idle timeout"); ``offline`` once no client has synced for a while.
# - ``last_active_ago`` is computed when presence is given out; ``currently_active`` is
#   true while the user was active in the last minute.
# - A pro-active action (sending an event, setting ``online``) makes the user online.
# Server-Server "Presence": m.presence EDUs carry updates of the SENDING server's users;
# we send ours to the servers that share a room with the user, and ignore entries about
# users of other servers than the sender.
#
# Outbound presence goes through the sender's in-memory path: stale presence is dropped,
# not delivered late. Remote users not heard of for 30 minutes are taken to be offline
# (their server may be gone).

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from fedserver.errors import MatrixError, bad_json, forbidden, invalid_param
from fedserver.handlers.client.sync_sections import SyncContext
from fedserver.handlers.ephemeral import server_of
from fedserver.handlers.rooms.rooms import EventFilter
from fedserver.storage.interface import StorageUnavailableError
from fedserver.storage.users.presence_store import PresenceRow
from fedserver.handlers.requester import Requester

log = Logger()

ONLINE, UNAVAILABLE, OFFLINE = "online", "unavailable", "offline"
STATES = (ONLINE, UNAVAILABLE, OFFLINE)

#: A user with no pro-active action for this long becomes unavailable.
IDLE_AFTER_MS = 5 * 60 * 1000
#: A user none of whose clients has synced for this long becomes offline.
OFFLINE_AFTER_MS = 30 * 1000
#: ``currently_active`` stays true this long after the last action; last-active times
#: closer together than this are not written again.
ACTIVE_GRANULARITY_MS = 60 * 1000
#: A remote user not updated for this long is taken to be offline.
REMOTE_TIMEOUT_MS = 30 * 60 * 1000
#: How often timeouts are checked.
CHECK_EVERY_S = 5.0
#: Longest status message kept.
MAX_STATUS_MSG = 1024
#: How long an outbound presence EDU may wait for its destination.
EDU_TTL_MS = 5 * 60 * 1000


#: Up to this many of our users online or away, a new server in a room is told of those
#: joined to it by reading their memberships one by one.
FEW_ONLINE = 20


@dataclass
class _Local:
    """In-memory bookkeeping of a local user."""

    syncing: int = 0
    last_sync_ms: int = 0


class PresenceHandler:
    """Presence of local and remote users.

    :param clock: ``seconds()``, ``callLater`` (the timeout loop).
    :param store: ``presence``, ``rooms``, events.
    :param server_name: ours.
    :param notifier: wakes /sync (``notify_room`` for the user's rooms, ``notify_user``).
    :param send_ephemeral_edu: the sender's in-memory EDU path.
    :param enabled: ``False``: presence is neither tracked, sent nor accepted (requests
        are still answered, everyone is offline).
    """

    def __init__(
        self, clock: Any, store: Any, server_name: str, notifier: Any, send_ephemeral_edu: Callable[..., Any],
        *, enabled: bool = True,
    ) -> None:
        self._clock = clock
        self._store = store
        self._server_name = server_name
        self._notifier = notifier
        self._send = send_ephemeral_edu
        self.enabled = enabled
        self._local: dict[str, _Local] = {}
        self._current: dict[str, PresenceRow] = {}  # users not offline, local and remote
        self._remote_seen: dict[str, int] = {}
        self._loop: Optional[LoopingCall] = None
        self._in_flight: set[defer.Deferred] = set()
        self._loop_done: Optional[defer.Deferred] = None
        self.section = PresenceSection(self)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _is_local(self, user_id: str) -> bool:
        return server_of(user_id) == self._server_name

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load who was not offline when the server stopped (they go offline unless they
        sync again) and start the timeout loop."""
        if not self.enabled:
            return
        now = self._now_ms()
        for row in await self._store.presence.get_users_with_state(self._server_name, (ONLINE, UNAVAILABLE)):
            self._current[row.user_id] = row
            self._local[row.user_id] = _Local(0, now)
        loop = self._loop = LoopingCall(self._check_timeouts)
        loop.clock = self._clock
        self._loop_done = loop.start(CHECK_EVERY_S, now=False)
        self._loop_done.addErrback(_log_failure, "Presence timeouts failed")

    def stop(self) -> defer.Deferred:
        """Stop the timeout loop.

        :returns: Deferred firing once a check under way is finished.
        """
        loop, self._loop = self._loop, None
        done, self._loop_done = self._loop_done, None
        if loop is not None and loop.running:
            loop.stop()
        return done if done is not None else defer.succeed(None)

    # -- local users --------------------------------------------------------------------------

    async def _get(self, user_id: str) -> Optional[PresenceRow]:
        row = self._current.get(user_id)
        if row is not None:
            return row
        found = await self._store.presence.get_presence([user_id])
        return found.get(user_id)

    async def _update(self, user_id: str, state: str, status_msg: Optional[str], last_active_ts: int) -> PresenceRow:
        """Store a change, wake the users who see it, and tell the servers that do."""
        now = self._now_ms()
        active = state == ONLINE and now - last_active_ts < ACTIVE_GRANULARITY_MS
        row = await self._store.presence.set_presence(user_id, state, status_msg, last_active_ts, active)
        if state == OFFLINE:
            self._current.pop(user_id, None)
        else:
            self._current[user_id] = row
        rooms = await self._store.presence.get_joined_rooms(user_id)
        for room_id in rooms:
            self._notifier.notify_room(room_id)
        self._notifier.notify_user(user_id)
        if self._is_local(user_id):
            hosts = await self._store.presence.get_hosts_sharing_rooms(user_id)
            hosts.discard(self._server_name)
            if hosts:
                self._send_presence(row, hosts)
        return row

    def _send_presence(self, row: PresenceRow, hosts: Any) -> None:
        self._send("m.presence", {"push": [self._edu_entry(row)]}, sorted(hosts),
                   key=("m.presence", row.user_id), ttl_ms=EDU_TTL_MS)

    def _edu_entry(self, row: PresenceRow) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "user_id": row.user_id,
            "presence": row.state,
            "last_active_ago": max(0, self._now_ms() - row.last_active_ts),
            "currently_active": self._currently_active(row),
        }
        if row.status_msg is not None:
            entry["status_msg"] = row.status_msg
        return entry

    def _currently_active(self, row: PresenceRow) -> bool:
        return row.state == ONLINE and self._now_ms() - row.last_active_ts < ACTIVE_GRANULARITY_MS

    async def set_status(self, requester: Requester, user_id: str, body: Mapping[str, Any]) -> None:
        """``PUT /presence/{userId}/status``.

        :raises MatrixError: 403 ``M_FORBIDDEN`` (another user); 400 ``M_INVALID_PARAM``
            (unknown state), ``M_BAD_JSON`` (``status_msg`` not a string).
        """
        if user_id != requester.user_id:
            raise forbidden("You cannot set the presence of another user")
        state = body.get("presence")
        if state not in STATES:
            raise invalid_param("presence", "presence must be online, unavailable or offline")
        status_msg = body.get("status_msg")
        if status_msg is not None and not isinstance(status_msg, str):
            raise bad_json("status_msg must be a string")
        if status_msg is not None and len(status_msg) > MAX_STATUS_MSG:
            raise invalid_param("status_msg", f"status_msg is at most {MAX_STATUS_MSG} characters")
        if not self.enabled:
            return
        now = self._now_ms()
        old = await self._get(user_id)
        last_active = now if state == ONLINE or old is None else old.last_active_ts
        self._local.setdefault(user_id, _Local(0, now))
        await self._update(user_id, state, status_msg or None, last_active)

    async def get_status(self, requester: Requester, user_id: str) -> dict[str, Any]:
        """``GET /presence/{userId}/status``: the user's own, or of a user who shares a
        room with them.

        :raises MatrixError: 403 ``M_FORBIDDEN`` otherwise.
        """
        if user_id != requester.user_id and not await self._store.presence.shares_room(requester.user_id, user_id):
            raise forbidden("You are not allowed to see their presence")
        row = await self._get(user_id) if self.enabled else None
        if row is None:
            return {"presence": OFFLINE}
        return self.client_content(row)

    def client_content(self, row: PresenceRow) -> dict[str, Any]:
        """The content of an ``m.presence`` event (and of ``GET .../status``)."""
        out: dict[str, Any] = {"presence": row.state, "last_active_ago": max(0, self._now_ms() - row.last_active_ts)}
        if row.state == ONLINE:
            out["currently_active"] = self._currently_active(row)
        if row.status_msg is not None:
            out["status_msg"] = row.status_msg
        return out

    def user_syncing(self, user_id: str, set_presence: Optional[str]) -> Callable[[], None]:
        """A /sync of ``user_id`` starts (``SyncHandler.on_sync``); returns what to call
        when it ends.

        ``set_presence`` (spec ``GET /sync``): ``online`` (the default) makes an offline
        user online (an unavailable one stays unavailable until active); ``unavailable``
        sets that; ``offline`` leaves presence alone and does not count as syncing.
        """
        if not self.enabled or set_presence == OFFLINE or not self._is_local(user_id):
            return _nothing
        local = self._local.setdefault(user_id, _Local(0, self._now_ms()))
        local.syncing += 1
        local.last_sync_ms = self._now_ms()
        wanted = set_presence or ONLINE
        self._spawn(self._sync_started(user_id, wanted))

        def ended() -> None:
            local.syncing = max(0, local.syncing - 1)
            local.last_sync_ms = self._now_ms()

        return ended

    async def _sync_started(self, user_id: str, wanted: str) -> None:
        row = await self._get(user_id)
        if row is None or row.state == OFFLINE:
            if wanted == ONLINE:
                await self._update(user_id, ONLINE, row.status_msg if row else None, self._now_ms())
            elif wanted == UNAVAILABLE:
                await self._update(user_id, UNAVAILABLE, row.status_msg if row else None,
                                   row.last_active_ts if row else self._now_ms())
        elif wanted == UNAVAILABLE and row.state == ONLINE:
            await self._update(user_id, UNAVAILABLE, row.status_msg, row.last_active_ts)

    def bump_active(self, user_id: str) -> None:
        """A pro-active action of a local user (an event they sent): online, active now."""
        if not self.enabled or not self._is_local(user_id):
            return
        self._local.setdefault(user_id, _Local(0, self._now_ms()))
        row = self._current.get(user_id)
        now = self._now_ms()
        if row is not None and row.state == ONLINE and now - row.last_active_ts < ACTIVE_GRANULARITY_MS:
            return
        self._spawn(self._update(user_id, ONLINE, row.status_msg if row else None, now))

    def on_persisted(self, room_id: str, taken: list) -> None:
        """``RoomPipeline.on_persisted``: our users' events are pro-active actions; a user
        of another server joining a room with our users gets their presence, and the
        servers of a room one of our users joins get that user's."""
        if not self.enabled:
            return
        for event, outcome in taken:
            if not outcome.accepted or outcome.duplicate:
                continue
            joined = (
                event.type == "m.room.member" and event.state_key == event.sender
                and event.content.get("membership") == "join"
            )
            if self._is_local(event.sender):
                self.bump_active(event.sender)
                if joined:
                    self._spawn(self._announce(room_id, event.sender))
            elif joined:
                host = server_of(event.sender)
                if host is not None:
                    self._spawn(self._introduce(room_id, host))

    async def _announce(self, room_id: str, user_id: str) -> None:
        """One of our users joined a room: the other servers in it get that user's
        presence now, not at its next change (they would show them offline until then).
        In a room joined with partial state the servers are the resident's
        ``servers_in_room``."""
        row = self._current.get(user_id)
        if row is None:
            return  # offline: nothing to tell
        hosts = set(await self._store.get_joined_hosts(room_id))
        hosts.discard(self._server_name)
        if hosts:
            self._send_presence(row, hosts)

    async def _introduce(self, room_id: str, host: str) -> None:
        online = [u for u in self._current if self._is_local(u)]
        if len(online) <= FEW_ONLINE:
            # Few of our users are online or away: their memberships are read one by one
            # rather than the room's member list (20,000 rows in a large room).
            for user_id in online:
                membership = await self._store.rooms.get_membership(room_id, user_id)
                row = self._current.get(user_id)
                if membership is not None and membership.membership == "join" and row is not None:
                    self._send_presence(row, {host})
            return
        members = await self._store.get_room_members(room_id, "join")
        for user_id in members:
            row = self._current.get(user_id)
            if row is not None and self._is_local(user_id):
                self._send_presence(row, {host})

    def _spawn(self, coro: Any) -> None:
        d = defer.ensureDeferred(coro)
        self._in_flight.add(d)
        d.addBoth(self._finished, d)
        d.addErrback(_log_failure, "Presence update failed")

    def _finished(self, result: Any, d: defer.Deferred) -> Any:
        self._in_flight.discard(d)
        return result

    def flush(self) -> defer.Deferred:
        """Fires once the updates started so far are done (tests, stopping)."""
        return defer.DeferredList(list(self._in_flight), consumeErrors=True)

    async def _check_timeouts(self) -> None:
        """One pass of the timeout loop. A failure ends the pass, never the loop: a
        storage fault quietly (the database logs it; the next pass tries again), anything
        else with its traceback."""
        try:
            await self._check_timeouts_pass()
        except StorageUnavailableError:
            return
        except Exception:  # noqa: BLE001 - the loop must go on
            log.failure("Presence timeouts failed")

    async def _check_timeouts_pass(self) -> None:
        now = self._now_ms()
        for user_id, row in list(self._current.items()):
            if self._is_local(user_id):
                local = self._local.get(user_id)
                if local is None:
                    local = self._local[user_id] = _Local(0, now)
                if local.syncing == 0 and now - local.last_sync_ms > OFFLINE_AFTER_MS:
                    await self._update(user_id, OFFLINE, row.status_msg, row.last_active_ts)
                    self._local.pop(user_id, None)
                elif row.state == ONLINE and now - row.last_active_ts > IDLE_AFTER_MS:
                    await self._update(user_id, UNAVAILABLE, row.status_msg, row.last_active_ts)
                elif row.currently_active and now - row.last_active_ts >= ACTIVE_GRANULARITY_MS:
                    await self._update(user_id, row.state, row.status_msg, row.last_active_ts)
            else:
                seen = self._remote_seen.setdefault(user_id, now)
                if now - seen > REMOTE_TIMEOUT_MS:
                    self._remote_seen.pop(user_id, None)
                    await self._update(user_id, OFFLINE, row.status_msg, row.last_active_ts)

    # -- federation ---------------------------------------------------------------------------

    async def on_edu(self, origin: str, content: dict[str, Any]) -> None:
        """An ``m.presence`` EDU: each entry of ``push`` about a user of ``origin`` who is
        in a room we know is stored; the rest is ignored."""
        if not self.enabled:
            return
        push = content.get("push")
        if not isinstance(push, list):
            return
        now = self._now_ms()
        for entry in push[:1000]:
            if not isinstance(entry, dict):
                continue
            user_id = entry.get("user_id")
            if not isinstance(user_id, str) or server_of(user_id) != origin or origin == self._server_name:
                log.info("Ignoring presence from {origin} for {user_id!r:.100}", origin=origin, user_id=user_id)
                continue
            state = entry.get("presence")
            if state not in STATES:
                continue
            ago = entry.get("last_active_ago")
            ago = ago if type(ago) is int and 0 <= ago < 2**53 else 0
            status_msg = entry.get("status_msg")
            if not isinstance(status_msg, str) or not status_msg or len(status_msg) > MAX_STATUS_MSG:
                status_msg = None
            if not await self._store.presence.get_joined_rooms(user_id):
                continue  # nobody here shares a room with them
            self._remote_seen[user_id] = now
            await self._update(user_id, state, status_msg, now - ago)


def _log_failure(failure: Any, message: str) -> None:
    """Log a background failure, except a storage fault (the database logs each episode)."""
    if not failure.check(StorageUnavailableError):
        log.failure(message, failure)


def _nothing() -> None:
    return None


class PresenceSection:
    """The presence part of /sync (key ``p``): ``m.presence`` events of the user and of
    users who share a room with them, changed since the client's position (all known on
    an initial sync), as the filter's ``presence`` part allows."""

    key = "p"

    def __init__(self, handler: PresenceHandler) -> None:
        self._handler = handler

    def current_position(self, user_id: str) -> Any:
        return self._handler._store.presence.get_max_stream_id()

    async def contribute(self, ctx: SyncContext, since: Optional[int], now: int) -> bool:
        handler = self._handler
        if not handler.enabled:
            return False
        flt = _presence_filter(ctx.filter)
        if flt is not None and not flt.allows_type("m.presence"):
            return False
        rows = await handler._store.presence.get_changes_visible_to(ctx.user_id, since, now)
        if since is None:
            rows = [r for r in rows if r.state != OFFLINE or r.user_id == ctx.user_id]
        events = []
        for row in rows:
            if flt is not None and not _sender_allowed(flt, row.user_id):
                continue
            events.append({"type": "m.presence", "sender": row.user_id, "content": handler.client_content(row)})
        if flt is not None and flt.limit is not None:
            events = events[-flt.limit:] if flt.limit else []
        if not events:
            return False
        ctx.result["presence"]["events"].extend(events)
        return True


def _presence_filter(flt: Any) -> Any:
    spec = getattr(flt, "spec", None)
    part = spec.get("presence") if isinstance(spec, Mapping) else None
    if not isinstance(part, Mapping):
        return None
    try:
        return EventFilter(part)
    except MatrixError:
        return None


def _sender_allowed(flt: Any, sender: str) -> bool:
    if flt.not_senders is not None and sender in flt.not_senders:
        return False
    return flt.senders is None or sender in flt.senders


__all__ = ["OFFLINE", "ONLINE", "PresenceHandler", "PresenceSection", "STATES", "UNAVAILABLE"]
