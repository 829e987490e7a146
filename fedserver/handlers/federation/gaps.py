"""Filling gaps in a room's DAG from another server: missing prev events, auth chains, state."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.events.model import Event
from fedserver.federation.client import fed_path
from fedserver.storage.interface import StateKey

log = Logger()

#: How many events one /get_missing_events may bring (the spec's default limit is 10).
MISSING_EVENTS_LIMIT = 20
#: Above this many unknown state events, fetch /state in one request instead of /event each.
BULK_STATE_THRESHOLD = 50
#: Parallel /event requests to one server.
EVENT_FETCH_CONCURRENCY = 8


class GapFiller:
    """Asks the server that sent us an event for what we lack to take it in.

    Everything fetched is checked like any received PDU: format, signatures and content
    hash through ``check`` (receipt steps 1-3), then auth (steps 4-6) by whoever takes the
    events in. Requests are bounded: one ``/get_missing_events`` of at most
    :data:`MISSING_EVENTS_LIMIT` events per gap, state fetched in bulk above
    :data:`BULK_STATE_THRESHOLD` events.

    :param client: the :class:`fedserver.federation.client.FederationClient`.
    :param check: ``check(origin, pdus) -> Deferred[list[Event]]`` running receipt steps 1-3
        and returning the events that passed (redacted where the content hash failed).
    :param store: to know which events we already hold.
    """

    def __init__(self, client, check, store) -> None:
        self._client = client
        self._check = check
        self._store = store

    async def get_missing_events(
        self, origin: str, room_id: str, latest: Sequence[Event], earliest: Iterable[str]
    ) -> list[Event]:
        """``POST /get_missing_events``: the events between our forward extremities
        (``earliest``) and ``latest``, checked.

        :returns: the events that passed receipt checks 1-3 (possibly none).
        """
        body = {
            "earliest_events": sorted(earliest),
            "latest_events": [e.event_id for e in latest],
            "limit": MISSING_EVENTS_LIMIT,
            "min_depth": max(0, min(e.depth for e in latest) - MISSING_EVENTS_LIMIT),
        }
        try:
            resp = await self._client.post_json(
                origin, fed_path("/_matrix/federation/v1/get_missing_events/{}", room_id), body
            )
        except Exception as e:  # noqa: BLE001 - a peer that cannot help is not an error of ours
            log.info("get_missing_events from {origin} for {room_id} failed: {e}", origin=origin, room_id=room_id, e=e)
            return []
        pdus = resp.get("events") if isinstance(resp, dict) else None
        if not isinstance(pdus, list):
            return []
        return await self._check(origin, pdus[: MISSING_EVENTS_LIMIT * 2])

    async def get_event_auth(self, origin: str, room_id: str, event_id: str) -> list[Event]:
        """``GET /event_auth``: the auth chain of ``event_id``, checked (not yet stored)."""
        try:
            resp = await self._client.get_json(
                origin, fed_path("/_matrix/federation/v1/event_auth/{}/{}", room_id, event_id)
            )
        except Exception as e:  # noqa: BLE001
            log.info("event_auth from {origin} failed: {e}", origin=origin, e=e)
            return []
        pdus = resp.get("auth_chain") if isinstance(resp, dict) else None
        if not isinstance(pdus, list):
            return []
        return await self._check(origin, pdus)

    async def get_state_after(
        self, origin: str, room_id: str, event_id: str
    ) -> Optional[tuple[dict[StateKey, str], list[Event]]]:
        """The state after ``event_id`` as ``origin`` sees it: ``/state_ids`` (the state
        before it) plus the event itself, with every event we lack fetched and checked.

        :returns: ``(state map, fetched events)``: the caller stores the fetched events
            (auth chain first) as outliers before relying on the map; ``None`` if the
            server could not answer.
        """
        return await self._state_at(origin, room_id, event_id, True)

    async def get_state_before(
        self, origin: str, room_id: str, event_id: str
    ) -> Optional[tuple[dict[StateKey, str], list[Event]]]:
        """The state before ``event_id`` as ``origin`` sees it (``/state_ids``), as
        :meth:`get_state_after` (for history whose state cannot be derived)."""
        return await self._state_at(origin, room_id, event_id, False)

    async def _state_at(
        self, origin: str, room_id: str, event_id: str, after: bool
    ) -> Optional[tuple[dict[StateKey, str], list[Event]]]:
        try:
            resp = await self._client.get_json(
                origin, fed_path("/_matrix/federation/v1/state_ids/{}", room_id), args={"event_id": event_id}
            )
        except Exception as e:  # noqa: BLE001
            log.info("state_ids from {origin} failed: {e}", origin=origin, e=e)
            return None
        if not isinstance(resp, dict):
            return None
        pdu_ids = _str_list(resp.get("pdu_ids"))
        chain_ids = _str_list(resp.get("auth_chain_ids"))
        if pdu_ids is None or chain_ids is None:
            return None
        wanted = set(pdu_ids) | set(chain_ids) | ({event_id} if after else set())
        have = await self._store.have_events(wanted)
        lacking = wanted - have
        fetched: dict[str, Event] = {}
        if len(lacking) > BULK_STATE_THRESHOLD:
            fetched.update({e.event_id: e for e in await self._get_state(origin, room_id, event_id)})
            lacking -= set(fetched)
        if lacking:
            fetched.update({e.event_id: e for e in await self._get_events(origin, sorted(lacking))})
        if wanted - have - set(fetched):
            log.info("{origin} could not supply every state event at {event_id}", origin=origin, event_id=event_id)
            return None
        known = await self._store.get_events((set(pdu_ids) | ({event_id} if after else set())) - set(fetched))
        by_id = {**known, **fetched}
        state: dict[StateKey, str] = {}
        for pid in pdu_ids:
            ev = by_id.get(pid)
            if ev is None or ev.state_key is None or ev.room_id != room_id:
                return None  # not state, or not of this room: the answer cannot be used
            state[(ev.type, ev.state_key)] = pid
        target = by_id.get(event_id) if after else None
        if target is not None and target.state_key is not None and target.rejected_reason is None:
            state[(target.type, target.state_key)] = event_id
        return state, list(fetched.values())

    async def _get_state(self, origin: str, room_id: str, event_id: str) -> list[Event]:
        try:
            resp = await self._client.get_json(
                origin, fed_path("/_matrix/federation/v1/state/{}", room_id), args={"event_id": event_id}
            )
        except Exception as e:  # noqa: BLE001
            log.info("state from {origin} failed: {e}", origin=origin, e=e)
            return []
        if not isinstance(resp, dict):
            return []
        pdus = (resp.get("pdus") or []) + (resp.get("auth_chain") or [])
        return await self._check(origin, [p for p in pdus if isinstance(p, dict)])

    async def get_events(self, origin: str, event_ids: Sequence[str]) -> list[Event]:
        """``GET /event`` for each of ``event_ids`` (a few in parallel), checked; the
        events ``origin`` could not supply are left out."""
        return await self._get_events(origin, event_ids)

    async def _get_events(self, origin: str, event_ids: Sequence[str]) -> list[Event]:
        sem = defer.DeferredSemaphore(EVENT_FETCH_CONCURRENCY)

        def one(event_id: str):
            d = self._client.get_json(origin, fed_path("/_matrix/federation/v1/event/{}", event_id))
            d.addErrback(lambda f: None)
            return d

        answers = await defer.gatherResults([sem.run(one, e) for e in event_ids])
        pdus: list[Any] = []
        for resp in answers:
            if isinstance(resp, dict) and isinstance(resp.get("pdus"), list):
                pdus.extend(p for p in resp["pdus"][:1] if isinstance(p, dict))
        return await self._check(origin, pdus)


def _str_list(value: Any) -> Optional[list[str]]:
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 255 for v in value):
        return None
    return value


def merge_fetched(*groups: Iterable[Event]) -> list[Event]:
    """Events from several fetches, each once."""
    seen: dict[str, Event] = {}
    for group in groups:
        for e in group:
            seen.setdefault(e.event_id, e)
    return list(seen.values())


__all__ = ["GapFiller", "merge_fetched"]
