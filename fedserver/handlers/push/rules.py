"""A user's push rules: reading and changing them (``/pushrules``), and ``m.push_rules`` in /sync."""

# Client-Server "Push Rules: API" and "Push Rules: Events": "When a user changes their
# push rules a m.push_rules event is sent to all clients in the account_data section of
# their next /sync request. The content of the event is the current push rules for the
# user." We also send it on every initial sync, so a client never starts without them.

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping, Optional

from twisted.internet import defer

from fedserver.errors import MatrixError, not_found
from fedserver.storage.cache import LruCache
from fedserver.handlers.client.sync_sections import SyncContext
from fedserver.push.rules import (
    RuleError,
    UserRules,
    build_ruleset,
    check_kind,
    copy_room_rules,
    delete_rule,
    find_rule,
    put_rule,
    set_rule_attribute,
)

#: Users whose rulesets are kept in memory.
CACHE_SIZE = 10_000
#: Users known to have the server-default rules (a flag each).
UNCHANGED_CACHE_SIZE = 200_000


def _matrix_error(e: RuleError) -> MatrixError:
    return MatrixError(e.status, e.errcode, e.message)


class PushRulesHandler:
    """Push rules of local users, with their built rulesets cached.

    :param store: ``store.push``.
    :param notifier: wakes the user's /sync when their rules change.
    """

    def __init__(self, store: Any, notifier: Any) -> None:
        self._store = store
        self._notifier = notifier
        self._cache: "OrderedDict[str, dict[str, list[dict[str, Any]]]]" = OrderedDict()
        #: users known to have changed nothing (their ruleset is the server default's):
        #: a small entry each, so every local member of a large room fits.
        self._unchanged: LruCache[str, bool] = LruCache(UNCHANGED_CACHE_SIZE)
        #: bumped by every change, so that a read that started before one does not cache
        #: what it read.
        self._changes = 0
        self._locks: dict[str, defer.DeferredLock] = {}
        self.section = PushRulesSection(self)

    async def _user_rules(self, user_id: str) -> UserRules:
        return UserRules.from_json(await self._store.push.get_user_rules(user_id))

    async def get_ruleset(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """The user's full ruleset ``{kind: [rule]}`` (shared; do not change it)."""
        cached = self._cache.get(user_id)
        if cached is not None:
            self._cache.move_to_end(user_id)
            return cached
        ruleset = build_ruleset(user_id, await self._user_rules(user_id))
        self._cache[user_id] = ruleset
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return ruleset

    async def get_rulesets(self, user_ids: Iterable[str]) -> dict[str, Optional[dict[str, list[dict[str, Any]]]]]:
        """The rulesets of many users (push rules are evaluated for every local member of a
        room on each event), the ones not in memory read in one query: ``{user_id:
        ruleset}``, with ``None`` for a user who changed nothing (their ruleset is
        ``build_ruleset(user_id, UserRules())``, the server-default rules)."""
        out: dict[str, Optional[dict[str, list[dict[str, Any]]]]] = {}
        missing: list[str] = []
        for user_id in dict.fromkeys(user_ids):
            if self._unchanged.get(user_id):
                out[user_id] = None
                continue
            cached = self._cache.get(user_id)
            if cached is not None:
                self._cache.move_to_end(user_id)
                out[user_id] = cached
            else:
                missing.append(user_id)
        if not missing:
            return out
        changes = self._changes
        stored = await self._store.push.get_user_rules_many(missing)
        keep = changes == self._changes
        for user_id in missing:
            rules = UserRules.from_json(stored.get(user_id))
            if not rules.own and not rules.defaults:
                out[user_id] = None
                if keep:
                    self._unchanged.put(user_id, True)
                continue
            ruleset = out[user_id] = build_ruleset(user_id, rules)
            if keep:
                self._cache[user_id] = ruleset
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return out

    def default_ruleset(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """The ruleset of a user who changed nothing (``None`` from :meth:`get_rulesets`):
        the server-default rules, built once while the user is in memory."""
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        ruleset = build_ruleset(user_id, UserRules())
        if self._unchanged.get(user_id):
            self._cache[user_id] = ruleset
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return ruleset

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> dict[str, Any]:
        """One rule (``GET /pushrules/global/{kind}/{ruleId}``).

        :raises MatrixError: 400 for an unknown kind, 404 ``M_NOT_FOUND`` for an unknown rule.
        """
        try:
            check_kind(kind)
        except RuleError as e:
            raise _matrix_error(e) from None
        rule = find_rule(await self.get_ruleset(user_id), kind, rule_id)
        if rule is None:
            raise not_found("Push rule not found")
        return rule

    async def _change(self, user_id: str, change: Callable[[UserRules], Optional[UserRules]]) -> None:
        """Apply ``change`` to the user's rules (one change at a time per user); a
        ``change`` returning ``None`` changes nothing."""
        lock = self._locks.setdefault(user_id, defer.DeferredLock())
        await lock.acquire()
        try:
            try:
                new = change(await self._user_rules(user_id))
            except RuleError as e:
                raise _matrix_error(e) from None
            if new is None:
                return
            await self._store.push.set_user_rules(user_id, new.to_json())
            self._changes += 1
            self._cache.pop(user_id, None)
            self._unchanged.invalidate([user_id])
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user_id, None)
        self._notifier.notify_user(user_id)

    async def put_rule(
        self, user_id: str, kind: str, rule_id: str, body: Mapping[str, Any], *,
        before: Optional[str] = None, after: Optional[str] = None,
    ) -> None:
        """``PUT /pushrules/global/{kind}/{ruleId}`` (see :func:`fedserver.push.rules.put_rule`)."""
        await self._change(user_id, lambda ur: put_rule(ur, user_id, kind, rule_id, body, before=before, after=after))

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        """``DELETE /pushrules/global/{kind}/{ruleId}``."""
        await self._change(user_id, lambda ur: delete_rule(ur, kind, rule_id))

    async def copy_room_rules(self, user_id: str, old_room: str, new_room: str) -> None:
        """A room upgrade followed: the user's rules for ``old_room`` apply to ``new_room``
        too (see :func:`fedserver.push.rules.copy_room_rules`)."""
        await self._change(user_id, lambda ur: copy_room_rules(ur, old_room, new_room))

    async def set_attribute(self, user_id: str, kind: str, rule_id: str, attr: str, value: Any) -> None:
        """``PUT .../enabled`` or ``PUT .../actions``."""
        await self._change(user_id, lambda ur: set_rule_attribute(ur, user_id, kind, rule_id, attr, value))


class PushRulesSection:
    """``m.push_rules`` in the global account data of /sync (key ``pr``): on an initial
    sync, and when the user's rules changed since the client's position."""

    key = "pr"

    def __init__(self, handler: PushRulesHandler) -> None:
        self._handler = handler

    def current_position(self, user_id: str) -> Any:
        return self._handler._store.push.get_max_stream_id("push_rules")

    async def contribute(self, ctx: SyncContext, since: Optional[int], now: int) -> bool:
        if not ctx.filter.account_data.allows_type("m.push_rules"):
            return False
        if since is not None:
            changed = await self._handler._store.push.get_rules_stream_id(ctx.user_id)
            if not since < changed <= now:
                return False
        ruleset = await self._handler.get_ruleset(ctx.user_id)
        events = ctx.result["account_data"]["events"]
        events[:] = [e for e in events if e.get("type") != "m.push_rules"]
        events.append({"type": "m.push_rules", "content": {"global": ruleset}})
        return since is not None


__all__ = ["PushRulesHandler", "PushRulesSection"]
