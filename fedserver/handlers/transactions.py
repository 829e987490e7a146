"""Inbound federation transactions: limits, one at a time per origin, replays, EDUs."""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from fedserver.http.errors import MatrixError, bad_json
from fedserver.storage.interface import ReceivedTxn

log = logging.getLogger(__name__)

#: The spec's limits on one transaction ("Transactions": at most 50 PDUs and 100 EDUs).
MAX_PDUS = 50
MAX_EDUS = 100

#: EDU types a server may send us that we accept without acting on them yet.
KNOWN_EDU_TYPES = frozenset(
    {
        "m.typing",
        "m.receipt",
        "m.presence",
        "m.device_list_update",
        "m.signing_key_update",
        "m.direct_to_device",
    }
)

EduHandler = Callable[[str, dict[str, Any]], Any]


class TransactionHandler:
    """Handles ``PUT /_matrix/federation/v1/send/{txnId}``.

    - At most 50 PDUs and 100 EDUs, else 400 ``M_BAD_JSON`` and nothing processed.
    - One transaction per origin at a time: a second one waits for the first.
    - A repeated transaction id from the same origin gets the stored first response; its
      PDUs are not processed again. The response and the events it acknowledges are
      committed in one database transaction, so a 200 means both are durable.
    - EDUs go to the handler registered for their type; unknown types are ignored, and an
      EDU handler's failure never fails the transaction.

    :param clock: for timestamps.
    :param store: the :class:`fedserver.storage.interface.Store`.
    :param ingest: an object with ``check_pdus(origin, pdus) -> Deferred[CheckedBatch]``
        (:class:`fedserver.handlers.ingest.Ingest`).
    :param edu_handlers: ``{edu_type: handler(origin, content)}``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        store,
        ingest,
        edu_handlers: Mapping[str, EduHandler] | None = None,
    ) -> None:
        self._clock = clock
        self._store = store
        self._ingest = ingest
        self._edu_handlers = dict(edu_handlers or {})
        self._locks: dict[str, defer.DeferredLock] = {}

    def register_edu_handler(self, edu_type: str, handler: EduHandler) -> None:
        """Route EDUs of ``edu_type`` to ``handler(origin, content)``."""
        self._edu_handlers[edu_type] = handler

    def on_transaction(self, origin: str, txn_id: str, body: Any) -> defer.Deferred:
        """Process a transaction body from the authenticated ``origin``.

        :returns: Deferred firing with ``(code, response_body)``.
        :raises MatrixError: (as a failed Deferred) for a malformed transaction.
        """
        try:
            pdus, edus = _check_transaction(origin, txn_id, body)
        except MatrixError:
            return defer.fail()
        lock = self._locks.get(origin)
        if lock is None:
            lock = self._locks[origin] = defer.DeferredLock()
        d = lock.run(self._process, origin, txn_id, pdus, edus)

        def release_lock_entry(result):
            if not lock.locked and not lock.waiting and self._locks.get(origin) is lock:
                del self._locks[origin]
            return result

        d.addBoth(release_lock_entry)
        return d

    @defer.inlineCallbacks
    def _process(self, origin: str, txn_id: str, pdus: list, edus: list):
        previous = yield self._store.get_received_txn(origin, txn_id)
        if previous is not None:
            log.info("Replayed transaction %s from %s: answering as before", txn_id, origin)
            return previous
        batch = yield self._ingest.check_pdus(origin, pdus)
        response = {"pdus": batch.results}
        now = int(self._clock.seconds() * 1000)
        yield self._store.persist_events(
            batch.entries, received_txn=ReceivedTxn(origin, txn_id, 200, response, now)
        )
        for edu in edus:
            self._dispatch_edu(origin, edu)
        if batch.entries or edus:
            log.info(
                "Transaction %s from %s: %d PDUs (%d accepted), %d EDUs",
                txn_id, origin, len(pdus), len(batch.entries), len(edus),
            )
        return (200, response)

    def _dispatch_edu(self, origin: str, edu: Any) -> None:
        if type(edu) is not dict:
            return
        edu_type, content = edu.get("edu_type"), edu.get("content")
        if type(edu_type) is not str or type(content) is not dict:
            return
        handler = self._edu_handlers.get(edu_type)
        if handler is None:
            if edu_type not in KNOWN_EDU_TYPES:
                log.debug("Ignoring EDU of unknown type %.100r from %s", edu_type, origin)
            return
        d = defer.maybeDeferred(handler, origin, content)
        d.addErrback(lambda f: log.error("EDU %s from %s failed: %s", edu_type, origin, f.getTraceback()))


def _check_transaction(origin: str, txn_id: str, body: Any) -> tuple[list, list]:
    if type(body) is not dict:
        raise bad_json("Transaction must be a JSON object")
    if not txn_id or len(txn_id) > 255:
        raise bad_json("Invalid transaction id")
    body_origin = body.get("origin")
    if body_origin is not None and body_origin != origin:
        raise MatrixError(403, "M_FORBIDDEN", "Transaction origin does not match the request's signer")
    pdus = body.get("pdus", [])
    edus = body.get("edus", [])
    if type(pdus) is not list:
        raise bad_json("pdus must be a list")
    if edus is None:
        edus = []
    if type(edus) is not list:
        raise bad_json("edus must be a list")
    if len(pdus) > MAX_PDUS:
        raise bad_json(f"A transaction may carry at most {MAX_PDUS} PDUs")
    if len(edus) > MAX_EDUS:
        raise bad_json(f"A transaction may carry at most {MAX_EDUS} EDUs")
    return pdus, edus
