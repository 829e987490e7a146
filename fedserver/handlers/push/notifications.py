"""Push rules evaluated on every event into notifications; unread counts in /sync; ``GET /notifications``."""

# Client-Server "Push Notifications":
# - Server behaviour: "When receiving a new event homeservers process push rules for each
#   of the local users in the room (excluding the sender)". Here: every event the room
#   pipeline takes in (``on_persisted``: our users' and other servers'), for our joined
#   users and the local target of an invite.
# - "The updated notification count from a new event MUST appear in the same /sync
#   response as the event itself": the counts section waits for the evaluations started
#   so far before it counts.
# - Receiving and marking notifications as read: counts are the notifying events after the
#   user's read position, the newer of m.read and m.read.private (and, per the Receipts
#   module, their own events: "by sending an event the user has read up to it"),
#   partitioned per thread when the filter asks for ``unread_thread_notifications``.

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.errors import invalid_param
from fedserver.events.model import Event
from fedserver.handlers.client.sync_sections import SyncContext
from fedserver.handlers.ephemeral import server_of
from fedserver.handlers.push.threads import thread_of
from fedserver.handlers.rooms.client_events import transaction_scope
from fedserver.handlers.rooms.directory import current_power
from fedserver.push.evaluator import CompiledRuleset, PushContext, evaluate_compiled, is_highlight, is_notify
from fedserver.push.rules import default_rules_single_out
from fedserver.storage.interface import StorageUnavailableError
from fedserver.storage.users.push_store import MAIN, UNTHREADED, PushAction
from fedserver.handlers.requester import Requester

log = Logger()

#: User ids whose server is remembered (see ``_is_local``).
LOCAL_MEMO_SIZE = 200_000
#: Rulesets kept compiled (see ``_compiled``); emptied when full.
COMPILED_MEMO_SIZE = 1024
#: ``GET /notifications`` page size: default and most.
DEFAULT_NOTIFICATIONS_LIMIT = 20
MAX_NOTIFICATIONS_LIMIT = 100

#: Called with the ``(user_id, event, actions, room_id)`` of every event that notified a
#: local user, in a list per batch of events evaluated together (push gateway delivery).
NotifyListener = Callable[[list[tuple[str, Event, list, str]]], Any]


def _as_dict(event: Event) -> dict[str, Any]:
    """What push rule conditions read: the event's top-level keys and content."""
    out: dict[str, Any] = {
        "type": event.type,
        "sender": event.sender,
        "room_id": event.room_id,
        "event_id": event.event_id,
        "content": event.content,
    }
    if event.state_key is not None:
        out["state_key"] = event.state_key
    return out


def _display_name(member: Optional[Event]) -> Optional[str]:
    if member is None:
        return None
    name = member.content.get("displayname")
    return name if isinstance(name, str) and name else None


