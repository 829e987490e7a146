"""Taking checked PDUs from other servers into their rooms: gaps filled, outcomes reported."""

from __future__ import annotations

from collections import defaultdict
from typing import Collection, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.background import is_storage_fault
from fedserver.events.model import Event
from fedserver.handlers.federation.failures import (
    CODE_AUTH_REJECTED,
    CODE_MISSING_AUTH,
    CODE_SOFT_FAILED,
    ERROR,
    WARN,
    FailureReport,
)
from fedserver.handlers.rooms.pipeline import ACCEPTED, MISSING, REJECTED, SOFT_FAILED, Outcome, RoomPipeline
from fedserver.storage.interface import StateKey

log = Logger()


class EventReceiver:
    """Receipt steps 4-6 for events that passed steps 1-3, with the gaps filled.

    Events whose prev or auth events we lack are completed from the server that sent
    them (server-server spec "Retrieving missing events", "Checks performed on receipt of a
    PDU"): missing auth events through ``/event_auth``; missing prev events through one
    bounded ``/get_missing_events``; if a gap remains, the state after each missing prev
    event through ``/state_ids`` (plus ``/event`` or ``/state`` for what we lack), resolved
    with the states we have. Everything fetched is checked like any PDU.

    When we reject or soft-fail an event, the server that sent it and the sender's server
    are told (the failures mechanism, seed 000).

    :param pipeline: the :class:`RoomPipeline`.
    :param store: the store.
    :param gaps: a :class:`fedserver.handlers.federation.gaps.GapFiller`, or ``None`` (no fetching).
    :param failures: a :class:`fedserver.handlers.federation.failures.FailureReporter`, or ``None``.
    """

    def __init__(self, pipeline: RoomPipeline, store, gaps=None, failures=None) -> None:
        self._pipeline = pipeline
        self._store = store
        self._gaps = gaps
        self._failures = failures

    async def take_in(
        self, origin: str, events: Sequence[Event], verified: Mapping[str, Collection[str]]
    ) -> dict[str, Outcome]:
        """Take ``events`` (checked, of rooms we know) into their rooms.

        :returns: ``{event_id: Outcome}``; rooms are handled concurrently.
        """
        by_room: dict[str, list[Event]] = defaultdict(list)
        for e in events:
            by_room[e.room_id].append(e)
        results = await defer.gatherResults(
            [defer.ensureDeferred(self._room(origin, room_id, evs, verified)) for room_id, evs in by_room.items()],
            consumeErrors=True,
        )
        out: dict[str, Outcome] = {}
        for r in results:
            out.update(r)
        return out

    async def _room(
        self, origin: str, room_id: str, events: list[Event], verified: Mapping[str, Collection[str]]
    ) -> dict[str, Outcome]:
        outcomes = await self._pipeline.process(room_id, events, verified_servers=verified)
        missing = [e for e in events if outcomes[e.event_id].status == MISSING]
        if missing and self._gaps is not None:
            outcomes.update(await self._fill(origin, room_id, missing, outcomes, verified))
        await self._report(origin, room_id, events, outcomes)
        return outcomes

    # -- gaps ----------------------------------------------------------------------------

    async def _fill(
        self,
        origin: str,
        room_id: str,
        waiting: list[Event],
        outcomes: Mapping[str, Outcome],
        verified: Mapping[str, Collection[str]],
    ) -> dict[str, Outcome]:
        gaps = self._gaps
        verified = dict(verified)
        # 1. Auth events we lack: the sender's server gives the auth chain.
        for e in waiting:
            lacking = outcomes[e.event_id].missing & set(e.auth_event_ids)
            if lacking:
                chain = await gaps.get_event_auth(origin, room_id, e.event_id)
                if chain:
                    await self._pipeline.process_outliers(room_id, chain)
        # 2. Prev events we lack: one bounded /get_missing_events for the whole batch.
        extremities = await self._pipeline.forward_extremities(room_id)
        fetched = await gaps.get_missing_events(origin, room_id, waiting, extremities)
        batch = {e.event_id: e for e in fetched}
        batch.update((e.event_id, e) for e in waiting)
        result = await self._pipeline.process(room_id, list(batch.values()), verified_servers=verified)
        still = [e for e in waiting if result[e.event_id].status == MISSING]
        # 3. A gap remains: take the state after each missing prev event from the sender,
        # resolve it with the states we have, and take the event in on that state.
        for e in still:
            known_prevs = [p for p in e.prev_event_ids if p not in result[e.event_id].missing]
            states: list[Mapping[StateKey, str]] = []
            if known_prevs:
                groups = await self._store.get_state_ids_for_events(known_prevs, after=True)
                for g in set(groups.values()):
                    states.append(await self._store.get_state_group(g))
            ok = True
            for p in sorted(result[e.event_id].missing - set(e.auth_event_ids)):
                answer = await gaps.get_state_after(origin, room_id, p)
                if answer is None:
                    ok = False
                    break
                state, new_events = answer
                if new_events:
                    await self._pipeline.process_outliers(room_id, new_events)
                states.append(state)
            if not ok or not states:
                continue
            state_before = states[0] if len(states) == 1 else await self._pipeline.resolve(room_id, e.room_version, states)
            again = await self._pipeline.process(
                room_id, [e], state_before={e.event_id: state_before}, verified_servers=verified
            )
            result.update(again)
        return {e.event_id: result[e.event_id] for e in waiting}

    # -- failures ---------------------------------------------------------------------------

    async def _report(self, origin: str, room_id: str, events: list[Event], outcomes: Mapping[str, Outcome]) -> None:
        if self._failures is None:
            return
        by_server: dict[str, list[FailureReport]] = defaultdict(list)
        for e in events:
            o = outcomes.get(e.event_id)
            if o is None or o.duplicate:
                continue
            report: Optional[FailureReport] = None
            if o.status == REJECTED and o.refusal is not None:
                report = FailureReport(ERROR, CODE_AUTH_REJECTED, _reason(o), room_id, e.event_id)
            elif o.status == SOFT_FAILED and o.refusal is not None:
                report = FailureReport(WARN, CODE_SOFT_FAILED, _reason(o), room_id, e.event_id)
            elif o.status == MISSING:
                report = FailureReport(
                    ERROR, CODE_MISSING_AUTH, "prev or auth events could not be fetched", room_id, e.event_id,
                    sorted(o.missing)[0] if o.missing else None,
                )
            if report is not None:
                for server in {origin, e.origin}:
                    by_server[server].append(report)
        for server, reports in by_server.items():
            try:
                await self._failures.report([server], reports)
            except Exception as e:  # noqa: BLE001 - reporting must never break ingest
                if not is_storage_fault(e):  # the database logs its outages once
                    log.failure("Reporting failures to {server} failed", server=server)


def _reason(o: Outcome) -> str:
    r = o.refusal
    text = r.reason if r is not None else o.status
    if r is not None and r.rule:
        text += f" (rule {r.rule})"
    if r is not None and r.plugin and not r.plugin.startswith("fedserver."):
        text += f" [plugin {r.plugin}]"
    return text


__all__ = ["EventReceiver", "ACCEPTED"]
