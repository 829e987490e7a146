"""The outbound federation queue: per-destination, persisted, one transaction in flight, backoff."""

from __future__ import annotations

import json
from typing import Any, Iterable, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from fedserver.background import STORAGE_RETRY_S, is_storage_fault, log_background_failure

log = Logger()

#: The spec's limits for one transaction.
MAX_PDUS_PER_TXN = 50
MAX_EDUS_PER_TXN = 100


def _decode(item: Any) -> Any:
    """Queued items come back from storage as JSON bytes."""
    return json.loads(item) if isinstance(item, (bytes, str)) else item


class OutboundStore(Protocol):
    """What the sender needs from storage (``fedserver.storage.sqlite.SQLiteStore``)."""

    def enqueue_outbound(self, destinations, pdus=(), edus=()) -> defer.Deferred: ...
    def get_outbound_batch(self, destination, max_pdus, max_edus) -> defer.Deferred: ...
    def ack_outbound(self, destination, up_to_queue_id) -> defer.Deferred: ...
    def next_txn_id(self, destination) -> defer.Deferred: ...
    def get_destination_retry(self, destination) -> defer.Deferred: ...
    def set_destination_retry(self, destination, failure_ts, retry_interval_ms) -> defer.Deferred: ...
    def clear_destination_retry(self, destination) -> defer.Deferred: ...
    def destinations_with_pending(self) -> defer.Deferred: ...


class _Destination:
    """In-memory bookkeeping for one destination (the queue itself lives in the database)."""

    __slots__ = ("name", "sending", "wakeup", "retry_interval_ms", "retry_at_ms", "pending", "put", "ephemeral")

    def __init__(self, name: str):
        self.name = name
        self.sending = False
        self.put: defer.Deferred | None = None  # the PUT in flight
        self.wakeup: IDelayedCall | None = None
        self.retry_interval_ms = 0
        self.retry_at_ms = 0
        self.pending = False  # something was queued while a send was in flight
        # EDUs kept in memory only (typing, presence): key -> (expires at ms, EDU); a newer
        # EDU with the same key replaces the older one.
        self.ephemeral: dict[Any, tuple[int, dict[str, Any]]] = {}


