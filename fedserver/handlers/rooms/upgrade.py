"""Room upgrades: POST /rooms/{roomId}/upgrade (a replacement room, the tombstone) and what follows a tombstone."""

# Client-server API, "Room Upgrades", "Server behaviour": when the client requests to
# upgrade a known room to a known version, the server:
#
#   1. Checks that the user has permission to send m.room.tombstone events in the room.
#   2. Creates a replacement room with a m.room.create event containing a predecessor
#      field, the applicable room_version, and a type field which is copied from the
#      predecessor room. (v1.16: additional creators are not transferred; they must be
#      given in the /upgrade call. Upgrading to v12 or later, predecessor.event_id MAY be
#      omitted.)
#   3. Replicates transferable state events to the new room (recommended:
#      m.room.server_acl, m.room.encryption, m.room.name, m.room.avatar, m.room.topic,
#      m.room.guest_access, m.room.history_visibility, m.room.join_rules,
#      m.room.power_levels). "Membership events should not be transferred."
#   4. Moves any local aliases to the new room.
#   5. Sends a m.room.tombstone event to the old room.
#   6. If possible, the power levels in the old room should also be modified to prevent
#      sending of events and inviting new users: events_default and invite set to the
#      greater of 50 and users_default + 1.
#
#   "When a user joins the new room, the server should automatically transfer/replicate
#   some of the user's personalized settings such as notifications, tags, etc."
#
# Beyond the spec's list, as the membership rules would otherwise lock people out: bans
# are carried over (a banned user stays banned), and in a room that is not public the
# users who were invited or joined are invited to the new room, so that they can follow
# the tombstone (these are new invites by the upgrading user, not transferred membership
# events). The published directory entry moves with the aliases.

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Optional, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.errors import MatrixError, bad_json, forbidden, invalid_param, missing_param, unsupported_room_version
from fedserver.handlers.rooms.directory import current_power
from fedserver.handlers.rooms.membership import valid_user_id
from fedserver.handlers.rooms.new_room import RoomDraft
from fedserver.room_versions import RoomVersionRegistry, UnknownRoomVersion
from fedserver.handlers.requester import Requester

log = Logger()

#: State replicated into the new room, besides the power levels (spec step 3).
TRANSFERRED_STATE = (
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
)
#: Keys of the old create event's content kept in the new one.
CREATE_CONTENT_KEPT = ("type", "m.federate")
#: Most users invited to the new room of a room that is not public.
MAX_UPGRADE_INVITES = 1000
#: Invites to users of other servers made at once.
REMOTE_INVITE_CONCURRENCY = 5
#: Per-room account data a user's join of the new room copies from the old one.
FOLLOWED_ACCOUNT_DATA = ("m.tag",)


class _Send(Protocol):
    """Sends a state event as the upgrading user (to the new room unless ``room`` says
    otherwise); answers whether it was taken."""

    def __call__(
        self, event_type: str, body: Mapping[str, Any], state_key: str = "", room: str = ...
    ) -> Awaitable[bool]: ...


@dataclass(frozen=True)
class _OldState:
    """The old room's current state when the upgrade starts: the event ids by key, and
    the events of its ``""``-keyed state and of its memberships."""

    state: Mapping[tuple[str, str], str]
    events: Mapping[str, Any]

    @classmethod
    async def load(cls, store: Any, room_id: str) -> "_OldState":
        state = await store.get_current_state_ids(room_id)
        wanted = [v for (t, sk), v in state.items() if sk == "" or t == "m.room.member"]
        return cls(state, await store.get_events(wanted))

    def current(self, event_type: str) -> Optional[Any]:
        """The current event of ``event_type`` with the empty state key, if any."""
        event_id = self.state.get((event_type, ""))
        return self.events.get(event_id) if event_id is not None else None


