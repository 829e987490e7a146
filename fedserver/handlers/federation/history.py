"""Room history for peers and operators: what the federation history endpoints serve, and why an event was refused."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedserver.events.model import Event
from fedserver.events.status import REFUSAL_KINDS, OutcomeStatus
from fedserver.handlers.federation.served import ServedPdus
from fedserver.streamed import StreamedJSON
from fedserver.handlers.federation.visibility import (
    HISTORY_VISIBILITY_KEY,
    WORLD_READABLE,
    ServerVisibility,
    history_visibility,
)
from fedserver.errors import MatrixError, bad_json, forbidden, missing_param, not_found

log = Logger()

#: Most events one ``/backfill`` answers (Synapse asks for 100 and serves at most 100).
BACKFILL_LIMIT_MAX = 100
#: Most events one ``/get_missing_events`` answers (Synapse serves at most 20).
MISSING_EVENTS_LIMIT_MAX = 20
#: The spec's default ``limit`` of ``/get_missing_events``.
MISSING_EVENTS_LIMIT_DEFAULT = 10
#: Most ids accepted in ``earliest_events`` / ``latest_events``.
MISSING_EVENTS_MAX_IDS = 1000
#: Longest identifier accepted (spec: event and room ids are at most 255 bytes).
MAX_ID_BYTES = 255

#: ``acl_check(origin, room_id)`` fires with ``False`` if the room's server ACL denies
#: ``origin``.
AclCheck = Callable[[str, str], Awaitable[bool]]


def clamp(value: int, low: int, high: int) -> int:
    """``value`` brought into ``[low, high]``."""
    return max(low, min(high, value))


def is_valid_id(value: Any, sigil: str) -> bool:
    """Whether ``value`` looks like an identifier with ``sigil`` we could hold: a string
    starting with the sigil, at most 255 bytes of UTF-8, with no control character
    (NUL included). Anything else cannot name a stored room or event."""
    if type(value) is not str or len(value) < 2 or not value.startswith(sigil):
        return False
    try:
        if len(value.encode("utf-8")) > MAX_ID_BYTES:
            return False
    except UnicodeEncodeError:
        return False
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def _int_field(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    # JSON booleans are not integers here, nor are floats (1.0).
    if type(value) is not int:
        raise bad_json(f"{name} must be an integer")
    return value


def _id_list_field(body: Mapping[str, Any], name: str) -> list[str]:
    if name not in body:
        raise missing_param(name)
    value = body[name]
    if type(value) is not list:
        raise bad_json(f"{name} must be a list of event ids")
    if len(value) > MISSING_EVENTS_MAX_IDS:
        raise bad_json(f"{name} may hold at most {MISSING_EVENTS_MAX_IDS} event ids")
    for item in value:
        if not is_valid_id(item, "$"):
            raise bad_json(f"{name} must hold event ids")
    return value


class HistoryHandler:
    """Serves room history to other servers (server-server API "Retrieving events",
    "Backfilling and retrieving missing events", "Retrieving event authorization
    information").

    A server may see a room if it has a user joined to it now (current state), or if the
    room is ``world_readable`` now. Any other server gets exactly the answer a room we do
    not know gets, 404 ``M_NOT_FOUND`` "Unknown room ..." (issue 12, seed 004: private
    rooms look non-existent; this replaces HOSTILE.md row 27's 403), and for ``/event``
    the answer an unknown event gets. That is decided first; then the room's server ACL
    (403). An event we do not hold in that room is 404 too, and so are a rejected event
    (spec "Rejection": never relayed) and the state at an event we hold without state (an
    outlier). ``/backfill`` and ``/get_missing_events`` clamp their ``limit``
    (:data:`BACKFILL_LIMIT_MAX`, :data:`MISSING_EVENTS_LIMIT_MAX`) and leave out rejected
    events; they, and ``/event``, serve an event the requesting server may not see under
    the room's history visibility as its redacted copy (as Synapse does), so the DAG
    stays walkable without leaking content. State and auth chains are served whole:
    servers need them to authorise events. Every PDU goes out through
    :class:`~fedserver.handlers.federation.served.ServedPdus`, so redacted events are
    served redacted.

    :param store: the :class:`fedserver.storage.interface.Store`.
    :param server_name: our server name (the ``origin`` of the transactions we answer).
    :param clock: gives ``origin_server_ts``.
    :param history_store: the :class:`fedserver.storage.rooms.history_store.HistoryStore`
        (``store.history`` by default).
    :param served: the :class:`ServedPdus` (one on ``store`` by default).

    Every endpoint method takes an optional ``acl_check(origin, room_id)`` (see
    :data:`AclCheck`), consulted after the visibility check: spec "Server Access Control
    Lists" requires 403 ``M_FORBIDDEN`` for a denied server.
    """

    def __init__(
        self, store: Any, server_name: str, clock: IReactorTime, *, history_store: Any = None, served: Any = None
    ) -> None:
        self._store = store
        self._history = history_store if history_store is not None else store.history
        self._served = served if served is not None else ServedPdus(store)
        self._server_name = server_name
        self._clock = clock

    # -- endpoints ------------------------------------------------------------------------

    async def get_event(self, origin: str, event_id: str, acl_check: Optional[AclCheck] = None) -> dict[str, Any]:
        """``GET /event/{eventId}``: a transaction holding the one event (outliers and
        soft-failed events included, spec "Soft failure").

        :param acl_check: checked against the event's room once it is known.
        :raises MatrixError: 404 for unknown or rejected events and events of a room
            ``origin`` may not see (alike), 403 if the room's ACL denies ``origin``.
        """
        unknown = not_found(f"Unknown event {event_id}")
        meta = (await self._store.get_event_meta([event_id])).get(event_id)
        if meta is None or meta.rejected:
            raise unknown
        joined = await self._check_access(origin, meta.room_id, acl_check, unknown)
        event = await self._store.get_event(event_id, allow_rejected=False)
        if event is None:
            raise unknown
        pdus = await self._visible_pdus(origin, meta.room_id, [event], joined)
        return self._transaction(pdus)

    async def get_state(
        self, origin: str, room_id: str, event_id: str, acl_check: Optional[AclCheck] = None
    ) -> StreamedJSON:
        """``GET /state/{roomId}?event_id=``: the state before the event and its auth
        chain, as PDUs, written as they are read (a 20,000-member room's state is a
        partial-state joiner's resync: it starts on the first events at once, and the
        answer is never held whole here).

        :returns: ``{"pdus": [...], "auth_chain": [...]}`` as a :class:`StreamedJSON`.
        """
        state_ids, chain_ids = await self._state_ids(origin, room_id, event_id, acl_check)
        return StreamedJSON({}, {
            "pdus": lambda: self._served.chunks(state_ids, allow_rejected=False),
            "auth_chain": lambda: self._served.chunks(chain_ids, allow_rejected=False),
        })

    async def get_state_ids(
        self, origin: str, room_id: str, event_id: str, acl_check: Optional[AclCheck] = None
    ) -> dict[str, Any]:
        """``GET /state_ids/{roomId}?event_id=``: :meth:`get_state` as event ids.

        :returns: ``{"pdu_ids": [...], "auth_chain_ids": [...]}``.
        """
        state_ids, chain_ids = await self._state_ids(origin, room_id, event_id, acl_check)
        return {"pdu_ids": state_ids, "auth_chain_ids": chain_ids}

    async def get_event_auth(
        self, origin: str, room_id: str, event_id: str, acl_check: Optional[AclCheck] = None
    ) -> dict[str, Any]:
        """``GET /event_auth/{roomId}/{eventId}``: the event's full auth chain.

        :returns: ``{"auth_chain": [...]}``.
        """
        await self._check_access(origin, room_id, acl_check)
        await self._event_in_room(room_id, event_id)
        chain_ids = await self._history.get_auth_chain_ids([event_id])
        events = await self._store.get_events(chain_ids, allow_rejected=False)
        return {"auth_chain": await self._served.pdus([events[i] for i in chain_ids if i in events])}

    async def backfill(
        self, origin: str, room_id: str, v: Iterable[str], limit: int, acl_check: Optional[AclCheck] = None
    ) -> dict[str, Any]:
        """``GET /backfill/{roomId}?v=&limit=``: the events ``v`` and those before them,
        at most ``limit`` (clamped to ``[0, BACKFILL_LIMIT_MAX]``), deepest first.

        :returns: a transaction ``{"origin", "origin_server_ts", "pdus"}``.
        """
        joined = await self._check_access(origin, room_id, acl_check)
        limit = clamp(limit, 0, BACKFILL_LIMIT_MAX)
        events = await self._store.get_backfill(room_id, list(v), limit) if limit else []
        events = [e for e in events if e.rejected_reason is None]
        return self._transaction(await self._visible_pdus(origin, room_id, events, joined))

    async def get_missing_events(
        self, origin: str, room_id: str, body: Any, acl_check: Optional[AclCheck] = None
    ) -> dict[str, Any]:
        """``POST /get_missing_events/{roomId}``: a breadth-first walk of the
        ``prev_events`` of ``latest_events`` that does not enter ``earliest_events``,
        skips events below ``min_depth`` (default 0) and stops at ``limit`` (default 10,
        clamped to ``[0, MISSING_EVENTS_LIMIT_MAX]``); oldest first.

        :param body: the request body (validated here).
        :returns: ``{"events": [...]}``.
        :raises MatrixError: 400 ``M_BAD_JSON`` / ``M_MISSING_PARAM`` for a malformed body.
        """
        if type(body) is not dict:
            raise bad_json("Request body must be a JSON object")
        earliest = _id_list_field(body, "earliest_events")
        latest = _id_list_field(body, "latest_events")
        limit = clamp(_int_field(body, "limit", MISSING_EVENTS_LIMIT_DEFAULT), 0, MISSING_EVENTS_LIMIT_MAX)
        min_depth = _int_field(body, "min_depth", 0)
        # Depths are at most 2**63 - 1 (spec); keep the value storable.
        min_depth = clamp(min_depth, -(2**63), 2**63 - 1)
        joined = await self._check_access(origin, room_id, acl_check)
        if not limit or not latest:
            return {"events": []}
        events = await self._store.get_missing_events(room_id, earliest, latest, limit, min_depth)
        events = [e for e in events if e.rejected_reason is None]
        return {"events": await self._visible_pdus(origin, room_id, events, joined)}

    # -- helpers --------------------------------------------------------------------------

    async def _check_access(
        self, origin: str, room_id: str, acl_check: Optional[AclCheck] = None, unknown: Optional[MatrixError] = None
    ) -> bool:
        """Whether ``origin`` may see the room (see the class docstring), then its ACL.

        :param unknown: the error for a room ``origin`` may not see (by default the one
            for a room we do not know).
        :returns: whether ``origin`` has a user joined to the room now (else it reads a
            world_readable room).
        :raises MatrixError: ``unknown`` (404), or 403 if the room's ACL denies ``origin``.
        """
        known, joined = await self._history.get_room_access(room_id, origin)
        if not known or (not joined and not await self._world_readable(room_id)):
            raise unknown if unknown is not None else not_found(f"Unknown room {room_id}")
        if acl_check is not None and not await acl_check(origin, room_id):
            raise forbidden("Your server is denied by the room's server ACL")
        return joined

    async def _world_readable(self, room_id: str) -> bool:
        found = await self._store.get_current_state_events(room_id, [HISTORY_VISIBILITY_KEY])
        return history_visibility(found.get(HISTORY_VISIBILITY_KEY)) == WORLD_READABLE

    async def _event_in_room(self, room_id: str, event_id: str) -> None:
        meta = (await self._store.get_event_meta([event_id])).get(event_id)
        if meta is None or meta.room_id != room_id or meta.rejected:
            raise not_found(f"Unknown event {event_id} in room {room_id}")

    async def _state_ids(
        self, origin: str, room_id: str, event_id: str, acl_check: Optional[AclCheck]
    ) -> tuple[list[str], list[str]]:
        await self._check_access(origin, room_id, acl_check)
        await self._event_in_room(room_id, event_id)
        got = await self._history.get_state_ids_at(event_id)
        if got is None:
            raise not_found(f"No state known at event {event_id}")
        return got

    async def _visible_pdus(
        self, origin: str, room_id: str, events: list[Event], joined_now: bool = True
    ) -> list[dict[str, Any]]:
        """The PDUs to serve ``origin``: each event, or its redacted copy if ``origin``
        may not see it (see :mod:`fedserver.handlers.federation.visibility`) or a
        redaction applies to it."""
        if not events:
            return []
        inputs = await self._history.get_visibility_inputs(room_id, [e.event_id for e in events], origin)
        vis = ServerVisibility(origin, inputs.events, inputs.server_users, joined_now=joined_now)
        states = inputs.states
        hidden = set()
        for event in events:
            groups = inputs.groups.get(event.event_id)
            if groups is None:
                # An outlier: we do not know the state at it. State events are served
                # whole (the room's auth structure, which /state serves too); others as
                # redacted copies.
                visible = event.state_key is not None
            else:
                before, after = groups
                visible = vis.is_visible(event, before, states.get(before, {}), after, states.get(after, {}))
            if not visible:
                hidden.add(event.event_id)
        return await self._served.pdus(events, hidden=hidden)

    def _transaction(self, pdus: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "origin": self._server_name,
            "origin_server_ts": int(self._clock.seconds() * 1000),
            "pdus": pdus,
        }


# -- refusals -------------------------------------------------------------------------------

#: What an event's status can be for an operator: an outcome of the receipt checks, or
#: held as an outlier (without state), or not stored at all.
OUTLIER = "outlier"
UNKNOWN = "unknown"
STATUSES = (OutcomeStatus.ACCEPTED, OutcomeStatus.REJECTED, OutcomeStatus.SOFT_FAILED, OUTLIER, UNKNOWN)
#: Default and largest page of the refusals listing.
REFUSALS_LIMIT_DEFAULT = 100
REFUSALS_LIMIT_MAX = 1000


class EventStatusHandler:
    """Answers the operator's question "what happened to this event, and why?".

    :param store: the :class:`fedserver.storage.interface.Store`.
    :param history_store: the :class:`fedserver.storage.rooms.history_store.HistoryStore`
        (``store.history`` by default).
    """

    def __init__(self, store: Any, *, history_store: Any = None) -> None:
        self._store = store
        self._history = history_store if history_store is not None else store.history

    async def get_status(self, event_id: str) -> dict[str, Any]:
        """The status of ``event_id``.

        ``status`` is ``rejected`` (failed authorization, spec "Rejection"),
        ``soft_failed`` (failed against the current state, spec "Soft failure"),
        ``outlier`` (held without state, e.g. an auth event fetched for a join),
        ``accepted``, or ``unknown`` (not stored). ``reason``, ``rule`` (the spec rule,
        e.g. ``"4.2"``) and ``plugin`` (``None`` for the built-in spec rules) say why an
        event was refused; ``refused_ts`` when.

        :returns: ``{"event_id", "room_id", "status", "outlier", "reason", "rule",
            "plugin", "refused_ts"}``.
        """
        row = await self._history.get_event_status(event_id)
        if row is None:
            return {
                "event_id": event_id, "room_id": None, "status": UNKNOWN, "outlier": False,
                "reason": None, "rule": None, "plugin": None, "refused_ts": None,
            }
        status: str
        if row.rejected:
            status = OutcomeStatus.REJECTED
        elif row.soft_failed:
            status = OutcomeStatus.SOFT_FAILED
        elif row.outlier:
            status = OUTLIER
        else:
            status = OutcomeStatus.ACCEPTED
        refused = status in REFUSAL_KINDS and row.kind == status
        return {
            "event_id": row.event_id,
            "room_id": row.room_id,
            "status": status,
            "outlier": row.outlier,
            "reason": row.reason if refused else None,
            "rule": row.rule if refused else None,
            "plugin": row.plugin if refused else None,
            "refused_ts": row.refused_ts if refused else None,
        }

    async def list_refusals(
        self,
        room_id: Optional[str] = None,
        kind: Optional[str] = None,
        limit: int = REFUSALS_LIMIT_DEFAULT,
        from_token: Optional[str] = None,
    ) -> dict[str, Any]:
        """Rejected and soft-failed events, newest first, a page at a time.

        :param kind: ``"rejected"`` or ``"soft_failed"``; ``None`` for both.
        :param limit: page size, clamped to ``[1, REFUSALS_LIMIT_MAX]``.
        :param from_token: the ``next_batch`` of the previous page.
        :returns: ``{"refusals": [{"event_id", "room_id", "kind", "reason", "rule",
            "plugin", "refused_ts"}, ...], "next_batch": token or None}``.
        :raises MatrixError: 400 ``M_INVALID_PARAM`` for a bad ``kind`` or token.
        """
        if kind is not None and kind not in REFUSAL_KINDS:
            raise MatrixError(400, "M_INVALID_PARAM", "kind must be rejected or soft_failed")
        before = None
        if from_token is not None:
            if not (from_token.isascii() and from_token.isdigit() and len(from_token) <= 19):
                raise MatrixError(400, "M_INVALID_PARAM", "Invalid from token")
            before = int(from_token)
        limit = clamp(limit, 1, REFUSALS_LIMIT_MAX)
        rows = await self._store.get_refused_events(room_id, kind=kind, limit=limit, before_nid=before)
        return {
            "refusals": [
                {
                    "event_id": r.event_id,
                    "room_id": r.room_id,
                    "kind": r.kind,
                    "reason": r.reason,
                    "rule": r.rule,
                    "plugin": r.plugin,
                    "refused_ts": r.refused_ts,
                }
                for r in rows
            ],
            "next_batch": str(rows[-1].event_nid) if len(rows) == limit else None,
        }