class FederationSender:
    """Delivers PDUs and EDUs to other servers through persisted per-destination queues.

    Every queued item is in the database before :meth:`send_pdus` / :meth:`send_edu` fire (room
    events are queued by the transaction that stores them, then :meth:`wake` is called), so
    a restart loses nothing: :meth:`start` resumes every destination with pending items.
    Each destination has at most one transaction in flight; items queued meanwhile go in the
    next one, so a busy room becomes a few large transactions, not many small ones.

    On failure (network error, timeout, 5xx, 429) the destination backs off exponentially,
    from ``min_retry_ms`` up to ``max_retry_ms``; :meth:`on_server_seen` (a valid signed
    request from that server) resets the backoff and resumes at once. A 4xx other than 429
    means the peer refuses the transaction itself: retrying the same bytes cannot succeed,
    so it is logged and dropped.

    :param clock: provides ``seconds()`` and ``callLater``.
    :param store: an :class:`OutboundStore`.
    :param put_transaction: ``(destination, txn_id, body) -> Deferred`` that PUTs
        ``/_matrix/federation/v1/send/{txn_id}`` and fails with an exception having a
        ``code`` attribute for HTTP errors (``fedserver.federation.client``).
    :param server_name: ours, the ``origin`` of every transaction.
    """

    def __init__(
        self,
        clock: IReactorTime,
        store: OutboundStore,
        put_transaction,
        server_name: str,
        *,
        min_retry_ms: int = 2_000,
        max_retry_ms: int = 3_600_000,
        multiplier: float = 2.0,
    ):
        self._clock = clock
        self._store = store
        self._put = put_transaction
        self._server_name = server_name
        self._min_retry_ms = min_retry_ms
        self._max_retry_ms = max_retry_ms
        self._multiplier = multiplier
        self._destinations: dict[str, _Destination] = {}
        self._running = False
        self._in_flight: set[defer.Deferred] = set()

    # -- lifecycle -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        """Resume every destination that still has queued items (after a restart)."""
        self._running = True
        pending = yield self._store.destinations_with_pending()
        for name in pending:
            retry = yield self._store.get_destination_retry(name)
            dest = self._dest(name)
            if retry:
                failure_ts, interval = retry
                dest.retry_interval_ms = interval
                dest.retry_at_ms = failure_ts + interval
            self._kick(dest)

    def stop(self) -> defer.Deferred:
        """Stop scheduling and cancel the requests in flight (what they carried stays
        queued and is sent again after the next :meth:`start`).

        :returns: Deferred firing once every destination loop has ended.
        """
        self._running = False
        for dest in self._destinations.values():
            if dest.wakeup is not None and dest.wakeup.active():
                dest.wakeup.cancel()
            dest.wakeup = None
            if dest.put is not None:
                dest.put.cancel()
        return defer.DeferredList(list(self._in_flight), consumeErrors=True)

    # -- queueing ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def send_pdus(self, pdus: list[dict[str, Any]], destinations: Iterable[str]):
        """Queue ``pdus`` (federation JSON) for every destination except ourselves.

        :returns: Deferred firing once they are persisted in the queue.
        """
        dests = sorted({d for d in destinations if d != self._server_name})
        if not dests or not pdus:
            return
        yield self._store.enqueue_outbound(dests, pdus=pdus)
        for name in dests:
            self._kick(self._dest(name))

    @defer.inlineCallbacks
    def send_edu(self, edu_type: str, content: dict[str, Any], destinations: Iterable[str]):
        """Queue one EDU for every destination except ourselves."""
        dests = sorted({d for d in destinations if d != self._server_name})
        if not dests:
            return
        edu = {"edu_type": edu_type, "content": content}
        yield self._store.enqueue_outbound(dests, edus=[edu])
        for name in dests:
            self._kick(self._dest(name))

    def wake(self, destinations: Iterable[str]) -> None:
        """Something was queued for ``destinations`` by another writer (events are queued
        in the transaction that stores them, see
        :class:`fedserver.handlers.rooms.pipeline.RoomPipeline`): send it, unless a
        destination is backing off or the sender is not running (:meth:`start` picks up
        everything queued)."""
        for name in sorted(set(destinations)):
            if name != self._server_name:
                self._kick(self._dest(name))

    def send_ephemeral_edu(
        self, edu_type: str, content: dict[str, Any], destinations: Iterable[str], *, key: Any, ttl_ms: int
    ) -> None:
        """Send one EDU to every destination except ourselves, kept in MEMORY only, for
        state that is worthless once stale (typing, presence).

        It goes in the next transaction to each destination, together with queued
        items; a newer EDU with the same ``key`` (e.g. the typing state of one user in
        one room) replaces one not yet sent, and an EDU not delivered within ``ttl_ms``
        (the destination was down, or backing off) is dropped instead of being sent
        stale. A restart loses them, by design.
        """
        dests = sorted({d for d in destinations if d != self._server_name})
        if not dests:
            return
        expires = self._now_ms() + max(0, ttl_ms)
        edu = {"edu_type": edu_type, "content": content}
        for name in dests:
            dest = self._dest(name)
            dest.ephemeral[key] = (expires, edu)
            self._kick(dest)

    def _take_ephemeral(self, dest: _Destination, room: int) -> list[tuple[Any, dict[str, Any]]]:
        """Up to ``room`` unexpired in-memory EDUs of ``dest`` (expired ones are dropped)."""
        now = self._now_ms()
        for key in [k for k, (expires, _) in dest.ephemeral.items() if expires < now]:
            del dest.ephemeral[key]
        return [(k, edu) for k, (_, edu) in list(dest.ephemeral.items())[: max(0, room)]]

    @staticmethod
    def _forget_sent(dest: _Destination, sent: list[tuple[Any, dict[str, Any]]]) -> None:
        for key, edu in sent:
            current = dest.ephemeral.get(key)
            if current is not None and current[1] is edu:
                del dest.ephemeral[key]

    def on_server_seen(self, server_name: str) -> None:
        """A valid signed request came from ``server_name``: it is up, so stop backing off."""
        dest = self._destinations.get(server_name)
        if dest is None or dest.retry_interval_ms == 0:
            return
        log.info("{destination} is reachable again; resetting its backoff", destination=server_name)
        dest.retry_interval_ms = 0
        dest.retry_at_ms = 0
        self._store.clear_destination_retry(server_name).addErrback(
            log_background_failure, "Clearing the retry state of {destination} failed", logger=log,
            destination=server_name,
        )
        if dest.wakeup is not None and dest.wakeup.active():
            dest.wakeup.cancel()
        dest.wakeup = None
        self._kick(dest)

    def sending(self) -> int:
        """:returns: how many destinations have a send loop running (0 when idle)."""
        return len(self._in_flight)

    def backoff_ms(self, server_name: str) -> int:
        """The current retry interval for ``server_name`` (0 when it is not backing off)."""
        dest = self._destinations.get(server_name)
        return dest.retry_interval_ms if dest else 0

    # -- the per-destination loop --------------------------------------------------------

    def _dest(self, name: str) -> _Destination:
        dest = self._destinations.get(name)
        if dest is None:
            dest = self._destinations[name] = _Destination(name)
        return dest

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _kick(self, dest: _Destination) -> None:
        if not self._running:
            return
        if dest.sending:
            dest.pending = True
            return
        wait_ms = dest.retry_at_ms - self._now_ms()
        if wait_ms > 0:
            if dest.wakeup is None or not dest.wakeup.active():
                dest.wakeup = self._clock.callLater(wait_ms / 1000.0, self._wake, dest)
            return
        if dest.wakeup is not None and dest.wakeup.active():
            dest.wakeup.cancel()  # sending now: a wakeup left from a backoff is moot
        dest.wakeup = None
        dest.sending = True
        d = self._drain(dest)
        self._in_flight.add(d)

        def done(result):
            self._in_flight.discard(d)
            dest.sending = False
            if dest.pending and dest.retry_interval_ms == 0:
                dest.pending = False
                self._kick(dest)
            return result

        def failed(f):
            if is_storage_fault(f):
                # The database is unavailable (it logs that once): what is queued stays
                # queued; try this destination again a little later.
                if self._running and (dest.wakeup is None or not dest.wakeup.active()):
                    dest.wakeup = self._clock.callLater(STORAGE_RETRY_S, self._wake, dest)
                return None
            log.failure("Sender loop for {destination} failed", f, destination=dest.name)
            return None

        d.addBoth(done)
        d.addErrback(failed)

    def _wake(self, dest: _Destination) -> None:
        dest.wakeup = None
        self._kick(dest)

    @defer.inlineCallbacks
    def _drain(self, dest: _Destination):
        """Send transactions to ``dest`` until its queue is empty or a send fails."""
        while self._running:
            dest.pending = False
            batch = yield self._store.get_outbound_batch(dest.name, MAX_PDUS_PER_TXN, MAX_EDUS_PER_TXN)
            pdus = [_decode(item) for _, kind, item in batch if kind == "pdu"]
            edus = [_decode(item) for _, kind, item in batch if kind == "edu"]
            ephemeral = self._take_ephemeral(dest, MAX_EDUS_PER_TXN - len(edus))
            if not batch and not ephemeral:
                return
            edus.extend(edu for _, edu in ephemeral)
            last_id = max((qid for qid, _, _ in batch), default=None)
            txn_id = yield self._store.next_txn_id(dest.name)
            if not self._running:
                return  # stopped while reading the queue: send nothing more
            body = {
                "origin": self._server_name,
                "origin_server_ts": self._now_ms(),
                "pdus": pdus,
            }
            if edus:
                body["edus"] = edus
            dest.put = defer.maybeDeferred(self._put, dest.name, txn_id, body)
            try:
                yield dest.put
            except Exception as e:  # noqa: BLE001 - every failure is classified below
                if not self._running:
                    return  # stopping: the items stay queued for the next start
                code = getattr(e, "code", None)
                if type(code) is int and 400 <= code < 500 and code != 429:
                    log.warn(
                        "{destination} refused transaction {txn_id} ({n} items) with {code}; dropping it",
                        destination=dest.name, txn_id=txn_id, n=len(batch) + len(ephemeral), code=code,
                    )
                    self._forget_sent(dest, ephemeral)
                    if last_id is not None:
                        yield self._store.ack_outbound(dest.name, last_id)
                    continue
                yield self._backoff(dest, e)
                return
            finally:
                dest.put = None
            self._forget_sent(dest, ephemeral)
            if last_id is not None:
                yield self._store.ack_outbound(dest.name, last_id)
            if dest.retry_interval_ms:
                dest.retry_interval_ms = 0
                dest.retry_at_ms = 0
                yield self._store.clear_destination_retry(dest.name)

    @defer.inlineCallbacks
    def _backoff(self, dest: _Destination, error: Exception):
        if dest.retry_interval_ms == 0:
            interval = self._min_retry_ms
        else:
            interval = min(int(dest.retry_interval_ms * self._multiplier), self._max_retry_ms)
        now = self._now_ms()
        dest.retry_interval_ms = interval
        dest.retry_at_ms = now + interval
        log.info(
            "Sending to {destination} failed ({error}); retrying in {seconds:.1f}s",
            destination=dest.name, error=str(error)[:300], seconds=interval / 1000,
        )
        yield self._store.set_destination_retry(dest.name, now, interval)
        if self._running:
            if dest.wakeup is not None and dest.wakeup.active():
                # A reset (on_server_seen) while this backoff was being recorded may have
                # left a wakeup behind: one wakeup per destination, never two.
                dest.wakeup.cancel()
            dest.wakeup = self._clock.callLater(interval / 1000.0, self._wake, dest)
