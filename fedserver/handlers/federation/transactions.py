"""Inbound federation transactions: limits, one at a time per origin, replays, EDUs."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedserver.background import log_background_failure
from fedserver.keyed_lock import KeyedLock
from fedserver.errors import MatrixError, bad_json, forbidden, invalid_param
from fedserver.events.status import OutcomeStatus
from fedserver.storage.interface import ReceivedTxn

log = Logger()

#: The spec's limits on one transaction (server-server API "Transactions": "at most 50
#: PDUs and 100 EDUs").
MAX_PDUS = 50
MAX_EDUS = 100
#: Longest transaction id we accept (it is stored, keyed with the origin).
MAX_TXN_ID_LENGTH = 255

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
    - PDUs that pass the receipt checks 1-3 (the ingest) go into their rooms through the
      receiver (steps 4-6, gaps filled), committed before the answer is recorded; a 200
      means they are durable.
    - A repeated transaction id from the same origin gets the stored first response; its
      PDUs are not processed again (and if the process died between storing the events
      and recording the answer, processing them again finds them stored).
    - PDUs (and room EDUs) for rooms whose server ACL denies the origin are not processed.
    - EDUs go to the handler registered for their type; unknown types are ignored, and an
      EDU handler's failure never fails the transaction.

    :param clock: for timestamps.
    :param store: the :class:`fedserver.storage.interface.Store`.
    :param ingest: an object with ``check_pdus(origin, pdus, denied_rooms, room_versions=)
        -> Deferred[CheckedBatch]`` and ``room_versions(pdus) -> Deferred[dict]``
        (:class:`fedserver.handlers.federation.ingest.Ingest`).
    :param acls: a :class:`fedserver.federation.acl.ServerAcls`, or ``None`` to apply no
        server ACLs.
    :param edu_handlers: ``{edu_type: handler(origin, content)}``.
    :param receiver: an :class:`fedserver.handlers.federation.receive.EventReceiver`:
        checked events go into their rooms (steps 4-6).
    """

    def __init__(
        self,
        clock: IReactorTime,
        store: Any,
        ingest: Any,
        acls: Any = None,
        edu_handlers: Mapping[str, EduHandler] | None = None,
        *,
        receiver: Any,
    ) -> None:
        self._clock = clock
        self._store = store
        self._ingest = ingest
        self._acls = acls
        self._receiver = receiver
        self._edu_handlers = dict(edu_handlers or {})
        self._locks: KeyedLock[str] = KeyedLock()
        #: callables ``(origin, result, {outcome: number of PDUs}, number of EDUs)`` told
        #: about every answered transaction; ``result`` is ``processed`` or ``replayed``,
        #: outcomes are ``accepted``, ``soft_failed``, ``rejected``, ``missing``,
        #: ``duplicate`` and ``dropped`` (failed the checks on receipt 1-3) (e.g. metrics).
        self.on_processed: list[Callable[[str, str, dict[str, int], int], Any]] = []

    def register_edu_handler(self, edu_type: str, handler: EduHandler) -> None:
        """Route EDUs of ``edu_type`` to ``handler(origin, content)``."""
        self._edu_handlers[edu_type] = handler

    def on_transaction(self, origin: str, txn_id: str, body: Any) -> defer.Deferred:
        """Process a transaction body from the authenticated ``origin``.

        :returns: Deferred firing with ``(200, response)``; ``response`` is a dict, or the
            stored JSON bytes when answering a replay.
        :raises MatrixError: (as a failed Deferred) for a malformed transaction.
        """
        try:
            pdus, edus = check_transaction(origin, txn_id, body)
        except MatrixError:
            return defer.fail()
        can_store = getattr(self._store, "can_store_text", None)
        if can_store is not None and not can_store(txn_id):
            # The answer could not be recorded, so a replay could not be recognised
            # (PostgreSQL's TEXT cannot hold U+0000).
            return defer.fail(invalid_param("txnId", "This server cannot store this transaction id"))
        return self._locks.run(origin, lambda: self._process(origin, txn_id, pdus, edus))

    def busy_origins(self) -> int:
        """:returns: how many origins have a transaction being processed or waiting."""
        return len(self._locks)

    async def _process(self, origin: str, txn_id: str, pdus: list, edus: list) -> tuple[int, Any]:
        # The replay check and the rooms' versions (one lookup per room, shared by the ACL
        # check and ingest) are read together: the second costs no round trip of its own.
        # A replay's room versions are not used.
        versions = defer.ensureDeferred(
            self._ingest.room_versions(pdus + [{"room_id": r} for e in edus for r in _edu_rooms(e)])
        )
        try:
            previous = await self._store.get_received_txn(origin, txn_id)
        except BaseException:
            versions.addErrback(lambda _f: None)
            raise
        if previous is not None:
            versions.addErrback(lambda _f: None)
            log.info("Replayed transaction {txn_id} from {origin}: answering as before", txn_id=txn_id, origin=origin)
            self._tell(origin, "replayed", {}, 0)
            return previous
        rooms = await versions
        denied = await self._denied_rooms(origin, rooms)
        batch = await self._ingest.check_pdus(origin, pdus, denied, room_versions=rooms)
        response = {"pdus": batch.results}
        now = int(self._clock.seconds() * 1000)
        record = ReceivedTxn(origin, txn_id, 200, response, now)
        # Receipt steps 4-6: into the rooms, gaps filled; committed before we answer.
        events = [entry.event for entry in batch.entries]
        outcomes = await self._receiver.take_in(origin, events, batch.verified)
        for event in events:
            o = outcomes.get(event.event_id)
            if o is not None and o.status == OutcomeStatus.REJECTED and o.refusal is not None:
                batch.results[event.event_id] = {"error": f"Rejected: {o.refusal.reason}"}
            elif o is not None and o.status == OutcomeStatus.MISSING:
                batch.results[event.event_id] = {"error": "Missing prev or auth events that could not be fetched"}
        await self._store.store_received_txn(record.origin, record.txn_id, record.code, record.body, record.ts)
        for edu in edus:
            self._dispatch_edu(origin, edu, denied)
        if self.on_processed:
            counts = {"dropped": len(pdus) - len(events)}
            for o in outcomes.values():
                key = "duplicate" if o.duplicate else o.status
                counts[key] = counts.get(key, 0) + 1
            self._tell(origin, "processed", counts, len(edus))
        if pdus or edus:
            log.info(
                "Transaction {txn_id} from {origin}: {n_pdus} PDUs, {n_edus} EDUs",
                txn_id=txn_id, origin=origin, n_pdus=len(pdus), n_edus=len(edus),
            )
        return (200, response)

    def _tell(self, origin: str, result: str, outcomes: dict[str, int], edus: int) -> None:
        for observe in self.on_processed:
            try:
                observe(origin, result, outcomes, edus)
            except Exception:  # noqa: BLE001 - an observer must never fail a transaction
                log.failure("Transaction observer failed")

    async def _denied_rooms(self, origin: str, rooms: Mapping[str, Any]) -> frozenset[str]:
        if self._acls is None or not rooms:
            return frozenset()
        denied = await self._acls.denied_rooms(origin, rooms)
        if denied:
            log.info("Server ACLs deny {origin} in {rooms}", origin=origin, rooms=sorted(denied))
        return frozenset(denied)

    def _dispatch_edu(self, origin: str, edu: Any, denied_rooms: frozenset) -> None:
        if type(edu) is not dict:
            return
        edu_type, content = edu.get("edu_type"), edu.get("content")
        if type(edu_type) is not str or type(content) is not dict:
            return
        if denied_rooms:
            content = _without_rooms(edu_type, content, denied_rooms)
            if content is None:
                return
        handler = self._edu_handlers.get(edu_type)
        if handler is None:
            if edu_type not in KNOWN_EDU_TYPES:
                log.debug("Ignoring EDU of unknown type {edu_type!r:.100} from {origin}", edu_type=edu_type, origin=origin)
            return
        d = defer.maybeDeferred(handler, origin, content)
        d.addErrback(log_background_failure, "EDU {edu_type} from {origin} failed", logger=log, edu_type=edu_type,
                     origin=origin)


