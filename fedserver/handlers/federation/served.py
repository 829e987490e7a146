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

from typing import Any, AsyncIterator, Collection, Sequence

from fedserver.events.model import Event
from fedserver.events.redaction import redact
from fedserver.handlers.rooms.redactions import RedactionLookup


#: Events read and served at a time in an answer written as it is produced (a send_join's
#: state, a /state answer).
SERVE_CHUNK = 500


class ServedPdus:
    """Turns stored events into the PDUs we answer with: each event as received, or its
    redacted copy if an accepted redaction applies to it (or the caller hides it, e.g.
    because history visibility hides it from the asking server).

    :param store: the store (redactions are read from ``store.rooms``).
    :param redactions: a :class:`RedactionLookup` (one on ``store`` by default).
    """

    def __init__(self, store: Any, redactions: RedactionLookup | None = None) -> None:
        self._store = store
        self._redactions = redactions if redactions is not None else RedactionLookup(store)

    async def chunks(
        self, event_ids: Sequence[str], *, allow_rejected: bool = True, size: int = SERVE_CHUNK
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The PDUs for ``event_ids`` (those we have, in order), read from the store and
        served ``size`` at a time: for answers written as they are produced
        (:class:`fedserver.streamed.StreamedJSON`), which never hold them all."""
        for start in range(0, len(event_ids), size):
            part = event_ids[start:start + size]
            events = await self._store.get_events(part, allow_rejected=allow_rejected)
            yield await self.pdus([events[i] for i in part if i in events])

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
