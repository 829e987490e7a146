"""Relations for clients: /relations, /threads, the aggregations bundled into served events, and the checks on new related events."""

# Client-server API: "Relationships API" (GET /v1/rooms/{roomId}/relations/{eventId}
# [/{relType}[/{eventType}]], with from/to/limit/dir/recurse), "Querying threads in a
# room" (GET /v1/rooms/{roomId}/threads), "Aggregations of child events" (bundled under
# unsigned.m.relations; the aggregation rules themselves are pure, in
# fedserver.relations.aggregation), "Validation of m.thread relationships" and "Avoiding
# duplicate annotations".
#
# "When a parent event is redacted, the child events which pointed to that parent remain,
# however when a child event is redacted then the relationship is broken. Therefore, the
# server needs to de-aggregate or disassociate the event once the relationship is lost":
# children with an applicable redaction are left out of every aggregation and listing.
# Children the user may not see (history visibility) are left out as well, and so are
# children sent by users the reader ignores (spec "Ignoring Users"; the note in
# "Aggregations of child events"): not listed, not counted, never a thread's latest event.

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from fedserver.errors import M_UNKNOWN, MatrixError, invalid_param
from fedserver.events.model import Event
from fedserver.handlers.rooms.client_events import ClientEventSource, client_event, transaction_scope
from fedserver.relations.aggregation import (
    ANNOTATION,
    REFERENCE,
    REPLACE,
    THREAD,
    EventFacts,
    bundle,
    latest_replacement,
    may_start_thread,
    parse_relation,
)
from fedserver.handlers.rooms.rooms import parse_topo_token, topo_token
from fedserver.handlers.requester import Requester

M_DUPLICATE_ANNOTATION = "M_DUPLICATE_ANNOTATION"

#: /relations and /threads: default and largest page.
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
#: Levels /relations follows with ``recurse=true`` (spec: "Homeservers SHOULD traverse at
#: least 3 levels of relationships").
RECURSION_DEPTH = 3
#: Children followed per level when recursing.
MAX_PER_LEVEL = 1000


def _facts(e: Event) -> EventFacts:
    return EventFacts(e.event_id, e.type, e.sender, e.origin_server_ts, e.state_key, e.content)