def _edu_rooms(edu: Any) -> list[str]:
    """The rooms an EDU is about (typing: ``room_id``; receipts: the content's keys)."""
    if type(edu) is not dict or type(edu.get("content")) is not dict:
        return []
    content = edu["content"]
    if edu.get("edu_type") == "m.typing":
        room_id = content.get("room_id")
        return [room_id] if type(room_id) is str else []
    if edu.get("edu_type") == "m.receipt":
        return [k for k in content if type(k) is str]
    return []


def _without_rooms(edu_type: str, content: dict[str, Any], denied: frozenset) -> dict[str, Any] | None:
    """``content`` without what concerns ``denied`` rooms; ``None`` if nothing is left."""
    if edu_type == "m.typing":
        return None if content.get("room_id") in denied else content
    if edu_type == "m.receipt":
        kept = {k: v for k, v in content.items() if k not in denied}
        return kept or None
    return content


def check_transaction(origin: str, txn_id: str, body: Any) -> tuple[list, list]:
    """Check the shape of a ``/send`` body (HOSTILE.md rows 6 and 9).

    :returns: ``(pdus, edus)``.
    :raises MatrixError: 400 ``M_BAD_JSON`` for a body that is not an object, an invalid
        transaction id, ``pdus`` / ``edus`` that are not lists or exceed the spec's limits;
        403 ``M_FORBIDDEN`` when the body's ``origin`` is not the server that signed the
        request.
    """
    if type(body) is not dict:
        raise bad_json("Transaction must be a JSON object")
    if not txn_id or len(txn_id.encode("utf-8", "surrogatepass")) > MAX_TXN_ID_LENGTH:
        raise bad_json("Invalid transaction id")
    body_origin = body.get("origin")
    if body_origin is not None and body_origin != origin:
        raise forbidden("Transaction origin does not match the request's signer")
    pdus = body.get("pdus", [])
    edus = body.get("edus", [])
    if pdus is None:
        pdus = []
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
