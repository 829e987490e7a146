"""PDUs on receipt: format, signatures and content hash checked in batches, then persisted."""

from __future__ import annotations

from typing import Any, Collection, Iterable, Mapping

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.events.hashing import compute_event_id
from fedserver.events.model import Event
from fedserver.events.redaction import redact
from fedserver.events.signing import (
    SignatureServersError, required_signature_servers,
)
from fedserver.events.validation import InvalidEvent, check_pdu
from fedserver.handlers.federation.receipt import add_signature_requests, sort_signature_verdicts
from fedserver.room_versions import EventFormat, RoomVersion, UnknownRoomVersion
from fedserver.storage.interface import PersistEntry

log = Logger()

#: Longest event id we echo back in a per-PDU result.
MAX_EVENT_ID_LENGTH = 255
#: PDUs checked (step 1) before their signatures go to the keyring: a 50-PDU transaction
#: makes two parts, the second checked while the first one's signatures are verified.
FORMAT_PART = 25


class CheckedBatch:
    """The outcome of checking one transaction's PDUs.

    :ivar results: the per-PDU result map of the ``/send`` response, ``{event_id: {}}`` or
        ``{event_id: {"error": reason}}``. PDUs for rooms we do not know, or too malformed to
        have an event id, are absent (the spec lets a receiver ignore them).
    :ivar entries: what to persist, in order.
    """

    __slots__ = ("results", "entries", "verified")

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.entries: list[PersistEntry] = []
        #: ``{event_id: servers whose signatures verified}`` for the events in ``entries``.
        self.verified: dict[str, frozenset[str]] = {}


def _event_id_of(pdu: dict[str, Any], rv: RoomVersion) -> str | None:
    """The id of a PDU that may be malformed, for reporting an error about it; ``None`` if
    it has none we can name."""
    try:
        if rv.event_format == EventFormat.V1:
            eid = pdu.get("event_id")
        else:
            eid = compute_event_id(pdu, rv)
    except Exception:  # noqa: BLE001 - a malformed PDU may break hashing in many ways
        return None
    if type(eid) is not str or not eid or len(eid) > MAX_EVENT_ID_LENGTH:
        return None
    return eid


class Ingest:
    """Checks received PDUs (spec "Checks performed on receipt of a PDU", steps 1-3) for
    a whole transaction at once, and decides what to persist.

    Step 1 (valid format) and step 3 (content hash: a mismatch keeps only the redacted
    event) are pure; step 2 (signatures) is one batched keyring call for every PDU of the
    transaction, so a transaction costs one key lookup per server, not per event.
    Accepted events are persisted as outliers for now: authorization against state
    (steps 4-6) builds on this class.

    :param store: the :class:`fedserver.storage.interface.Store` (``get_room_version``).
    :param keyring: a :class:`fedserver.federation.keyring.Keyring`.
    """

    def __init__(self, store: Any, keyring: Any) -> None:
        self._store = store
        self._keyring = keyring

    async def check_pdus(
        self,
        origin: str,
        pdus: Iterable[Any],
        denied_rooms: Collection[str] = (),
        *,
        room_versions: Mapping[str, RoomVersion] | None = None,
    ) -> CheckedBatch:
        """Check ``pdus`` received from ``origin``.

        :param denied_rooms: rooms whose server ACL denies ``origin``: their PDUs get a
            per-PDU error and are not processed (server-server API "Server ACLs": ``/send``
            is protected "on a per-PDU basis").
        :param room_versions: the result of :meth:`room_versions` for these PDUs, if the
            caller already has it.
        :returns: a :class:`CheckedBatch`.
        """
        pdus = list(pdus)
        batch = CheckedBatch()
        if room_versions is None:
            room_versions = await self.room_versions(pdus)
        checked: list[_Checked] = []
        requests: list[_SignatureRequest] = []
        owners: list[int] = []
        # Step 1 a part at a time, each part's signatures handed to the keyring at once:
        # the verification threads (ed25519 releases the GIL) check one part while this
        # thread checks the formats of the next.
        started: list[defer.Deferred] = []
        for i in range(0, len(pdus), FORMAT_PART):
            c, r, o = _check_formats(origin, pdus[i:i + FORMAT_PART], denied_rooms, room_versions, batch, len(checked))
            checked += c
            requests += r
            owners += o
            if r:
                started.append(self._keyring.verify_signatures(r))
        verdicts = [v for part in (await _all(started)) for v in part]
        failed, also_verified = sort_signature_verdicts(requests, owners, verdicts)
        _settle(origin, batch, checked, failed, also_verified)
        return batch

    async def room_versions(self, pdus: Iterable[Any]) -> dict[str, RoomVersion]:
        """:returns: ``{room_id: RoomVersion}`` for the rooms of
            ``pdus`` that we know (a version no longer supported counts as unknown)."""
        room_ids = {p.get("room_id") for p in pdus if type(p) is dict}
        found: dict[str, RoomVersion] = {}
        for room_id in room_ids:
            if type(room_id) is not str or not room_id or len(room_id) > 255:
                continue
            try:
                rv = await self._store.get_room_version(room_id)
            except UnknownRoomVersion as e:  # e.g. a version a plugin no longer registers
                log.warn("Cannot use the room version of {room_id}: {why}", room_id=room_id, why=e)
                continue
            if rv is not None:
                found[room_id] = rv
        return found