class NotificationsHandler:
    """Evaluates push rules for each new event and keeps what notified whom.

    :param store: ``push``, ``rooms``, events.
    :param server_name: ours.
    :param clock: timestamps.
    :param notifier: wakes /sync of users whose counts changed.
    :param rules: the :class:`~fedserver.handlers.push.rules.PushRulesHandler`.
    :param source: the :class:`~fedserver.handlers.rooms.client_events.ClientEventSource`
        (``GET /notifications`` serves events as clients see them).
    """

    def __init__(self, store: Any, server_name: str, clock: Any, notifier: Any, rules: Any, source: Any) -> None:
        self._store = store
        self._server_name = server_name
        self._local_memo: dict[str, bool] = {}
        #: ``id(ruleset) -> CompiledRuleset`` of the rulesets the rules handler hands out
        #: (cached there and never changed; the entry keeps its ruleset, so the id is not
        #: reused while it is here).
        self._compiled_memo: dict[int, CompiledRuleset] = {}
        self._clock = clock
        self._notifier = notifier
        self._rules = rules
        self._source = source
        self._pending: set[defer.Deferred] = set()
        #: called for each notification (see :data:`NotifyListener`).
        self.on_notify: list[NotifyListener] = []
        self.section = CountsSection(self)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _is_local(self, user_id: str) -> bool:
        # Called several times per event and user: a remote id is told apart by its
        # server part at once; the full grammar check of ids that look local is
        # remembered (a user id's server never changes), up to a bound.
        if type(user_id) is not str or user_id.partition(":")[2] != self._server_name:
            return False
        known = self._local_memo.get(user_id)
        if known is None:
            if len(self._local_memo) >= LOCAL_MEMO_SIZE:
                self._local_memo.clear()
            known = self._local_memo[user_id] = server_of(user_id) == self._server_name
        return known

    def _compiled(self, ruleset: Any) -> CompiledRuleset:
        compiled = self._compiled_memo.get(id(ruleset))
        if compiled is None or compiled.ruleset is not ruleset:
            if len(self._compiled_memo) >= COMPILED_MEMO_SIZE:
                self._compiled_memo.clear()
            compiled = self._compiled_memo[id(ruleset)] = CompiledRuleset(ruleset)
        return compiled

    # -- evaluation ---------------------------------------------------------------------------

    def on_persisted(self, room_id: str, taken: list) -> None:
        """``RoomPipeline.on_persisted``: evaluate the accepted events (not duplicates)."""
        accepted = [(e, outcome.event_nid) for e, outcome in taken if outcome.accepted and not outcome.duplicate]
        if not accepted:
            return
        d = defer.ensureDeferred(self._evaluate(room_id, [e for e, _ in accepted], [n for _, n in accepted]))
        self._pending.add(d)
        d.addBoth(self._finished, d)
        d.addErrback(log_unless_storage_fault, "Evaluating push rules in {room_id} failed", room_id=room_id)

    def _finished(self, result: Any, d: defer.Deferred) -> Any:
        self._pending.discard(d)
        return result

    def flush(self) -> defer.Deferred:
        """Fires once every evaluation started so far is stored."""
        return defer.DeferredList(list(self._pending), consumeErrors=True)

    async def _evaluate(self, room_id: str, events: list[Event], known_nids: Sequence[Optional[int]] = ()) -> None:
        """Evaluate the push rules of the room's local members for ``events`` (accepted,
        in order) and record the notifications. ``known_nids``: the events' stream
        positions where the caller knows them (``Outcome.event_nid``), else read."""
        member_count, candidates = await self._store.push.get_joined_members_of_server(room_id, self._server_name)
        local = {u: member_id for u, member_id in candidates if self._is_local(u)}
        nids = {e.event_id: nid for e, nid in zip(events, known_nids) if nid is not None}
        unknown = [e.event_id for e in events if e.event_id not in nids]
        if unknown:
            nids.update(await self._store.push.get_event_nids(unknown))
        power = await current_power(self._store, room_id, "", events[0].room_version)
        notification_levels = dict(power.power_levels.notifications)
        member_events: Optional[dict[str, Event]] = None
        actions_out: list[PushAction] = []
        read_marks: list[tuple[str, str, str, int]] = []
        now = self._now_ms()
        notified: list[tuple[str, Event, list]] = []
        for event in events:
            nid = nids.get(event.event_id)
            if nid is None:
                continue
            thread = await thread_of(self._store, event)
            if self._is_local(event.sender):
                read_marks.append((event.sender, room_id, thread, nid))
            targets = dict(local)
            if (
                event.type == "m.room.member" and event.state_key is not None and self._is_local(event.state_key)
                and event.content.get("membership") == "invite"
            ):
                targets.setdefault(event.state_key, "")
            targets.pop(event.sender, None)
            if not targets:
                continue
            as_dict = _as_dict(event)
            needs_names = isinstance(event.content.get("body"), str)
            if needs_names and member_events is None:
                member_events = await self._store.get_events([m for m in local.values() if m])
            sender_level = power.user_level(event.sender)
            ignorers = getattr(self._source, "ignored", None)
            # Read for all the targets at once (one query each for those not in memory).
            ignored = await ignorers.get_many(targets) if ignorers is not None else {}
            rulesets = await self._rules.get_rulesets(targets)
            # Users with the server-default rules whom they do not single out for this
            # event all get the same verdict: evaluated once, for the first of them.
            singled_out = default_rules_single_out(as_dict)
            shared: Optional[tuple[Optional[list]]] = None
            for user_id, member_id in targets.items():
                if event.sender in ignored.get(user_id, ()):
                    continue  # spec "Ignoring Users": nothing of theirs reaches the user
                ruleset = rulesets.get(user_id)
                if ruleset is None and singled_out is not None and user_id not in singled_out and shared is not None:
                    actions = shared[0]
                else:
                    name = _display_name(member_events.get(member_id)) if member_events and member_id else None
                    ctx = PushContext(user_id, name, member_count, sender_level, notification_levels)
                    actions = evaluate_compiled(self._compiled(ruleset or self._rules.default_ruleset(user_id)), as_dict, ctx)
                    if ruleset is None and singled_out is not None and user_id not in singled_out:
                        shared = (actions,)
                if not is_notify(actions):
                    continue
                assert actions is not None
                actions_out.append(
                    PushAction(user_id, room_id, nid, event.event_id, thread, is_highlight(actions), actions, now)
                )
                notified.append((user_id, event, actions))
            if event.type == "m.room.power_levels" and event.state_key == "":
                power = await current_power(self._store, room_id, "", event.room_version)
                notification_levels = dict(power.power_levels.notifications)
        if not actions_out and not read_marks:
            return
        await self._store.push.record_actions(actions_out, read_marks)
        for user_id in {a.user_id for a in actions_out} | {m[0] for m in read_marks}:
            self._notifier.notify_user(user_id)
        if notified:
            batch = [(user_id, event, actions, room_id) for user_id, event, actions in notified]
            for listener in list(self.on_notify):
                try:
                    listener(batch)
                except Exception:
                    log.failure("Notification listener failed")

    async def on_read(self, user_id: str, room_id: str, thread_id: str, event_nid: int) -> None:
        """A local user's read receipt moved (``ReceiptsHandler.on_read``)."""
        if await self._store.push.advance_read_position(user_id, room_id, thread_id or UNTHREADED, event_nid):
            self._notifier.notify_user(user_id)

    # -- GET /notifications -------------------------------------------------------------------

    async def get_notifications(
        self, requester: Requester, *, from_token: Optional[str], limit: Optional[int], only: Optional[str]
    ) -> dict[str, Any]:
        """``GET /notifications``: the user's notifications, newest first.

        :raises MatrixError: 400 ``M_INVALID_PARAM`` for a malformed ``from``.
        """
        user_id = requester.user_id
        before = None
        if from_token is not None:
            if not from_token.isascii() or not from_token.isdigit() or len(from_token) > 18:
                raise invalid_param("from", "Invalid pagination token")
            before = int(from_token)
        n = DEFAULT_NOTIFICATIONS_LIMIT if limit is None else max(1, min(limit, MAX_NOTIFICATIONS_LIMIT))
        rows = await self._store.push.get_notifications(
            user_id, before_nid=before, limit=n, only_highlight=only == "highlight"
        )
        events = await self._store.get_events([r.event_id for r in rows])
        positions = await self._store.push.get_read_positions(user_id, {r.room_id for r in rows})
        scope = transaction_scope(requester)
        ignorers = getattr(self._source, "ignored", None)
        ignored = await ignorers.get(user_id) if ignorers is not None else frozenset()
        out = []
        for r in rows:
            event = events.get(r.event_id)
            if event is None or event.sender in ignored:
                continue  # (notifications from before the user was ignored: not shown)
            served = await self._source.serialize([event], user_id=user_id, scope=scope, include_room_id=True)
            marks = positions.get(r.room_id, {})
            read_upto = max(marks.get(UNTHREADED, 0), marks.get(r.thread_id, 0))
            out.append({
                "actions": r.actions,
                "event": served[0],
                "read": r.event_nid <= read_upto,
                "room_id": r.room_id,
                "ts": r.ts,
            })
        body: dict[str, Any] = {"notifications": out}
        if len(rows) == n:
            body["next_token"] = str(rows[-1].event_nid)
        return body


