"""``POST /user_directory/search``: local users, and remote users who share a room with the searcher."""

# Client-Server "User directory": the server "MUST at a minimum consider the users the
# requesting user shares a room with and those who reside in public rooms (known to the
# homeserver). The search MUST consider local users to the homeserver". Here: every local
# user (by profile), and every user joined to a room the searcher is joined to or to a
# room in our public room directory (by their member event in that room). The search is
# case-insensitive on user ids and display names: every word of the term must occur in
# one of them. Results: exact and prefix matches first, then users with a display name,
# then by user id; ``limited`` says whether the limit cut the list.

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.background import STORAGE_RETRY_S, log_background_failure
from fedserver.errors import bad_json, invalid_param, missing_param
from fedserver.storage.interface import StorageUnavailableError
from fedserver.storage.users.user_directory_store import DirectoryEntry
from fedserver.handlers.requester import Requester

log = Logger()

#: Results when the client gives no limit, and the most it may ask for.
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
#: Longest search term, and most words in it.
MAX_TERM_LENGTH = 256
MAX_WORDS = 8
#: Candidates read from each source before ranking.
CANDIDATES = 500


class UserDirectoryHandler:
    """Searches users.

    :param store: ``user_directory`` (and the users/profile tables it reads).
    :param server_name: ours: users of this server are found by their profile.
    :param clock: ``callLater``: indexing cut short by a storage fault is tried again
        after :data:`~fedserver.background.STORAGE_RETRY_S` (``None``: at the next
        member event).
    """

    def __init__(self, store: Any, server_name: str, clock: Any = None) -> None:
        self._store = store
        self._server_name = server_name
        self._clock = clock
        self._running: Any = None
        self._again = False
        self._retry: Any = None

    def on_persisted(self, room_id: str, taken: list) -> None:
        """``RoomPipeline.on_persisted``: member events bring the directory up to date."""
        if any(e.type == "m.room.member" for e, _ in taken):
            self.index()

    def on_full_state(self, room_id: str) -> None:
        """``RoomPipeline.on_full_state``: a partial-state room got its members (stored
        before they entered its current state, so the indexer saw them as not joined)."""
        d = self._store.user_directory.refresh_room(room_id)
        d.addErrback(log_background_failure, "Indexing the members of {room_id} failed", logger=log, room_id=room_id)

    def index(self) -> None:
        """Catch the directory up with the stored member events (errors are logged). One
        run at a time; a call during a run makes it run once more."""
        if self._running is not None:
            self._again = True
            return
        self._again = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        d = self._running = self._store.user_directory.index()
        d.addErrback(self._index_failed)

        def done(_: Any) -> None:
            self._running = None
            if self._again:
                self.index()

        d.addCallback(done)

    def _index_failed(self, failure: Any) -> None:
        if failure.check(StorageUnavailableError):
            # The database logs the episode; the index position did not move: try again.
            if self._clock is not None:
                self._retry = self._clock.callLater(STORAGE_RETRY_S, self.index)
            return
        log.failure("Indexing the user directory failed", failure)

    def stop(self) -> None:
        """No more retries (the server is stopping)."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._clock = None

    def flush(self) -> defer.Deferred:
        """Fires once the indexing under way (and any run it queued) is finished."""
        if self._running is None:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()

        def finished(result: Any) -> Any:
            d.callback(None)
            return result

        self._running.addBoth(finished)
        return d.addCallback(lambda _: self.flush())

    async def search(self, requester: Requester, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /user_directory/search``.

        :raises MatrixError: 400 ``M_MISSING_PARAM`` (no ``search_term``), ``M_BAD_JSON``
            (wrong types), ``M_INVALID_PARAM`` (term too long).
        """
        if "search_term" not in body:
            raise missing_param("search_term")
        term = body["search_term"]
        if not isinstance(term, str):
            raise bad_json("search_term must be a string")
        if len(term) > MAX_TERM_LENGTH:
            raise invalid_param("search_term", f"search_term is at most {MAX_TERM_LENGTH} characters")
        limit = body.get("limit", DEFAULT_LIMIT)
        if type(limit) is not int or limit < 0:
            raise bad_json("limit must be a non-negative integer")
        limit = min(limit, MAX_LIMIT)
        words = term.casefold().split()[:MAX_WORDS]
        if not words or limit == 0:
            return {"results": [], "limited": False}
        local, in_rooms = await self._store.user_directory.search(requester.user_id, words, self._server_name, CANDIDATES)
        found: dict[str, DirectoryEntry] = {e.user_id: e for e in local}
        for e in in_rooms:
            if e.user_id in found:
                continue
            # Users of this server are shown as their profile says (deactivated users
            # are not in ``local``); everyone else as a member event says.
            if e.user_id.split(":", 1)[-1] == self._server_name:
                continue
            found[e.user_id] = e
        ranked = sorted(found.values(), key=lambda e: _rank(e, words))
        results = []
        for e in ranked[:limit]:
            item: dict[str, Any] = {"user_id": e.user_id}
            if e.display_name:
                item["display_name"] = e.display_name
            if e.avatar_url:
                item["avatar_url"] = e.avatar_url
            results.append(item)
        return {"results": results, "limited": len(ranked) > limit}




def _rank(e: DirectoryEntry, words: list[str]) -> tuple:
    localpart = e.user_id[1:].split(":", 1)[0].casefold()
    name = (e.display_name or "").casefold()
    first = words[0]
    exact = localpart == first or name == " ".join(words)
    prefix = localpart.startswith(first) or any(part.startswith(first) for part in name.split())
    return (not exact, not prefix, e.display_name is None, e.user_id)


__all__ = ["UserDirectoryHandler"]
