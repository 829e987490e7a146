"""Queueing persisted events for other servers inside the transaction that stores them."""

# DESIGN.md, Durability: "A 200 to a client for a new local event means the event and its
# outbound queue rows for every other server in the room are committed, in one database
# transaction." The events store writes the event; this module, called in the same
# transaction right after it, computes where the event goes (the servers with a member
# joined to the room once the batch is stored, from the current state just written) and
# writes the queue rows. The sender is only woken after the commit.

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred

from fedserver.storage.cache import LruCache
from fedserver.storage.database import Txn, check_text
from fedserver.storage.rooms.events_store import EventStore
from fedserver.storage.federation.federation_store import FederationStore
from fedserver.storage.interface import Distribution, InvalidDataError, PersistedEvent, PersistEntry
from fedserver.storage.rooms.partial_state_store import PartialStateStore


#: Rooms whose joined servers are kept in memory.
JOINED_SERVERS_CACHE_ROOMS = 2_000


def server_of(user_id: str) -> Optional[str]:
    """The server name of a user id (after the first ``:``), or ``None``."""
    _, sep, domain = user_id.partition(":")
    return domain if sep and domain else None


def check_distribution(value: object) -> None:
    """:raises InvalidDataError: if ``value`` is not a :class:`Distribution` of server names."""
    if not isinstance(value, Distribution):
        raise InvalidDataError(f"distribute must be a Distribution, not {type(value).__name__}")
    for what, names in (("also", value.also), ("never", value.never)):
        if isinstance(names, str):
            raise InvalidDataError(f"Distribution.{what} must be a collection of server names")
        for name in names:
            check_text(name, f"Distribution.{what} server name")


class DistributionStore:
    """Writes the outbound queue rows of persisted events (see the module comment).

    :param events: the events store (current memberships).
    :param federation: the federation store (the outbound queue).
    :param clock_ms: the current time in milliseconds.
    """

    def __init__(self, events: EventStore, federation: FederationStore, clock_ms: Callable[[], int]) -> None:
        self._events = events
        self._federation = federation
        self._clock_ms = clock_ms
        #: ``{room_id: (membership generation, servers)}`` for :meth:`cached_joined_servers`.
        self._joined: LruCache[str, tuple[int, frozenset[str]]] = LruCache(JOINED_SERVERS_CACHE_ROOMS)

    def cached_joined_servers(self, run_read: Callable[..., "Deferred[Any]"], room_id: str) -> "Deferred[set[str]]":
        """:meth:`joined_servers_txn` in a read transaction of its own, kept in memory per
        room until its members change (a make_join, send_join and the presence and
        typing that follow each ask; in a 20,000-member room each read scans every
        member). A value read while a change was committing is not kept.

        :param run_read: ``Database.run_read``.
        """
        generation = self._events.membership_generation(room_id)
        hit = self._joined.get(room_id)
        if hit is not None and hit[0] == generation:
            return defer.succeed(set(hit[1]))
        d = run_read(self.joined_servers_txn, room_id)

        def keep(servers: set[str]) -> set[str]:
            if self._events.membership_generation(room_id) == generation:
                self._joined.put(room_id, (generation, frozenset(servers)))
            return servers

        d.addCallback(keep)
        return d

    def joined_servers_txn(self, txn: Txn, room_id: str) -> set[str]:
        """The servers with a member joined to ``room_id`` in its current state; for a
        room joined with partial state (its members not known yet) also the resident's
        ``servers_in_room`` (MSC3706: used "to send outgoing federation transactions while
        it synchronises the full state"). ``Store.get_joined_hosts`` answers the same."""
        servers = PartialStateStore.servers_txn(txn, room_id)
        for user_id in self._events.get_room_members_txn(txn, room_id, "join"):
            server = server_of(user_id)
            if server:
                servers.add(server)
        return servers

    def queue_persisted_txn(
        self, txn: Txn, batch: Sequence[PersistEntry], persisted: Mapping[str, PersistedEvent]
    ) -> dict[str, PersistedEvent]:
        """Queue the entries of ``batch`` that carry a :class:`Distribution` and were
        stored by this transaction as accepted, non-outlier events, in batch order.

        :param persisted: what persisting the batch answered.
        :returns: ``persisted`` with ``queued_for`` filled in.
        """
        out = dict(persisted)
        hosts: dict[str, set[str]] = {}
        runs: list[tuple[frozenset[str], list[dict]]] = []
        for entry in batch:
            how = entry.distribute
            if how is None:
                continue
            check_distribution(how)
            event = entry.event
            done = out.get(event.event_id)
            if (
                done is None or not done.stored or done.queued_for or entry.outlier
                or entry.rejection is not None or entry.soft_failed or entry.soft_failure is not None
            ):
                continue
            room_hosts = hosts.get(event.room_id)
            if room_hosts is None:
                room_hosts = hosts[event.room_id] = self.joined_servers_txn(txn, event.room_id)
            destinations = frozenset((room_hosts | set(how.also)) - set(how.never))
            if not destinations:
                continue
            out[event.event_id] = done._replace(queued_for=destinations)
            # Consecutive events for the same servers share one call; the queue keeps the
            # batch order for every destination.
            if runs and runs[-1][0] == destinations:
                runs[-1][1].append(event.pdu)
            else:
                runs.append((destinations, [event.pdu]))
        now = self._clock_ms()
        for destinations, pdus in runs:
            self._federation.enqueue_outbound_txn(txn, sorted(destinations), pdus, (), now)
        return out

    def requeue_unsent_local_events_txn(self, txn: Txn, server_name: str) -> dict[str, frozenset[str]]:
        """Once, for databases from before this module existed (schema 005 lists their
        rooms in ``outbound_requeue``): queue again each room's forward extremities that
        this server made, for the servers in the room.

        Before schema 005 an event's queue rows were written in a second transaction, so a
        crash could leave a committed event unqueued. Only the forward extremities need
        sending again: every earlier event of ours is a prev event of a later one, which a
        receiver missing it fetches through ``/get_missing_events``. Receivers drop what
        they already have.

        :returns: ``{room_id: servers queued for}`` for the rooms where something was queued.
        """
        check_text(server_name, "server_name")
        rooms = [r[0] for r in txn.execute("SELECT room_id FROM outbound_requeue ORDER BY room_id").fetchall()]
        queued: dict[str, frozenset[str]] = {}
        now = self._clock_ms()
        for room_id in rooms:
            extremities = self._events.get_forward_extremities_txn(txn, room_id)
            events = self._events.get_events_txn(txn, extremities)
            ours = [
                events[e].pdu for e in reversed(extremities)
                if e in events and server_of(events[e].sender) == server_name
            ]
            destinations = self.joined_servers_txn(txn, room_id) - {server_name}
            if ours and destinations:
                self._federation.enqueue_outbound_txn(txn, sorted(destinations), ours, (), now)
                queued[room_id] = frozenset(destinations)
        txn.execute("DELETE FROM outbound_requeue")
        return queued