def log_unless_storage_fault(failure: Any, message: str, **kw: Any) -> None:
    """Log a background failure, except a storage fault (the database logs each episode
    once; what was being written is lost, like anything else written then)."""
    if not failure.check(StorageUnavailableError):
        log.failure(message, failure, **kw)


def _thread_notifications_wanted(flt: Any) -> bool:
    spec = getattr(flt, "spec", None)
    room = spec.get("room") if isinstance(spec, Mapping) else None
    timeline = room.get("timeline") if isinstance(room, Mapping) else None
    return isinstance(timeline, Mapping) and timeline.get("unread_thread_notifications") is True


class CountsSection:
    """Unread counts in /sync (key ``n``): ``unread_notifications`` (and, when the
    filter's ``room.timeline.unread_thread_notifications`` is true, the main timeline's
    counts there and each thread's in ``unread_thread_notifications``) for every joined
    room the answer lists and every room whose counts changed since the client's position."""

    key = "n"

    def __init__(self, handler: NotificationsHandler) -> None:
        self._handler = handler

    def current_position(self, user_id: str) -> Any:
        # After the evaluations already started are stored: a count they change after the
        # position was taken would list the room again in the next /sync, with nothing new
        # in it (seen on PostgreSQL, where the evaluation's reads run beside the sync's).
        d = self._handler.flush()
        return d.addCallback(lambda _: self._handler._store.push.get_max_stream_id("notification_counts"))

    async def contribute(self, ctx: SyncContext, since: Optional[int], now: int) -> bool:
        await self._handler.flush()
        store = self._handler._store
        joined = set(ctx.joined)
        listed = set(ctx.result["rooms"]["join"]) & joined
        changed: set[str] = set()
        if since is not None:
            changed = (await store.push.get_changed_rooms(ctx.user_id, since, now)) & joined
        rooms = listed | changed
        if not rooms:
            return False
        counts = await store.push.get_unread_counts(ctx.user_id, rooms)
        threads = _thread_notifications_wanted(ctx.filter)
        for room_id in sorted(rooms):
            entry = ctx.joined_room(room_id)
            per_thread = counts.get(room_id, {})
            if threads:
                main = per_thread.get(MAIN)
                entry["unread_notifications"] = {
                    "highlight_count": main.highlights if main else 0,
                    "notification_count": main.notifications if main else 0,
                }
                others = {
                    t: {"highlight_count": c.highlights, "notification_count": c.notifications}
                    for t, c in per_thread.items() if t != MAIN
                }
                if others:
                    entry["unread_thread_notifications"] = others
                else:
                    entry.pop("unread_thread_notifications", None)
            else:
                entry["unread_notifications"] = {
                    "highlight_count": sum(c.highlights for c in per_thread.values()),
                    "notification_count": sum(c.notifications for c in per_thread.values()),
                }
        return bool(changed)


__all__ = ["CountsSection", "NotificationsHandler"]
