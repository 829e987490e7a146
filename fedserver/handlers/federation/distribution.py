"""Sends the events our users make in a room to every other server in it."""

from __future__ import annotations

from typing import Any, Callable, Collection

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.events.model import Event

log = Logger()


class Distributor:
    """A :class:`fedserver.handlers.rooms.pipeline.RoomPipeline` ``on_persisted`` callback: each
    accepted event whose sender is one of our users is queued for every server with a
    joined member after it (spec: "the event is sent to all the servers in the room"), and
    for membership events also the target's server (a kicked or banned user's server, which
    is no longer joined, must still learn it).

    Events that came in through a handshake the other server already distributes (our own
    join via ``send_join``) are sent too: receivers drop what they already have.

    :param store: for the joined hosts of a room.
    :param send_pdus: ``(pdus, destinations) -> Deferred`` (the outbound sender).
    :param server_name: ours.
    """

    def __init__(self, store, send_pdus: Callable[[list, Collection[str]], Any], server_name: str) -> None:
        self._store = store
        self._send = send_pdus
        self._server_name = server_name
        self._pending: set[defer.Deferred] = set()

    def on_persisted(self, room_id: str, taken: list) -> None:
        ours = [e for e, outcome in taken if outcome.accepted and not outcome.duplicate and self._is_ours(e)]
        if not ours:
            return
        d = defer.ensureDeferred(self._distribute(room_id, ours))
        self._pending.add(d)
        d.addBoth(lambda r: (self._pending.discard(d), r)[1])
        d.addErrback(lambda f: log.failure("Distributing events of {room_id} failed", f, room_id=room_id))

    def _is_ours(self, event: Event) -> bool:
        return event.sender.endswith(":" + self._server_name) and event.origin == self._server_name

    async def _distribute(self, room_id: str, events: list[Event]) -> None:
        hosts = set(await self._store.get_joined_hosts(room_id))
        for event in events:
            targets = set(hosts)
            if event.type == "m.room.member" and event.state_key and ":" in event.state_key:
                targets.add(event.state_key.split(":", 1)[1])
            targets.discard(self._server_name)
            if targets:
                await self._send([event.pdu], sorted(targets))

    def flush(self) -> defer.Deferred:
        """Fires when every distribution started so far is queued (for tests and stop)."""
        return defer.DeferredList(list(self._pending), consumeErrors=True)
