"""PDUs on receipt: format, signatures and content hash checked in batches, then persisted."""

from __future__ import annotations

import logging
from typing import Any, Iterable

from twisted.internet import defer

from fedserver.events.model import Event
from fedserver.events.redaction import redact
from fedserver.events.signing import SignatureServersError, required_signature_servers
from fedserver.events.validation import InvalidEvent, check_pdu
from fedserver.federation.keyring import key_validity_minimum
from fedserver.room_versions import RoomVersion
from fedserver.storage.interface import PersistEntry

log = logging.getLogger(__name__)


class CheckedBatch:
    """The outcome of checking one transaction's PDUs.

    :ivar results: the per-PDU result map of the ``/send`` response, ``{event_id: {}}`` or
        ``{event_id: {"error": reason}}``. PDUs for rooms we do not know, or too malformed to
        have an event id, are absent (the spec lets a receiver ignore them).
    :ivar entries: what to persist, in order.
    """

    __slots__ = ("results", "entries")

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.entries: list[PersistEntry] = []


class Ingest:
    """Checks received PDUs (spec "Checks performed on receipt of a PDU", steps 1-3) for
    a whole transaction at once, and decides what to persist.

    Step 1 (valid format) and step 3 (content hash: a mismatch keeps only the redacted
    event) are pure; step 2 (signatures) is one batched keyring call for every PDU of the
    transaction, so a transaction costs one key lookup per server, not per event.
    Accepted events are persisted as outliers for now: authorization against state
    (steps 4-6) builds on this class.

    :param store: the :class:`fedserver.storage.interface.Store`.
    :param keyring: a :class:`fedserver.federation.keyring.Keyring`.
    """

    def __init__(self, store, keyring) -> None:
        self._store = store
        self._keyring = keyring

    @defer.inlineCallbacks
    def check_pdus(self, origin: str, pdus: Iterable[Any]):
        """Check ``pdus`` received from ``origin``.

        :returns: Deferred firing with a :class:`CheckedBatch`.
        """
        batch = CheckedBatch()
        room_versions = yield self._room_versions(pdus)
        checked: list[tuple[Event, bool]] = []
        requests = []
        owners: list[int] = []
        for pdu in pdus:
            room_id = pdu.get("room_id") if type(pdu) is dict else None
            rv: RoomVersion | None = room_versions.get(room_id) if type(room_id) is str else None
            if rv is None:
                log.info("Ignoring PDU from %s for unknown room %.100r", origin, room_id)
                continue
            try:
                c = check_pdu(pdu, rv)
                servers = required_signature_servers(pdu, rv)
            except (InvalidEvent, SignatureServersError) as e:
                eid = pdu.get("event_id")
                log.info("Dropping invalid PDU from %s: %s", origin, e)
                if type(eid) is str and len(eid) <= 255:
                    batch.results[eid] = {"error": f"Invalid event: {e}"}
                continue
            index = len(checked)
            checked.append((c.event, c.content_hash_ok))
            sigs = pdu.get("signatures", {})
            minimum = key_validity_minimum(c.event.origin_server_ts, rv)
            for server in servers:
                requests.append((server, c.signed_bytes, sigs.get(server), minimum))
                owners.append(index)
        verdicts = (yield self._keyring.verify_signatures(requests)) if requests else []
        failed: dict[int, str] = {}
        for index, verdict in zip(owners, verdicts):
            if verdict is not True and index not in failed:
                failed[index] = str(verdict)
        for index, (event, hash_ok) in enumerate(checked):
            if index in failed:
                log.info("Dropping %s from %s: bad signature: %s", event.event_id, origin, failed[index])
                batch.results[event.event_id] = {"error": f"Signature check failed: {failed[index]}"}
                continue
            if not hash_ok:
                # Step 3: a content hash mismatch means we keep only the redacted form.
                log.info("Content hash mismatch on %s from %s; keeping it redacted", event.event_id, origin)
                event = Event.from_pdu(redact(event.pdu, event.room_version), event.room_version, event.event_id)
            batch.results[event.event_id] = {}
            batch.entries.append(PersistEntry(event=event, outlier=True))
        return batch

    @defer.inlineCallbacks
    def _room_versions(self, pdus: Iterable[Any]):
        room_ids = {p.get("room_id") for p in pdus if type(p) is dict}
        found: dict[str, RoomVersion] = {}
        for room_id in room_ids:
            if type(room_id) is not str or len(room_id) > 255:
                continue
            rv = yield self._store.get_room_version(room_id)
            if rv is not None:
                found[room_id] = rv
        return found
