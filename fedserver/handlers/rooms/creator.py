"""Builds this server's events on a room's current state and takes them in through the pipeline."""

from __future__ import annotations

import secrets
from typing import Any, Mapping, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedserver.auth.selection import select_auth_events
from fedserver.events.builder import build_event
from fedserver.events.hashing import compute_reference_hash, unpadded_base64
from fedserver.events.model import Event
from fedserver.handlers.rooms.pipeline import Outcome, RoomPipeline
from fedserver.room_versions import EventFormat, RoomVersion
from fedserver.storage.interface import StateKey

#: The most prev events a new event cites (the spec allows 20; fewer keeps events small).
MAX_PREV_EVENTS = 10

log = Logger()


class EventCreator:
    """Makes events for local users: prev events from the room's forward extremities, auth
    events by the spec's selection from the current state, depth one more than the deepest
    prev, hashed and signed with our key, then checked and persisted by the pipeline.

    :param clock: for ``origin_server_ts``.
    :param store: to read prev events (depth, V1 edge hashes).
    :param pipeline: the :class:`RoomPipeline`.
    :param server_name: ours.
    :param signing_key: our signing key.
    :param plugin_manager: for ``fedserver_sign_local_event`` (plugins adding other
        servers' signatures, e.g. a policy server's, before an event is taken in); the
        pipeline's by default.
    """

    def __init__(
        self, clock: IReactorTime, store, pipeline: RoomPipeline, server_name: str, signing_key: Any,
        plugin_manager: Any = None,
    ):
        self._clock = clock
        self._store = store
        self._pipeline = pipeline
        self._server_name = server_name
        self._signing_key = signing_key
        self._pm = plugin_manager if plugin_manager is not None else getattr(pipeline, "_pm", None)

    def now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def create_room_event(self, rv: RoomVersion, *, sender: str, content: Mapping[str, Any]) -> tuple[Event, Outcome]:
        """Make the ``m.room.create`` event of a new room and take it in.

        :returns: ``(event, outcome)``; the room id is ``event.room_id``.
        """
        room_id = None
        if not rv.room_id_from_create_event:
            room_id = f"!{secrets.token_urlsafe(18)}:{self._server_name}"
        event = build_event(
            rv,
            room_id=room_id,
            type="m.room.create",
            sender=sender,
            content=content,
            state_key="",
            prev_event_ids=[],
            auth_event_ids=[],
            depth=1,
            origin_server_ts=self.now_ms(),
            server_name=self._server_name,
            signing_key=self._signing_key,
        )
        return await self._pipeline.create_local(event.room_id, lambda state, ext: event)

    async def prepare(
        self,
        room_id: str,
        rv: RoomVersion,
        state: Mapping[StateKey, str],
        extremities: set[str],
        *,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: Optional[str] = None,
    ) -> dict[str, Any]:
        """The fields a new event on this state needs: ``prev_event_ids``,
        ``auth_event_ids``, ``depth`` and (format V1) ``edge_hashes``."""
        prev_ids = sorted(extremities)
        metas = await self._store.get_event_meta(prev_ids)
        prev_ids.sort(key=lambda p: -(metas[p].depth if p in metas else 0))
        prev_ids = prev_ids[:MAX_PREV_EVENTS]
        depth = max((metas[p].depth for p in prev_ids if p in metas), default=0) + 1
        fields = {"type": type, "state_key": state_key, "sender": sender, "content": content}
        auth_ids = select_auth_events(rv, fields, state)
        edge_hashes = None
        if rv.event_format == EventFormat.V1:
            referenced = await self._store.get_events(prev_ids + auth_ids)
            edge_hashes = {eid: unpadded_base64(compute_reference_hash(ev.pdu, rv)) for eid, ev in referenced.items()}
        return {
            "prev_event_ids": prev_ids,
            "auth_event_ids": auth_ids,
            "depth": min(depth, 2**53 - 1),
            "edge_hashes": edge_hashes,
        }

    async def template(
        self,
        room_id: str,
        rv: RoomVersion,
        *,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: Optional[str] = None,
    ) -> tuple[dict[str, Any], Mapping[StateKey, str]]:
        """An unsigned event template on the room's current state, as ``make_join`` /
        ``make_leave`` / ``make_knock`` answer with: the joining server completes, hashes and
        signs it.

        :returns: ``(template, current state)``.
        """
        state = await self._pipeline.current_state(room_id)
        extremities = await self._pipeline.forward_extremities(room_id)
        fields = await self.prepare(
            room_id, rv, state, extremities, type=type, sender=sender, content=content, state_key=state_key
        )
        event = build_event(
            rv, room_id=room_id, type=type, sender=sender, content=content, state_key=state_key,
            origin_server_ts=self.now_ms(), server_name=self._server_name, signing_key=self._signing_key,
            **fields,
        )
        template = {k: v for k, v in event.pdu.items() if k not in ("hashes", "signatures", "event_id", "unsigned")}
        template["origin"] = self._server_name
        return template, state

    async def send(
        self,
        room_id: str,
        rv: RoomVersion,
        *,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: Optional[str] = None,
        redacts: Optional[str] = None,
        unsigned: Optional[Mapping[str, Any]] = None,
        client_txn: Optional[tuple[str, str, str, str]] = None,
    ) -> tuple[Event, Outcome]:
        """Build an event on the room's current state and take it in.

        :param client_txn: ``(user_id, scope, txn_id, path)`` of the client request making it,
            recorded in the transaction that stores the event (:attr:`Event.client_txn`).
        :returns: ``(event, outcome)``; a rejected event (``outcome.status ==
            "rejected"``) was not stored.
        """

        async def build(state: Mapping[StateKey, str], extremities: set[str]) -> Event:
            fields = await self.prepare(
                room_id, rv, state, extremities, type=type, sender=sender, content=content, state_key=state_key
            )
            event = build_event(
                rv,
                room_id=room_id,
                type=type,
                sender=sender,
                content=content,
                state_key=state_key,
                origin_server_ts=self.now_ms(),
                server_name=self._server_name,
                signing_key=self._signing_key,
                redacts=redacts,
                unsigned=unsigned,
                **fields,
            )
            if self._pm is not None and self._pm.hook.fedserver_sign_local_event.get_hookimpls():
                await self._add_plugin_signatures(event, rv, state)
            event.client_txn = client_txn
            return event

        return await self._pipeline.create_local(room_id, build)

    async def build_after(
        self,
        rv: RoomVersion,
        state: Mapping[StateKey, str],
        prev: Event,
        known: Mapping[str, Event],
        *,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: Optional[str] = None,
    ) -> Event:
        """Build (not take in) an event following ``prev`` in a chain held in memory, the
        events of a new room before any is stored: ``prev`` is its only prev event, its
        auth events are selected from ``state`` (the state after ``prev``), and ``known``
        holds every event those ids name (for the V1 format's edge hashes).

        :raises EventTooLarge, InvalidEvent: from :func:`build_event`.
        """
        fields = {"type": type, "state_key": state_key, "sender": sender, "content": content}
        auth_ids = select_auth_events(rv, fields, state)
        edge_hashes = None
        if rv.event_format == EventFormat.V1:
            edge_hashes = {
                eid: unpadded_base64(compute_reference_hash(known[eid].pdu, rv)) for eid in [prev.event_id, *auth_ids]
            }
        event = build_event(
            rv, room_id=prev.room_id, type=type, sender=sender, content=content, state_key=state_key,
            prev_event_ids=[prev.event_id], auth_event_ids=auth_ids, depth=min(prev.depth + 1, 2**53 - 1),
            edge_hashes=edge_hashes, origin_server_ts=max(self.now_ms(), prev.origin_server_ts),
            server_name=self._server_name, signing_key=self._signing_key,
        )
        if self._pm is not None and self._pm.hook.fedserver_sign_local_event.get_hookimpls():
            await self._add_plugin_signatures(event, rv, state)
        return event

    async def _add_plugin_signatures(self, event: Event, rv: RoomVersion, state: Mapping[StateKey, str]) -> None:
        """Ask every ``fedserver_sign_local_event`` implementation at once and add the
        signatures they return to the new (not yet shared) PDU; our own are kept."""
        impls = [i for i in self._pm.hook.fedserver_sign_local_event.get_hookimpls() if not (i.hookwrapper or i.wrapper)]
        args = {"event": event, "room_version": rv, "state": state}
        calls = [defer.maybeDeferred(i.function, *[args[a] for a in i.argnames]) for i in impls]
        results = await defer.DeferredList(calls, consumeErrors=True)
        signatures = event.pdu["signatures"]
        for impl, (ok, value) in zip(impls, results):
            if not ok:
                log.failure("fedserver_sign_local_event of {plugin} failed", value, plugin=impl.plugin_name)
                continue
            if value is None:
                continue
            if not isinstance(value, Mapping):
                log.warn("fedserver_sign_local_event of {plugin} returned {t}, not a mapping",
                         plugin=impl.plugin_name, t=type(value).__name__)
                continue
            for server, sigs in value.items():
                if server == self._server_name or not isinstance(server, str) or not isinstance(sigs, Mapping):
                    continue
                for key_id, sig in sigs.items():
                    if isinstance(key_id, str) and isinstance(sig, str) and len(key_id) <= 255 and len(sig) <= 1024:
                        signatures.setdefault(server, {})[key_id] = sig
