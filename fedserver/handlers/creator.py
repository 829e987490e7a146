"""Builds this server's events on a room's current state and takes them in through the pipeline."""

from __future__ import annotations

import secrets
from typing import Any, Mapping, Optional

from twisted.internet.interfaces import IReactorTime

from fedserver.auth.selection import select_auth_events
from fedserver.events.builder import build_event
from fedserver.events.hashing import compute_reference_hash, unpadded_base64
from fedserver.events.model import Event
from fedserver.handlers.pipeline import Outcome, RoomPipeline
from fedserver.room_versions import EventFormat, RoomVersion
from fedserver.storage.interface import StateKey

#: The most prev events a new event cites (the spec allows 20; fewer keeps events small).
MAX_PREV_EVENTS = 10


class EventCreator:
    """Makes events for local users: prev events from the room's forward extremities, auth
    events by the spec's selection from the current state, depth one more than the deepest
    prev, hashed and signed with our key, then checked and persisted by the pipeline.

    :param clock: for ``origin_server_ts``.
    :param store: to read prev events (depth, V1 edge hashes).
    :param pipeline: the :class:`RoomPipeline`.
    :param server_name: ours.
    :param signing_key: our signing key.
    """

    def __init__(self, clock: IReactorTime, store, pipeline: RoomPipeline, server_name: str, signing_key: Any):
        self._clock = clock
        self._store = store
        self._pipeline = pipeline
        self._server_name = server_name
        self._signing_key = signing_key

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
    ) -> tuple[Event, Outcome]:
        """Build an event on the room's current state and take it in.

        :returns: ``(event, outcome)``; a rejected event (``outcome.status ==
            "rejected"``) was not stored.
        """

        async def build(state: Mapping[StateKey, str], extremities: set[str]) -> Event:
            fields = await self.prepare(
                room_id, rv, state, extremities, type=type, sender=sender, content=content, state_key=state_key
            )
            return build_event(
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

        return await self._pipeline.create_local(room_id, build)