class RelationsHandler:
    """Relations between events for clients.

    :param store: the store (``store.relations``).
    :param source: the :class:`ClientEventSource` (visibility, redactions, the client
        format); the handler installs itself as its ``relations`` so that served events
        carry their bundled aggregations.
    :param timeline: the :class:`~fedserver.handlers.rooms.timeline.TimelineHandler`
        (access checks, tokens).
    """

    def __init__(self, store: Any, source: ClientEventSource, timeline: Any) -> None:
        self.store = store
        self.source = source
        self.timeline = timeline
        source.relations = self

    # -- bundled aggregations ------------------------------------------------------------

    async def bundle(
        self,
        user_id: str,
        events: Sequence[Event],
        *,
        include_room_id: bool = True,
        redacted: Optional[Mapping[str, Any]] = None,
        _nested: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """``{event_id: m.relations}`` for those of ``events`` with aggregations.

        "State events do not currently receive bundled aggregations."

        :param redacted: the events among ``events`` that are redacted (their edits are
            not bundled: "If the original event is redacted, any m.replace relationship
            should not be bundled with it").
        """
        redacted = redacted or {}
        parents = [e for e in events if e.state_key is None and e.room_id is not None]
        out: dict[str, dict[str, Any]] = {}
        by_room: dict[str, list[Event]] = {}
        for e in parents:
            by_room.setdefault(e.room_id, []).append(e)
        for room_id, group in by_room.items():
            out.update(await self._bundle_room(user_id, room_id, group, include_room_id, redacted, _nested))
        return out

    async def _bundle_room(
        self,
        user_id: str,
        room_id: str,
        parents: list[Event],
        include_room_id: bool,
        redacted: Mapping[str, Any],
        nested: bool,
    ) -> dict[str, dict[str, Any]]:
        ignored = await self._ignored(user_id)
        rows = await self.store.relations.get_aggregation_rows(
            room_id, [e.event_id for e in parents], user_id, exclude_senders=ignored
        )
        wanted = {c for cs in rows.edits.values() for c in cs}
        wanted.update(c for _, latest in rows.threads.values() for c in latest)
        if not wanted and not rows.references:
            return {}
        children = await self._usable(user_id, room_id, wanted, rows.redacted)
        gone = await self._redacted(room_id, rows.redacted)
        out: dict[str, dict[str, Any]] = {}
        for parent in parents:
            pid = parent.event_id
            replacement = None
            if pid in rows.edits and pid not in redacted:
                edits = [children[c] for c in rows.edits[pid] if c in children]
                best = latest_replacement(_facts(parent), [_facts(e) for e in edits])
                if best is not None:
                    replacement = client_event(children[best.event_id], self.source.now_ms(), include_room_id=include_room_id)
            thread = None
            if pid in rows.threads:
                count, latest_ids = rows.threads[pid]
                count -= len(await self._thread_redactions(room_id, pid, gone, rows.redacted, ignored))
                latest = next((children[c] for c in latest_ids if c in children), None)
                if latest is not None and count > 0:
                    # "child events of the latest_event should themselves be aggregated"
                    # (one level: the server "should be careful to avoid loops").
                    [serialized] = await self.source.serialize([latest], user_id=user_id, include_room_id=include_room_id)
                    if not nested:
                        inner = await self.bundle(user_id, [latest], include_room_id=include_room_id, _nested=True)
                        if inner.get(latest.event_id):
                            serialized["unsigned"]["m.relations"] = inner[latest.event_id]
                    participated = parent.sender == user_id or pid in rows.participated
                    thread = (serialized, count, participated)
            references = [c for c in rows.references.get(pid, []) if c not in gone]
            found = bundle(replacement=replacement, thread=thread, references=references)
            if found:
                out[pid] = found
        return out

    async def _ignored(self, user_id: str) -> frozenset[str]:
        """Whom the user ignores (their children are in no aggregation)."""
        ignored = getattr(self.source, "ignored", None)
        return await ignored.get(user_id) if ignored is not None else frozenset()

    async def _thread_redactions(
        self, room_id: str, root_id: str, gone: set[str], candidates: set[str], ignored: frozenset[str] = frozenset()
    ) -> set[str]:
        """The redacted events of a thread (its redactions that apply), but for those of
        ignored senders (not counted at all)."""
        ids = await self.store.relations.get_redacted_thread_events(room_id, root_id, ignored)
        unknown = [i for i in ids if i not in candidates]
        if unknown:
            gone = gone | await self._redacted(room_id, unknown)
        return {i for i in ids if i in gone}

    async def _redacted(self, room_id: str, ids: Any) -> set[str]:
        """Those of ``ids`` whose indexed redaction applies."""
        ids = list(ids)
        if not ids:
            return set()
        events = await self.store.get_events(ids)
        found = await self.source.applicable_redactions([e for e in events.values() if e.room_id == room_id])
        return set(found)

    async def _usable(self, user_id: str, room_id: str, ids: Any, redaction_candidates: set[str]) -> dict[str, Event]:
        """The events of ``ids`` in the room's DAG, not redacted, that the user may see."""
        ids = list(ids)
        if not ids:
            return {}
        metas = await self.store.get_event_meta(ids)
        events = await self.store.get_events([i for i, m in metas.items() if m.room_id == room_id and not (
            m.outlier or m.rejected or m.soft_failed)])
        gone = await self._redacted(room_id, [i for i in events if i in redaction_candidates])
        items = [(metas[i].event_nid, e) for i, e in events.items() if i not in gone]
        joined_until, joined_since = await self.source.joined_bounds(room_id, user_id)
        visible = await self.source.filter_for_user(user_id, items, joined_until=joined_until, joined_since=joined_since)
        return {e.event_id: e for _, e in visible}

    # -- GET /relations ------------------------------------------------------------------

    async def relations(
        self,
        requester: Requester,
        room_id: str,
        event_id: str,
        *,
        rel_type: Optional[str] = None,
        event_type: Optional[str] = None,
        from_token: Optional[str] = None,
        to_token: Optional[str] = None,
        direction: str = "b",
        limit: Optional[int] = None,
        recurse: Optional[bool] = None,
    ) -> dict[str, Any]:
        """``GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]``: the child
        events the user may see, "ordered topologically most-recent first" (``dir=f``:
        oldest first), from ``from`` (a token of this endpoint, /messages or /sync) up to
        ``to``; with ``recurse``, children of children too, up to
        :data:`RECURSION_DEPTH` levels ("Filters specified via event_type or rel_type will
        be applied to all events returned, whether direct or indirect").

        :raises MatrixError: 404 if the parent is unknown or not visible; 400 for a bad
            ``dir`` or token.
        """
        if direction not in ("b", "f"):
            raise invalid_param("dir", "dir must be 'b' or 'f'")
        backwards = direction == "b"
        limit = DEFAULT_LIMIT if limit is None else max(1, min(int(limit), MAX_LIMIT))
        user_id = requester.user_id
        _, _, (joined_until, joined_since) = await self.timeline._visible_event(requester, room_id, event_id)
        from_pos = await self.timeline.start_position(room_id, from_token, backwards) if from_token is not None else None
        to_pos = await self.timeline.start_position(room_id, to_token, not backwards) if to_token is not None else None
        depth = RECURSION_DEPTH if recurse else 1
        parents = [event_id]
        level = [event_id]
        for _ in range(depth - 1):
            rows = await self.store.relations.get_children(
                room_id, level, rel_type=rel_type, event_type=event_type, limit=MAX_PER_LEVEL
            )
            level = [r[1] for r in rows if r[1] not in parents]
            if not level:
                break
            parents.extend(level)
        rows = await self.store.relations.get_children(
            room_id, parents, rel_type=rel_type, event_type=event_type, from_pos=from_pos, to_pos=to_pos,
            backwards=backwards, limit=limit,
        )
        ids = [r[1] for r in rows]
        metas = await self.store.get_event_meta(ids)
        loaded = await self.store.get_events(ids)
        items = [(metas[i].event_nid, loaded[i]) for i in ids if i in loaded and i in metas]
        visible = await self.source.filter_for_user(user_id, items, joined_until=joined_until, joined_since=joined_since)
        gone = await self._redacted(room_id, [e.event_id for _, e in visible])
        chunk_events = [e for _, e in visible if e.event_id not in gone]
        out: dict[str, Any] = {
            "chunk": await self.source.serialize(
                chunk_events, user_id=user_id, scope=transaction_scope(requester), aggregations=True
            )
        }
        if len(rows) == limit:
            last = rows[-1][0]
            out["next_batch"] = topo_token((last[0], last[1] - 1) if backwards else last)
        if from_token is not None:
            out["prev_batch"] = from_token
        if recurse is not None:
            out["recursion_depth"] = depth
        return out

    # -- GET /threads ---------------------------------------------------------------------

    async def threads(
        self,
        requester: Requester,
        room_id: str,
        *,
        include: str = "all",
        from_token: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> dict[str, Any]:
        """``GET /rooms/{roomId}/threads``: the thread roots the user may see, the one
        with the newest thread event first, each with its bundled aggregations; with
        ``include=participated`` only threads the user sent the root of or an event in.

        :raises MatrixError: 400 ``M_INVALID_PARAM`` for a bad ``include`` or token; 403
            for a user who may not read the room.
        """
        if include not in ("all", "participated"):
            raise invalid_param("include", "include must be 'all' or 'participated'")
        limit = DEFAULT_LIMIT if limit is None else max(1, min(int(limit), MAX_LIMIT))
        before = None
        if from_token is not None:
            before = parse_topo_token(from_token)
            if before is None:
                raise invalid_param("from", "Unknown pagination token")
        user_id = requester.user_id
        joined_until, joined_since = await self.timeline.bounds(room_id, user_id)
        roots = await self.store.relations.get_thread_roots(
            room_id, participant=user_id if include == "participated" else None, before=before, limit=limit
        )
        ids = [r.root_id for r in roots]
        metas = await self.store.get_event_meta(ids)
        loaded = await self.store.get_events(ids)
        items = [
            (metas[i].event_nid, loaded[i])
            for i in ids
            if i in loaded and i in metas and metas[i].room_id == room_id
            and not (metas[i].outlier or metas[i].rejected or metas[i].soft_failed)
        ]
        visible = await self.source.filter_for_user(user_id, items, joined_until=joined_until, joined_since=joined_since)
        out: dict[str, Any] = {
            "chunk": await self.source.serialize(
                [e for _, e in visible], user_id=user_id, scope=transaction_scope(requester), aggregations=True
            )
        }
        if len(roots) == limit:
            out["next_batch"] = topo_token(roots[-1].latest)
        return out

    # -- new events ---------------------------------------------------------------------

    async def check_new_event(self, room_id: str, sender: str, event_type: str, content: Mapping[str, Any]) -> None:
        """Checks on an event a client sends with a relation.

        - "Servers SHOULD reject client requests which attempt to start a thread off an
          event with an m.relates_to property" (400 ``M_UNKNOWN``).
        - "Homeservers should prevent users from sending a second annotation for a given
          event with identical event type and annotation key (unless the first event has
          been redacted)" (400 ``M_DUPLICATE_ANNOTATION``).
        """
        rel = parse_relation(content)
        if rel is None:
            return
        if rel.rel_type == THREAD:
            parent = await self.store.get_event(rel.event_id)
            if parent is not None and parent.room_id == room_id and not may_start_thread(parent.content):
                raise MatrixError(400, M_UNKNOWN, "Cannot start a thread from an event with a relation")
        elif rel.rel_type == ANNOTATION and rel.key is not None:
            earlier = await self.store.relations.has_annotation(room_id, rel.event_id, sender, event_type, rel.key)
            if earlier:
                gone = await self._redacted(room_id, earlier)
                if any(e not in gone for e in earlier):
                    raise MatrixError(400, M_DUPLICATE_ANNOTATION, "You already sent this annotation")


__all__ = ["RelationsHandler", "M_DUPLICATE_ANNOTATION", "REFERENCE", "REPLACE"]
