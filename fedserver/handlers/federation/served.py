"""The one place stored events become the PDUs this server serves to other servers."""

# Client-server spec, "Redactions": "Upon receipt of a redaction event, the server must
# strip off any keys not in the following list..." (the algorithm of each room version,
# rooms/v*.md "Redactions"). A server may keep the original content for a while (for
# moderation, e.g. MSC2815), but what leaves the server is the redacted form: every answer
# that carries PDUs (/event, /backfill, /get_missing_events, /state, /event_auth, the state
# and auth chain of send_join, invite_room_state and knock_room_state) builds them here.
# A redacted copy keeps hashes and signatures, so receivers can still check it (the
# content hash then fails and they keep it redacted too: server-server spec, "Checks
# performed on receipt of a PDU", step 3) and use it for authorization, which only reads
# keys the redaction algorithm preserves.

from __future__ import annotations

from typing import Any, Collection, Sequence

from fedserver.events.model import Event
from fedserver.events.redaction import redact
from fedserver.handlers.rooms.redactions import RedactionLookup


class ServedPdus:
    """Turns stored events into the PDUs we answer with: each event as received, or its
    redacted copy if an accepted redaction applies to it (or the caller hides it, e.g.
    because history visibility hides it from the asking server).

    :param store: the store (redactions are read from ``store.rooms``).
    :param redactions: a :class:`RedactionLookup` (one on ``store`` by default).
    """

    def __init__(self, store: Any, redactions: RedactionLookup | None = None) -> None:
        self._redactions = redactions if redactions is not None else RedactionLookup(store)

    async def pdus(self, events: Sequence[Event], *, hidden: Collection[str] = ()) -> list[dict[str, Any]]:
        """The PDUs for ``events``, in the same order.

        :param hidden: ids of events to serve redacted whatever their redactions.
        """
        if not events:
            return []
        redacted = await self._redactions.applicable(events)
        out = []
        for event in events:
            pdu = event.to_federation()
            if event.event_id in redacted or event.event_id in hidden:
                pdu = redact(pdu, event.room_version)
            out.append(pdu)
        return out

    async def pdu(self, event: Event) -> dict[str, Any]:
        """:meth:`pdus` for one event."""
        return (await self.pdus([event]))[0]
