"""What became of an event offered to a room: accepted, rejected, soft-failed or missing."""

from __future__ import annotations

from enum import StrEnum


class OutcomeStatus(StrEnum):
    """The outcome of the checks on receipt of an event (server-server API "Checks
    performed on receipt of a PDU"), shared by the room pipeline, the inbound
    transactions and the events store.

    Members are strings equal to their value, so the representation on the wire, in logs
    and in the database (``event_refusals.kind``) is the plain value.
    """

    #: Passed every check; part of the room's DAG (and of its state if a state event).
    ACCEPTED = "accepted"
    #: Failed the authorization rules against its auth events or the state before it
    #: (steps 4 and 5): stored, never part of the state, never served as accepted.
    REJECTED = "rejected"
    #: Authorised by its auth events and the state before it, but not by the room's
    #: current state, or refused by a local policy (step 6): stored and in the DAG, but not
    #: sent to clients nor used as a prev event.
    SOFT_FAILED = "soft_failed"
    #: Prev or auth events we do not have and could not fetch: nothing was stored.
    MISSING = "missing"


#: The statuses stored with a refusal (``event_refusals.kind``), in the order listed.
REFUSAL_KINDS: tuple[OutcomeStatus, ...] = (OutcomeStatus.REJECTED, OutcomeStatus.SOFT_FAILED)


__all__ = ["OutcomeStatus", "REFUSAL_KINDS"]