#: A PDU that passed step 1: its event, whether its content hash matched, and the servers
#: whose signatures step 2 requires.
_Checked = tuple[Event, bool, frozenset[str]]

#: One signature for the keyring: server, signed bytes, the signature block, key
#: validity minimum.
_SignatureRequest = tuple[str, bytes, Any, int]


async def _all(started: list[defer.Deferred]) -> list[Any]:
    """The results of ``started`` in order; the first failure is raised as itself (the
    others are consumed, never left unhandled)."""
    if not started:
        return []
    try:
        return await defer.gatherResults(started, consumeErrors=True)
    except defer.FirstError as e:
        e.subFailure.raiseException()
        raise  # not reached


def _check_formats(
    origin: str,
    pdus: list[Any],
    denied_rooms: Collection[str],
    room_versions: Mapping[str, RoomVersion],
    batch: CheckedBatch,
    first_index: int = 0,
) -> tuple[list[_Checked], list[_SignatureRequest], list[int]]:
    """Step 1, "Is a valid event, otherwise it is dropped. For an event to be valid, it
    must comply with the event format of that room version.", and the signatures step 2
    will check.

    PDUs for rooms we do not know are ignored; those of ``denied_rooms`` and invalid ones
    get their error in ``batch.results``.

    :param first_index: how many valid PDUs of the transaction came before these (the
        indexes of the PDUs returned start there).
    :returns: the valid PDUs, the signatures to verify, and for each signature the index
        of its PDU (``-1 - index`` for an optional one: the auth rules may need it, the
        spec's signature check does not).
    """
    checked: list[_Checked] = []
    requests: list[_SignatureRequest] = []
    owners: list[int] = []
    for pdu in pdus:
        room_id = pdu.get("room_id") if type(pdu) is dict else None
        rv: RoomVersion | None = room_versions.get(room_id) if type(room_id) is str else None
        if rv is None:
            # Step 1 needs the room version; a PDU for a room we are not in is ignored.
            log.debug("Ignoring PDU from {origin} for unknown room {room_id!r:.100}", origin=origin, room_id=room_id)
            continue
        if room_id in denied_rooms:
            eid = _event_id_of(pdu, rv)
            if eid is not None:
                batch.results[eid] = {"error": "Server is banned from this room by its server ACL"}
            continue
        try:
            c = check_pdu(pdu, rv)
            servers = required_signature_servers(pdu, rv)
        except (InvalidEvent, SignatureServersError) as e:
            # Step 1: not a valid event: dropped, with an error if it has an id.
            eid = _event_id_of(pdu, rv)
            log.info("Dropping invalid PDU {event_id} from {origin}: {why}", event_id=eid, origin=origin, why=e)
            if eid is not None:
                batch.results[eid] = {"error": f"Invalid event: {e}"}
            continue
        index = first_index + len(checked)
        checked.append((c.event, c.content_hash_ok, frozenset(servers)))
        add_signature_requests(requests, owners, index, pdu, rv, c.signed_bytes, c.event.origin_server_ts, servers)
    return checked, requests, owners


def _settle(
    origin: str,
    batch: CheckedBatch,
    checked: list[_Checked],
    failed: dict[int, str],
    also_verified: dict[int, set[str]],
) -> None:
    """Steps 2 and 3 applied: "2. Passes signature checks, otherwise it is dropped. 3.
    Passes hash checks, otherwise it is redacted before being processed further."

    Fills ``batch`` in ``checked``'s order.
    """
    for index, (event, hash_ok, servers) in enumerate(checked):
        if index in failed:
            # Step 2: signature check failed: dropped.
            log.info("Dropping {event_id} from {origin}: bad signature: {why}", event_id=event.event_id, origin=origin, why=failed[index])
            batch.results[event.event_id] = {"error": f"Signature check failed: {failed[index]}"}
            continue
        if not hash_ok:
            # Step 3: a content hash mismatch means we keep only the redacted form.
            log.info("Content hash mismatch on {event_id} from {origin}; keeping it redacted", event_id=event.event_id, origin=origin)
            event = Event.from_pdu(redact(event.pdu, event.room_version), event.room_version, event.event_id)
        batch.results[event.event_id] = {}
        batch.entries.append(PersistEntry(event=event, outlier=True))
        batch.verified[event.event_id] = servers | also_verified.get(index, set())
