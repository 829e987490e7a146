"""Who a local user ignores (the ``m.ignored_user_list`` account data), read once and kept in memory until it changes."""

# Client-Server API, "Ignoring Users":
# - "Once ignored, the client will no longer receive events sent by that user, with the
#   exception of state events." -> ClientEventSource.filter_for_user drops the non-state
#   events of ignored senders, so /sync, /messages, /context, /event, /relations and
#   /threads all leave them out, and so do the aggregations bundled into served events
#   ("Servers must additionally ensure they do not consider child events from ignored
#   users when preparing an aggregation for the client", "Aggregations of child events").
# - "Servers must not send room invites from ignored users to clients." -> /sync.
# - "Following an update of the m.ignored_user_list, the sync API for all clients should
#   immediately start ignoring (or un-ignoring) the user": the cached list is dropped by
#   every account data write of the user (AccountDataHandler.on_changed), before the
#   write wakes their /sync. Events sent while a user was ignored are not sent later
#   ("it should not send events that were missed while the user was ignored"): the sync
#   token has moved past them.
# The spec says nothing of to-device messages, receipts, typing or presence of ignored
# users: they are delivered as usual (to-device messages carry encryption keys other
# devices rely on). Events of ignored users notify nobody who ignores them.

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from fedserver.storage.cache import LruCache

IGNORED_USER_LIST = "m.ignored_user_list"
#: Users whose lists are kept in memory (most are the one shared empty set: every local
#: member of a large room fits, so that push evaluation does not read them again per event).
CACHE_SIZE = 200_000

_NONE: frozenset[str] = frozenset()


def parse_ignored_users(content: Optional[Mapping[str, Any]]) -> frozenset[str]:
    """The user ids of an ``m.ignored_user_list`` content (``ignored_users``: a map of user
    id to an empty object). Anything malformed ignores nobody rather than failing."""
    if not isinstance(content, Mapping):
        return _NONE
    users = content.get("ignored_users")
    if not isinstance(users, Mapping):
        return _NONE
    return frozenset(u for u in users if isinstance(u, str) and u.startswith("@"))


class IgnoredUsers:
    """The ignored users of local users.

    :param store: has ``accounts`` (:class:`~fedserver.storage.users.accounts_store.AccountStore`).
    """

    def __init__(self, store: Any, *, cache_size: int = CACHE_SIZE) -> None:
        self._accounts = store.accounts if hasattr(store, "accounts") else store
        self._cache: LruCache[str, frozenset[str]] = LruCache(cache_size)
        # Bumped by every invalidation of a user, so that a read that started before a
        # write does not put the old list back into the cache after it (one small int
        # per local user whose account data changed).
        self._generation: dict[str, int] = {}

    async def get(self, user_id: str) -> frozenset[str]:
        """Whom ``user_id`` ignores (empty for users of other servers and for none)."""
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        generation = self._generation.get(user_id, 0)
        content = await self._accounts.get_account_data(user_id, None, IGNORED_USER_LIST)
        found = parse_ignored_users(content)
        if self._generation.get(user_id, 0) == generation:
            self._cache.put(user_id, found)
        return found

    async def get_many(self, user_ids: Iterable[str]) -> dict[str, frozenset[str]]:
        """:meth:`get` for many users, the ones not in memory read in one query (push
        rules are evaluated for every local member of a room on each event)."""
        wanted = list(dict.fromkeys(user_ids))
        found: dict[str, frozenset[str]] = self._cache.get_many(wanted)
        missing = [u for u in wanted if u not in found]
        if not missing:
            return found
        generations = {u: self._generation.get(u, 0) for u in missing}
        contents = await self._accounts.get_account_data_many(missing, None, IGNORED_USER_LIST)
        for user_id in missing:
            lists = parse_ignored_users(contents.get(user_id))
            found[user_id] = lists
            if self._generation.get(user_id, 0) == generations[user_id]:
                self._cache.put(user_id, lists)
        return found

    def invalidate(self, user_id: str) -> None:
        """``AccountDataHandler.on_changed``: the user's account data changed."""
        self._generation[user_id] = self._generation.get(user_id, 0) + 1
        self._cache.invalidate([user_id])


__all__ = ["IGNORED_USER_LIST", "IgnoredUsers", "parse_ignored_users"]
