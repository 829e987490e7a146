"""Rooms for administrators: listing with members and state, blocking, purging history, deleting."""

from __future__ import annotations

import secrets
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.errors import MatrixError, bad_json, forbidden, invalid_param, not_found
from fedserver.handlers.rooms.client_events import client_event

log = Logger()

#: What the room listing can be sorted by (Synapse's ``order_by`` values).
ROOM_ORDERS = (
    "name", "canonical_alias", "joined_members", "joined_local_members", "version", "creator", "encryption",
    "federatable", "public", "join_rules", "guest_access", "history_visibility", "state_events",
)
#: How many finished purge and delete jobs are remembered for their status endpoints.
MAX_JOBS = 1000


def blocked_error() -> MatrixError:
    """403 ``M_FORBIDDEN`` for a join to a blocked room."""
    return forbidden("This room has been blocked on this server")


class RoomBlocks:
    """The rooms an administrator blocked, in memory (loaded at start, written through):
    :meth:`is_blocked` is asked, synchronously, by the membership handlers before our
    users join, knock or accept an invite, and before another server joins or knocks
    through us.

    :param store: the store (``admin`` attribute).
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        self._blocked: dict[str, tuple[Optional[str], int]] = {}

    async def load(self) -> None:
        self._blocked = dict(await self._store.admin.get_blocked_rooms())

    def is_blocked(self, room_id: str) -> bool:
        return room_id in self._blocked

    def blocked_by(self, room_id: str) -> Optional[str]:
        entry = self._blocked.get(room_id)
        return entry[0] if entry else None

    async def block(self, room_id: str, by: Optional[str]) -> None:
        await self._store.admin.block_room(room_id, by)
        self._blocked.setdefault(room_id, (by, 0))
        log.info("Room {room_id} blocked by {by}", room_id=room_id, by=by or "an administrator")

    async def unblock(self, room_id: str) -> None:
        await self._store.admin.unblock_room(room_id)
        self._blocked.pop(room_id, None)
        log.info("Room {room_id} unblocked", room_id=room_id)


def _str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def room_json(row: Any) -> dict[str, Any]:
    """One room as the admin listing shows it (Synapse's fields)."""
    state = row.state
    create = state.get("m.room.create", {})
    join_rule = _str(state.get("m.room.join_rules", {}).get("join_rule"))
    return {
        "room_id": row.room_id,
        "name": _str(state.get("m.room.name", {}).get("name")),
        "canonical_alias": _str(state.get("m.room.canonical_alias", {}).get("alias")),
        "topic": _str(state.get("m.room.topic", {}).get("topic")),
        "avatar": _str(state.get("m.room.avatar", {}).get("url")),
        "joined_members": row.joined_members,
        "joined_local_members": row.joined_local_members,
        "version": row.room_version,
        "creator": row.creator or _str(create.get("creator")),
        "encryption": _str(state.get("m.room.encryption", {}).get("algorithm")),
        "federatable": create.get("m.federate", True) is not False,
        "public": row.is_public,
        "join_rules": join_rule,
        "guest_access": _str(state.get("m.room.guest_access", {}).get("guest_access")),
        "history_visibility": _str(state.get("m.room.history_visibility", {}).get("history_visibility")),
        "state_events": row.state_events,
        "room_type": _str(create.get("type")),
    }


def _sort_key(order_by: str) -> Callable[[dict[str, Any]], Any]:
    def key(room: dict[str, Any]) -> Any:
        value = room.get(order_by)
        # None sorts last ascending, like Synapse's NULLS LAST; ties by room id.
        return (value is None, value if value is not None else 0, room["room_id"])

    return key


class AdminRooms:
    """The admin API's room operations.

    :param store: the store.
    :param blocks: the :class:`RoomBlocks`.
    :param membership: the :class:`~fedserver.handlers.rooms.membership.MembershipHandler`
        (our users leave a deleted room through it).
    :param pipeline: the :class:`~fedserver.handlers.rooms.pipeline.RoomPipeline` (forgets
        a purged room's cached state).
    :param server_name: ours.
    :param clock: ``seconds()`` (event ages).
    """

    def __init__(self, store: Any, blocks: RoomBlocks, membership: Any, pipeline: Any, server_name: str, clock: Any) -> None:
        self._store = store
        self.blocks = blocks
        self._membership = membership
        self._pipeline = pipeline
        self._server_name = server_name
        self._clock = clock
        self._jobs: dict[str, dict[str, Any]] = {}

    @staticmethod
    def check_room_id(room_id: Any) -> str:
        # Room ids of v12 rooms have no ":server" part.
        if (not isinstance(room_id, str) or not room_id.startswith("!") or len(room_id) < 2
                or len(room_id.encode("utf-8", "surrogatepass")) > 255 or any(ord(c) < 0x20 for c in room_id)):
            raise invalid_param("room_id", "Not a valid room ID")
        return room_id

    async def _known(self, room_id: str) -> Any:
        rows = await self._store.admin.list_rooms(self._server_name, [self.check_room_id(room_id)])
        if not rows:
            raise not_found("Room not found")
        return rows[0]

    # -- reading ----------------------------------------------------------------------------

    async def list_rooms(
        self, *, offset: int = 0, limit: int = 100, order_by: str = "name", backwards: bool = False,
        search_term: Optional[str] = None,
    ) -> dict[str, Any]:
        """``GET /_synapse/admin/v1/rooms``: ``{rooms, offset, total_rooms, next_batch,
        prev_batch}``; ``search_term`` matches the room id, name or canonical alias."""
        if order_by not in ROOM_ORDERS:
            raise invalid_param("order_by", f"order_by must be one of {', '.join(ROOM_ORDERS)}")
        rooms = [room_json(r) for r in await self._store.admin.list_rooms(self._server_name)]
        if search_term:
            term = search_term.lower()
            rooms = [r for r in rooms if any(term in (r[k] or "").lower() for k in ("room_id", "name", "canonical_alias"))]
        # Numbers largest first by default, like Synapse; text A to Z.
        numeric = order_by in ("joined_members", "joined_local_members", "state_events")
        rooms.sort(key=_sort_key(order_by), reverse=numeric != backwards)
        page = rooms[offset:offset + limit]
        out: dict[str, Any] = {"rooms": page, "offset": offset, "total_rooms": len(rooms)}
        if offset + len(page) < len(rooms):
            out["next_batch"] = offset + len(page)
        if offset > 0:
            out["prev_batch"] = max(0, offset - limit)
        return out

    async def get_room(self, room_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v1/rooms/{roomId}``: the listing's fields and ``blocked``."""
        out = room_json(await self._known(room_id))
        out["blocked"] = self.blocks.is_blocked(room_id)
        return out

    async def members(self, room_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v1/rooms/{roomId}/members``: joined members."""
        await self._known(room_id)
        members = sorted(await self._store.get_room_members(room_id, "join"))
        return {"members": members, "total": len(members)}

    async def state(self, room_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v1/rooms/{roomId}/state``: the current state events in the
        client format."""
        await self._known(room_id)
        ids = await self._store.get_current_state_ids(room_id)
        events = await self._store.get_events(list(ids.values()))
        now = int(self._clock.seconds() * 1000)
        state = [client_event(events[i], now) for k, i in sorted(ids.items()) if i in events]
        return {"state": state}

    def block_status(self, room_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v1/rooms/{roomId}/block``."""
        self.check_room_id(room_id)
        out: dict[str, Any] = {"block": self.blocks.is_blocked(room_id)}
        if out["block"] and self.blocks.blocked_by(room_id):
            out["user_id"] = self.blocks.blocked_by(room_id)
        return out

    async def set_block(self, room_id: str, block: Any, by: Optional[str]) -> dict[str, Any]:
        """``PUT /_synapse/admin/v1/rooms/{roomId}/block`` (rooms we do not know may be
        blocked in advance)."""
        self.check_room_id(room_id)
        if type(block) is not bool:
            raise bad_json("block must be a boolean")
        if block:
            await self.blocks.block(room_id, by)
        else:
            await self.blocks.unblock(room_id)
        return {"block": block}

    # -- purging history --------------------------------------------------------------------

    async def purge_history(
        self, room_id: str, *, event_id: Optional[str] = None, before_ts: Optional[int] = None, delete_local: bool = False,
    ) -> dict[str, Any]:
        """Delete the room's history before a point (an event: everything of lower depth;
        or a time in ms), keeping what the room's state needs (see
        :meth:`fedserver.storage.operations.admin_store.AdminStore.purge_history`); our users' events
        too unless ``delete_local``.

        :returns: ``{"purge_id"}`` at once; the purge runs in the background (status:
            :meth:`job_status`).
        :raises MatrixError: 400 without a point or with one in another room, 404 for an
            unknown room or event.
        """
        await self._known(room_id)
        depth = None
        if event_id is not None:
            if not isinstance(event_id, str) or not event_id.startswith("$"):
                raise invalid_param("purge_up_to_event_id", "Not a valid event ID")
            event = await self._store.get_event(event_id)
            if event is None:
                raise not_found("Event not found")
            if event.room_id != room_id:
                raise bad_json("The event is not in this room")
            depth = event.depth
        elif before_ts is None:
            raise bad_json("Give purge_up_to_event_id or purge_up_to_ts")
        elif type(before_ts) is not int or before_ts < 0:
            raise bad_json("purge_up_to_ts must be a timestamp in milliseconds")
        local = None if delete_local else ":" + self._server_name

        async def run() -> dict[str, Any]:
            result = await self._store.admin.purge_history(
                room_id, before_depth=depth, before_ts=None if depth is not None else before_ts, local_suffix=local,
            )
            log.info("Purged {n} events of {room_id} ({kept} older state events kept)", n=result.deleted_events,
                     room_id=room_id, kept=result.kept_state_events)
            return {"deleted_events": result.deleted_events, "kept_state_events": result.kept_state_events}

        return {"purge_id": self._start_job("purge", room_id, run)}

    # -- deleting ---------------------------------------------------------------------------

    async def delete_room(self, room_id: str, body: dict[str, Any], by: Optional[str]) -> dict[str, Any]:
        """Delete a room from this server (``DELETE /_synapse/admin/v1/rooms/{roomId}``):
        with ``block`` (default false) it is blocked first so nobody of ours joins again;
        every user of ours leaves it (invites are rejected, knocks withdrawn); its local
        aliases and its directory entry go; with ``purge`` (default true) everything stored
        about it is deleted once our users' leaves are queued for the other servers.

        :returns: ``{kicked_users, failed_to_kick_users, local_aliases, new_room_id}``
            (``new_room_id`` is always null: moving users to a new room is not supported).
        :raises MatrixError: 400 for bad fields or ``new_room_user_id``, 404 for a room we
            do not know (unless only blocking it).
        """
        self.check_room_id(room_id)
        block, purge = body.get("block", False), body.get("purge", True)
        for key, value in (("block", block), ("purge", purge), ("force_purge", body.get("force_purge", False))):
            if type(value) is not bool:
                raise bad_json(f"{key} must be a boolean")
        if body.get("new_room_user_id") is not None:
            raise bad_json("new_room_user_id is not supported: users cannot be moved to a new room here")
        if block:
            await self.blocks.block(room_id, by)
        known = await self._store.admin.list_rooms(self._server_name, [room_id])
        if not known:
            if block:
                return {"kicked_users": [], "failed_to_kick_users": [], "local_aliases": [], "new_room_id": None}
            raise not_found("Room not found")
        kicked: list[str] = []
        failed: list[str] = []
        for user_id in await self._local_members(room_id):
            try:
                await self._membership.leave(user_id, room_id, reason=_str(body.get("message")))
                kicked.append(user_id)
            except Exception as e:  # noqa: BLE001 - one user must not stop the others
                log.warn("Deleting {room_id}: {user_id} could not leave: {error}", room_id=room_id, user_id=user_id,
                         error=getattr(e, "error", None) or repr(e))
                failed.append(user_id)
        aliases = await self._store.rooms.get_aliases_for_room(room_id)
        for alias in aliases:
            await self._store.rooms.delete_alias(alias)
        await self._store.set_room_public(room_id, False)
        # A user who could not leave would lose the room under their feet: only purge
        # anyway when asked to (force_purge).
        if purge and (not failed or body.get("force_purge") is True):
            n = await self._store.admin.delete_room_data(room_id)
            self._pipeline.invalidate(room_id)
            log.info("Deleted room {room_id}: {n} events purged", room_id=room_id, n=n)
        return {"kicked_users": kicked, "failed_to_kick_users": failed, "local_aliases": aliases, "new_room_id": None}

    async def _local_members(self, room_id: str) -> list[str]:
        suffix = ":" + self._server_name
        out: list[str] = []
        for membership in ("join", "invite", "knock"):
            out += [u for u in await self._store.get_room_members(room_id, membership) if u.endswith(suffix)]
        return sorted(set(out))

    def delete_room_in_background(self, room_id: str, body: dict[str, Any], by: Optional[str]) -> dict[str, Any]:
        """``DELETE /_synapse/admin/v2/rooms/{roomId}``: :meth:`delete_room` as a job.

        :returns: ``{"delete_id"}``.
        """
        self.check_room_id(room_id)
        return {"delete_id": self._start_job("delete", room_id, lambda: self.delete_room(room_id, body, by))}

    # -- jobs ---------------------------------------------------------------------------------

    def _start_job(self, kind: str, room_id: str, run: Callable[[], Any]) -> str:
        job_id = secrets.token_urlsafe(12)
        job: dict[str, Any] = {"kind": kind, "room_id": room_id, "status": "active"}
        self._jobs[job_id] = job
        while len(self._jobs) > MAX_JOBS:
            self._jobs.pop(next(iter(self._jobs)))

        def done(result: Any) -> None:
            job["status"] = "complete"
            job["result"] = result

        def failed(failure: Any) -> None:
            job["status"] = "failed"
            job["error"] = failure.value.error if failure.check(MatrixError) else failure.getErrorMessage()
            log.failure("Admin {kind} of {room_id} failed", failure, kind=kind, room_id=room_id)

        d = defer.ensureDeferred(run())
        d.addCallbacks(done, failed)
        return job_id

    def job_status(self, kind: str, job_id: str) -> dict[str, Any]:
        """The status of a purge (``{status, error?}``) or a deletion (``{status,
        shutdown_room, error?}``).

        :raises MatrixError: 404 for an unknown (or forgotten) job.
        """
        job = self._jobs.get(job_id)
        if job is None or job["kind"] != kind:
            raise not_found(f"No {kind} with this id")
        out: dict[str, Any] = {"status": "shutting_down" if kind == "delete" and job["status"] == "active" else job["status"]}
        if kind == "delete":
            out["delete_id"] = job_id
            out["room_id"] = job["room_id"]
            if job["status"] == "complete":
                out["shutdown_room"] = job["result"]
        elif job["status"] == "complete":
            out.update(job["result"])
        if job["status"] == "failed":
            out["error"] = job["error"]
        return out

    def delete_statuses(self, room_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v2/rooms/{roomId}/delete_status``."""
        ids = [j for j, job in self._jobs.items() if job["kind"] == "delete" and job["room_id"] == room_id]
        if not ids:
            raise not_found("No deletion of this room")
        return {"results": [self.job_status("delete", j) for j in ids]}


__all__ = ["AdminRooms", "ROOM_ORDERS", "RoomBlocks", "blocked_error", "room_json"]
