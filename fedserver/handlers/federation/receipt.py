"""Receipt checks 1-3 on PDUs of a known room version: format, signatures (batched), content hash."""

from __future__ import annotations

from typing import Any, Iterable

from twisted.logger import Logger

from fedserver.events.model import Event
from fedserver.events.redaction import redact
from fedserver.events.signing import (
    SignatureServersError, optional_signature_servers, required_signature_servers,
)
from fedserver.events.validation import InvalidEvent, check_pdu
from fedserver.federation.keyring import key_validity_minimum
from fedserver.room_versions import RoomVersion

log = Logger()


class ReceivedEvents:
    """The outcome of :func:`check_received`.

    :ivar events: events that passed, in input order (redacted where the content hash
        did not match: receipt step 3).
    :ivar verified: ``{event_id: servers whose signatures verified}``.
    :ivar errors: ``{event_id: reason}`` for events dropped at step 1 or 2 (an event too
        malformed to have an id is only logged).
    """

    __slots__ = ("events", "verified", "errors")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.verified: dict[str, frozenset[str]] = {}
        self.errors: dict[str, str] = {}


async def check_received(keyring, pdus: Iterable[Any], rv: RoomVersion, *, room_id: str | None = None) -> ReceivedEvents:
    """Run the server-server spec's "Checks performed on receipt of a PDU" steps 1-3 on
    ``pdus`` of room version ``rv``, verifying every signature in one keyring call.

    :param keyring: a :class:`fedserver.federation.keyring.Keyring`.
    :param room_id: if given, PDUs of another room are dropped.
    :returns: a :class:`ReceivedEvents`.
    """
    out = ReceivedEvents()
    checked = []
    requests = []
    owners: list[int] = []
    for pdu in pdus:
        if type(pdu) is not dict:
            continue
        try:
            c = check_pdu(pdu, rv)
            servers = required_signature_servers(pdu, rv)
        except (InvalidEvent, SignatureServersError) as e:
            eid = pdu.get("event_id")
            log.info("Dropping invalid PDU: {e}", e=e)
            if type(eid) is str and len(eid) <= 255:
                out.errors[eid] = f"Invalid event: {e}"
            continue
        if room_id is not None and c.event.room_id != room_id:
            out.errors[c.event.event_id] = "Event of another room"
            continue
        index = len(checked)
        checked.append((c, servers))
        add_signature_requests(requests, owners, index, pdu, rv, c.signed_bytes, c.event.origin_server_ts, servers)
    verdicts = (await keyring.verify_signatures(requests)) if requests else []
    failed, also_verified = sort_signature_verdicts(requests, owners, verdicts)
    seen: set[str] = set()
    for index, (c, servers) in enumerate(checked):
        event = c.event
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        if index in failed:
            log.info("Dropping {event_id}: bad signature: {why}", event_id=event.event_id, why=failed[index])
            out.errors[event.event_id] = f"Signature check failed: {failed[index]}"
            continue
        if not c.content_hash_ok:
            # Step 3: keep only the redacted form.
            event = Event.from_pdu(redact(event.pdu, rv), rv, event.event_id)
        out.events.append(event)
        out.verified[event.event_id] = frozenset(servers) | frozenset(also_verified.get(index, ()))
    return out


def add_signature_requests(
    requests: list, owners: list, index: int, pdu: dict[str, Any], rv: RoomVersion, signed_bytes: bytes,
    origin_server_ts: int, servers: Iterable[str],
) -> None:
    """Queue the signature checks of one PDU (the ``index``-th checked) for
    ``Keyring.verify_signatures``: ``servers``, the signatures the spec requires (owner
    ``index``), then those the auth rules may need (owner ``-1 - index``: not the spec's
    signature check; one that is missing or bad leaves the server unverified, for the
    rules to judge). Keys must be valid at the PDU's time (room versions 5+)."""
    sigs = pdu.get("signatures")
    sigs = sigs if type(sigs) is dict else {}
    minimum = key_validity_minimum(origin_server_ts, rv)
    for server in servers:
        requests.append((server, signed_bytes, sigs.get(server), minimum))
        owners.append(index)
    for server in optional_signature_servers(pdu, rv):
        if sigs.get(server) is not None:
            requests.append((server, signed_bytes, sigs.get(server), minimum))
            owners.append(-1 - index)


def sort_signature_verdicts(
    requests: list, owners: list[int], verdicts: list[Any]
) -> tuple[dict[int, str], dict[int, set[str]]]:
    """Receipt step 2, "Passes signature checks": the keyring's verdicts on the requests
    queued by :func:`add_signature_requests`, by PDU.

    :returns: the first failure of each PDU whose required signatures did not all verify,
        and the servers whose optional signatures verified, by PDU index.
    """
    failed: dict[int, str] = {}
    also_verified: dict[int, set[str]] = {}
    for (server, *_), index, verdict in zip(requests, owners, verdicts):
        if index < 0:
            if verdict is True:
                also_verified.setdefault(-1 - index, set()).add(server)
        elif verdict is not True and index not in failed:
            failed[index] = str(verdict)
    return failed, also_verified