class RoomUpgradeHandler:
    """``POST /rooms/{roomId}/upgrade`` and following a tombstone.

    :param events: the shared :class:`~fedserver.handlers.rooms.membership.RoomEvents`.
    :param membership: the :class:`~fedserver.handlers.rooms.membership.MembershipHandler`.
    :param room_versions: the versions a room may be upgraded to.
    """

    def __init__(self, events: Any, membership: Any, room_versions: RoomVersionRegistry) -> None:
        self.events = events
        self.store = events.store
        self.membership = membership
        self.room_versions = room_versions
        self._locks: dict[str, defer.DeferredLock] = {}
        #: ``callback(user_id, old_room, new_room)`` (awaited) when a local user joins a
        #: replacement room (or made it by upgrading): other areas carry the user's
        #: settings for the old room over (push rules).
        self.on_followed: list[Callable[[str, str, str], Awaitable[None]]] = []

    async def upgrade(self, requester: Requester, room_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Upgrade ``room_id`` (see the module comment).

        :returns: ``{"replacement_room": new room id}``.
        :raises MatrixError: 400 ``M_MISSING_PARAM`` / ``M_BAD_JSON`` / ``M_INVALID_PARAM``
            for a malformed body, 400 ``M_UNSUPPORTED_ROOM_VERSION``; 403 ``M_FORBIDDEN``
            if the user is not in the room or may not send ``m.room.tombstone``.
        """
        if not isinstance(body, Mapping):
            raise bad_json("Body must be a JSON object")
        if "new_version" not in body:
            raise missing_param("new_version")
        version = body["new_version"]
        if not isinstance(version, str):
            raise bad_json("new_version must be a string")
        try:
            new_rv = self.room_versions.get(version)
        except UnknownRoomVersion:
            raise unsupported_room_version(f"Room version {version!r} is not supported") from None
        extra_creators = body.get("additional_creators", [])
        if not isinstance(extra_creators, list) or not all(valid_user_id(u) for u in extra_creators):
            raise invalid_param("additional_creators", "additional_creators must be a list of user IDs")
        user_id = requester.user_id
        lock = self._locks.setdefault(room_id, defer.DeferredLock())
        try:
            return await lock.run(lambda: defer.ensureDeferred(self._upgrade(user_id, room_id, new_rv, extra_creators)))
        finally:
            if not lock.locked and not lock.waiting and self._locks.get(room_id) is lock:
                del self._locks[room_id]

    async def _upgrade(self, user_id: str, room_id: str, new_rv: Any, extra_creators: list[str]) -> dict[str, Any]:
        """The spec's server behaviour steps 1-6 (see the module comment), in order."""
        power = await self._check_may_upgrade(user_id, room_id)  # 1.
        old = await _OldState.load(self.store, room_id)
        # 2. The replacement room, and the upgrader's join so that the rest can be sent;
        # 3. its transferred state. Built in memory and taken in all at once, as createRoom
        # does (RoomDraft): a refusal or a storage fault half way leaves no half-made
        # replacement room, and the old room untouched.
        content = await self._replacement_create_content(user_id, room_id, new_rv, extra_creators, old)
        draft = await RoomDraft.start(self.events, new_rv, user_id, content)
        new_room = draft.room_id
        log.info("Upgrading {old} to {new} (version {v}) for {user}", old=room_id, new=new_room, v=new_rv.identifier, user=user_id)

        async def add(event_type: str, body: Mapping[str, Any], state_key: str = "", room: str = new_room) -> bool:
            await draft.add(event_type, user_id, body, state_key)
            return True

        join = dict(await self.membership.member_profile(user_id))
        join["membership"] = "join"
        await add("m.room.member", join, user_id)
        await self._replicate_state(user_id, new_rv, power.user_level(user_id), content, old, add)  # 3.
        await draft.commit()
        send = self._sender(user_id, room_id, new_room)
        # 4. Local aliases, the canonical alias and the directory entry move.
        await self._move_aliases(room_id, new_room, old.current("m.room.canonical_alias"), send)
        # Invites so that the members of a room that is not public can follow.
        join_rules = old.current("m.room.join_rules")
        rule = join_rules.content.get("join_rule") if join_rules is not None else "invite"
        if rule != "public":
            await self._invite_members(user_id, new_room, old.state, old.events)
        await self._send_tombstone(user_id, room_id, new_room)  # 5.
        await self._quiet_old_room(old.current("m.room.power_levels"), room_id, send)  # 6.
        # The upgrader joined the replacement room by making it: their settings follow as
        # they do for a member joining it later.
        await self.on_joined(user_id, new_room)
        return {"replacement_room": new_room}

    async def _check_may_upgrade(self, user_id: str, room_id: str) -> Any:
        """Spec "Room Upgrades", server behaviour step 1: "Checks that the user has
        permission to send ``m.room.tombstone`` events in the room" (and is in it).

        :returns: the room's current power (of :func:`current_power`).
        :raises MatrixError: 403 ``M_FORBIDDEN``.
        """
        store = self.store
        old_rv = await self.events.room_version(room_id)
        membership = await store.rooms.get_membership(room_id, user_id) if old_rv is not None else None
        if membership is None or membership.membership != "join":
            raise forbidden("You are not in this room")
        power = await current_power(store, room_id, user_id)
        if power.user_level(user_id) < power.power_levels.required_level("m.room.tombstone", True):
            raise forbidden("You may not upgrade this room (no permission to send m.room.tombstone)")
        return power

    async def _replacement_create_content(
        self, user_id: str, room_id: str, new_rv: Any, extra_creators: list[str], old: "_OldState"
    ) -> dict[str, Any]:
        """Spec "Room Upgrades", server behaviour step 2: the replacement room's
        ``m.room.create`` content, "containing a ``predecessor`` field, the applicable
        ``room_version``, and a ``type`` field which is copied from the predecessor room"
        (and ``m.federate``); from v12 the ``additional_creators`` given in the request
        (those of the old room are not transferred).
        """
        old_create = old.current("m.room.create")
        content: dict[str, Any] = {}
        if old_create is not None:
            for key in CREATE_CONTENT_KEPT:
                if key in old_create.content:
                    content[key] = old_create.content[key]
        predecessor: dict[str, Any] = {"room_id": room_id}
        extremities = await self.store.get_forward_extremities(room_id)
        if extremities:
            predecessor["event_id"] = extremities[0]  # "the last known event in the old room"
        content["predecessor"] = predecessor
        content["room_version"] = new_rv.identifier
        if not new_rv.implicit_room_creator:
            content["creator"] = user_id
        if new_rv.privileged_creators:
            extra = [u for u in dict.fromkeys(extra_creators) if u != user_id]
            if extra:
                content["additional_creators"] = extra
        return content

    def _sender(self, user_id: str, old_room: str, new_room: str) -> "_Send":
        """A ``send(type, content, state_key="", room=new_room)`` for the steps after the
        create event: it answers whether the event was taken, logging a refusal (an upgrade
        carries on without a state event the new room refuses)."""

        async def send(event_type: str, body: Mapping[str, Any], state_key: str = "", room: str = new_room) -> bool:
            try:
                await self.events.send(room, type=event_type, sender=user_id, content=body, state_key=state_key)
                return True
            except MatrixError as e:
                log.warn("Upgrade of {room_id}: {type} not sent to {room}: {e}", room_id=old_room, type=event_type, room=room, e=e.error)
                return False

        return send

    async def _replicate_state(
        self, user_id: str, new_rv: Any, old_level: Any, content: Mapping[str, Any], old: "_OldState", send: "_Send"
    ) -> None:
        """Spec "Room Upgrades", server behaviour step 3: "Replicates transferable state
        events to the new room" (the spec's recommended list, :data:`TRANSFERRED_STATE`,
        and the power levels), and the bans.

        Power levels that let the upgrader make the rest come first, then the
        transferable state, then the power levels as they were (adjusted to the new
        version's rules).
        """
        old_pl = old.current("m.room.power_levels")
        final_pl = self._power_levels(old_pl.content if old_pl is not None else None, new_rv, user_id,
                                      old_level, content.get("additional_creators", []))
        first_pl = dict(final_pl)
        if not new_rv.privileged_creators:
            needed = _needed_level(final_pl)
            users = dict(final_pl.get("users", {}))
            if users.get(user_id, final_pl.get("users_default", 0)) < needed:
                users[user_id] = needed
                first_pl["users"] = users
        await send("m.room.power_levels", first_pl)
        for event_type in TRANSFERRED_STATE:
            event = old.current(event_type)
            if event is not None and event.content:
                await send(event_type, dict(event.content))
        await self._carry_bans(user_id, old, send)
        if first_pl != final_pl:
            await send("m.room.power_levels", final_pl)

    @staticmethod
    async def _carry_bans(user_id: str, old: "_OldState", send: "_Send") -> None:
        """Bans carry over, beyond the spec's list ("Membership events should not be
        transferred", but a banned user stays banned): a new ban by the upgrader, with the
        old reason."""
        for (t, target), event_id in sorted(old.state.items()):
            ev = old.events.get(event_id) if t == "m.room.member" else None
            if ev is not None and ev.membership == "ban" and target != user_id:
                ban = {"membership": "ban"}
                if isinstance(ev.content.get("reason"), str):
                    ban["reason"] = ev.content["reason"]
                await send("m.room.member", ban, target)

    async def _send_tombstone(self, user_id: str, room_id: str, new_room: str) -> None:
        """Spec "Room Upgrades", server behaviour step 5: "Sends a ``m.room.tombstone``
        event to the old room".

        :raises MatrixError: 403 ``M_FORBIDDEN`` if the old room refuses it.
        """
        tombstone = {"body": "This room has been replaced", "replacement_room": new_room}
        try:
            await self.events.send(room_id, type="m.room.tombstone", sender=user_id, content=tombstone, state_key="")
        except MatrixError as e:
            raise forbidden(f"The tombstone was refused: {e.error}") from None

    @staticmethod
    async def _quiet_old_room(old_pl: Any, room_id: str, send: "_Send") -> None:
        """Spec "Room Upgrades", server behaviour step 6: "the power levels in the old room
        should also be modified to prevent sending of events and inviting new users":
        ``events_default`` and ``invite`` raised to the greater of 50 and
        ``users_default + 1``."""
        if old_pl is None:
            return
        restricted = dict(old_pl.content)
        level = max(50, _int(restricted.get("users_default"), 0) + 1)
        changed = False
        for key in ("events_default", "invite"):
            if _int(restricted.get(key), 0 if key != "invite" else 0) < level:
                restricted[key] = level
                changed = True
        if changed:
            await send("m.room.power_levels", restricted, room=room_id)

    @staticmethod
    def _power_levels(
        old: Optional[Mapping[str, Any]], new_rv: Any, user_id: str, old_level: Any, extra_creators: list[str]
    ) -> dict[str, Any]:
        """The new room's power levels: the old ones, with the users map fitted to the new
        version (from v12 creators are not listed, and ``m.room.tombstone`` must be above
        ``state_default``; before v12 the upgrader keeps at least the level they had)."""
        pl: dict[str, Any] = dict(old) if old else {}
        old_users, old_events = pl.get("users"), pl.get("events")
        users: dict[str, Any] = dict(old_users) if isinstance(old_users, dict) else {}
        events: dict[str, Any] = dict(old_events) if isinstance(old_events, dict) else {}
        if new_rv.privileged_creators:
            for u in [user_id, *extra_creators]:
                users.pop(u, None)
            if "m.room.tombstone" not in events:
                events["m.room.tombstone"] = max(150, _int(pl.get("state_default"), 50) + 1)
        else:
            level = 100 if old_level == float("inf") else int(old_level)
            if users.get(user_id, _int(pl.get("users_default"), 0)) < level:
                users[user_id] = level
        pl["users"] = users
        pl["events"] = events
        return pl

    async def _move_aliases(self, old_room: str, new_room: str, canonical: Any, send) -> None:
        rooms = self.store.rooms
        moved = []
        for alias in await rooms.get_aliases_for_room(old_room):
            info = await rooms.get_alias(alias)
            if info is None:
                continue
            await rooms.delete_alias(alias)
            if await rooms.create_alias(alias, new_room, info.creator):
                moved.append(alias)
        if canonical is not None:
            old_content = dict(canonical.content)
            local = set(moved)
            new_content: dict[str, Any] = {}
            if old_content.get("alias") in local:
                new_content["alias"] = old_content["alias"]
            alt = old_content.get("alt_aliases")
            if isinstance(alt, list):
                kept = [a for a in alt if a in local]
                if kept:
                    new_content["alt_aliases"] = kept
            if new_content:
                await send("m.room.canonical_alias", new_content)
                remaining = {k: v for k, v in old_content.items() if k not in ("alias", "alt_aliases")}
                if old_content.get("alias") not in local and "alias" in old_content:
                    remaining["alias"] = old_content["alias"]
                if isinstance(alt, list):
                    rest = [a for a in alt if a not in local]
                    if rest:
                        remaining["alt_aliases"] = rest
                await send("m.room.canonical_alias", remaining, room=old_room)
        info = await self.store.get_room(old_room)
        if info is not None and info.is_public:
            await self.store.set_room_public(new_room, True)
            await self.store.set_room_public(old_room, False)

    async def _invite_members(self, user_id: str, new_room: str, state: Mapping[Any, str], old: Mapping[str, Any]) -> None:
        targets = []
        for (t, target), event_id in sorted(state.items()):
            ev = old.get(event_id) if t == "m.room.member" else None
            if ev is not None and ev.membership in ("invite", "join") and target != user_id:
                targets.append(target)
        if len(targets) > MAX_UPGRADE_INVITES:
            log.warn("Upgrade to {room}: inviting {n} of {total} members", room=new_room, n=MAX_UPGRADE_INVITES, total=len(targets))
            targets = targets[:MAX_UPGRADE_INVITES]
        sem = defer.DeferredSemaphore(REMOTE_INVITE_CONCURRENCY)

        async def invite(target: str) -> None:
            try:
                await self.membership.invite(user_id, new_room, target)
            except MatrixError as e:
                log.info("Upgrade to {room}: could not invite {target}: {e}", room=new_room, target=target, e=e.error)

        local = [t for t in targets if self.events.is_mine(t)]
        remote = [t for t in targets if not self.events.is_mine(t)]
        for t in local:
            await invite(t)
        if remote:
            def one(target: str) -> defer.Deferred:
                return defer.ensureDeferred(invite(target))

            await defer.gatherResults([sem.run(one, t) for t in remote], consumeErrors=True)

    # -- following a tombstone ---------------------------------------------------------------

    async def on_joined(self, user_id: str, room_id: str) -> None:
        """A local user joined ``room_id``: if it replaces another room (its create event
        names a ``predecessor``) copy the user's per-room settings (tags here, push rules through
        :attr:`on_followed`) from it (spec:
        "When a user joins the new room, the server should automatically
        transfer/replicate some of the user's personalized settings")."""
        accounts = getattr(self.store, "accounts", None)
        if accounts is None:
            return
        found = await self.store.get_current_state_events(room_id, [("m.room.create", "")])
        create = found.get(("m.room.create", ""))
        predecessor = create.content.get("predecessor") if create is not None else None
        old_room = predecessor.get("room_id") if isinstance(predecessor, dict) else None
        if not isinstance(old_room, str) or old_room == room_id:
            return
        for data_type in FOLLOWED_ACCOUNT_DATA:
            if await accounts.get_account_data(user_id, room_id, data_type) is not None:
                continue
            content = await accounts.get_account_data(user_id, old_room, data_type)
            if isinstance(content, dict):
                await accounts.set_account_data(user_id, room_id, data_type, content)
        for callback in list(self.on_followed):
            await callback(user_id, old_room, room_id)


def _int(value: Any, default: int) -> int:
    return value if type(value) is int else default


def _needed_level(pl: Mapping[str, Any]) -> int:
    """The level that can send every event the power levels name, and ban."""
    levels = [_int(pl.get("state_default"), 50), _int(pl.get("ban"), 50), 100 if not pl else 0]
    events = pl.get("events")
    if isinstance(events, dict):
        levels.extend(v for v in events.values() if type(v) is int)
    return max(levels)


__all__ = ["RoomUpgradeHandler", "TRANSFERRED_STATE"]
