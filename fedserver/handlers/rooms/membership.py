"""Membership changes for our users: join, leave, invite, kick, ban, unban, knock, forget."""

# Each operation first asks whether the room is here: we know its state and one of our
# users is joined to it (or nobody is: a local room everyone left). Then the membership
# event is made on the current state and the auth rules decide; a refusal is 403
# M_FORBIDDEN with the rule's reason. When the room is not here (or, for an invite, the
# target is on another server) the handshake goes through `remote`, a
# fedserver.handlers.federation.remote_membership.RemoteMembership; without one the client gets a
# clear error.

from __future__ import annotations

import secrets
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from twisted.logger import Logger

from fedserver.events.builder import build_event
from fedserver.events.model import Event
from fedserver.events.validation import EventTooLarge, InvalidEvent
from fedserver.handlers.rooms.client_events import STRIPPED_STATE_TYPES, stripped_state, stripped_state_keys
from fedserver.handlers.rooms.directory import current_power, split_alias
from fedserver.handlers.federation.handshakes import federation_stripped_state
from fedserver.handlers.federation.served import ServedPdus
from fedserver.handlers.rooms.pipeline import ACCEPTED, REJECTED, SOFT_FAILED, Outcome
from fedserver.errors import (
    M_UNKNOWN,
    MatrixError,
    bad_json,
    forbidden,
    invalid_param,
    not_found,
    too_large,
    unknown,
)
from fedserver.room_versions import RoomVersion
from fedserver.storage.interface import PersistEntry

log = Logger()

#: Fields of the 403 answering a local event the auth rules (or a policy) refused.
REFUSAL_RULE_FIELD = "org.fedserver.rule"
REFUSAL_PLUGIN_FIELD = "org.fedserver.plugin"

#: Longest ``reason`` kept in a membership event, in characters.
MAX_REASON_LENGTH = 2048

#: Rooms whose version we remember (it never changes).
_VERSION_CACHE_SIZE = 10_000


def domain_of(user_id: str) -> Optional[str]:
    """The server name of a user or room id (after the first ``:``), or ``None``."""
    _, sep, domain = user_id.partition(":")
    return domain if sep and domain else None


def valid_user_id(user_id: Any) -> bool:
    """Whether ``user_id`` looks like ``@localpart:server`` (at most 255 bytes)."""
    if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id:
        return False
    try:
        if len(user_id.encode("utf-8")) > 255:
            return False
    except UnicodeEncodeError:
        return False
    localpart, _, server = user_id[1:].partition(":")
    return bool(localpart) and bool(server) and "\x00" not in user_id


def check_reason(reason: Any) -> Optional[str]:
    """A client's ``reason``: a string (trimmed to :data:`MAX_REASON_LENGTH`) or absent.

    :raises MatrixError: 400 ``M_BAD_JSON`` if it is not a string.
    """
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise bad_json("reason must be a string")
    return reason[:MAX_REASON_LENGTH]


def check_outcome(event: Event, outcome: Outcome) -> Event:
    """Turn the pipeline's verdict on a local event into the client's answer.

    :raises MatrixError: 403 ``M_FORBIDDEN`` with the auth rule's reason if rejected, or
        the policy's if a policy plugin soft-failed it, naming the rule and the plugin in
        ``org.fedserver.rule`` and ``org.fedserver.plugin`` (also logged); 500 if it could
        not be taken in.
    """
    if outcome.status == ACCEPTED:
        return event
    if outcome.status in (REJECTED, SOFT_FAILED):
        refusal = outcome.refusal
        if outcome.status == REJECTED:
            reason = refusal.reason if refusal is not None else "refused by the auth rules"
        else:
            # A local policy (e.g. the room's policy server) refused it: kept, never sent.
            reason = "Refused by policy: " + (refusal.reason if refusal is not None else "refused by a policy")
        rule = refusal.rule if refusal is not None else None
        plugin = refusal.plugin if refusal is not None else None
        log.info(
            "Local event {event_id} ({type} from {sender}) refused: {reason} (rule {rule}, plugin {plugin})",
            event_id=event.event_id if event is not None else None,
            type=event.type if event is not None else None,
            sender=event.sender if event is not None else None,
            reason=reason, rule=rule, plugin=plugin,
        )
        # Extra fields are allowed in Matrix errors; namespaced, they tell the client (and
        # the operator reading the log) which rule and which plugin said no.
        error = forbidden(reason)
        error.extra.update({REFUSAL_RULE_FIELD: rule, REFUSAL_PLUGIN_FIELD: plugin})
        raise error
    log.error("Local event {event_id} was not taken in: {status}", event_id=event.event_id, status=outcome.status)
    raise unknown("The event could not be taken into the room")


class RoomEvents:
    """Sends local events into rooms here, turning build errors and refusals into client
    errors; shared by the membership and room handlers.

    :param store: the store.
    :param creator: the :class:`~fedserver.handlers.rooms.creator.EventCreator`.
    :param pipeline: the :class:`~fedserver.handlers.rooms.pipeline.RoomPipeline`.
    :param server_name: ours.
    :param signing_key: ours (to sign the ``m.room.create`` events of new rooms).
    :param served: the :class:`~fedserver.handlers.federation.served.ServedPdus` that PDUs
        sent to other servers go through (one on ``store`` by default).
    """

    def __init__(
        self, store: Any, creator: Any, pipeline: Any, server_name: str, signing_key: Any, *, served: Any = None
    ) -> None:
        self.store = store
        self._served = served if served is not None else ServedPdus(store)
        self.creator = creator
        self.pipeline = pipeline
        self.server_name = server_name
        self._signing_key = signing_key
        self._versions: dict[str, RoomVersion] = {}
        self._last_create_ts = 0

    def is_mine(self, user_id: str) -> bool:
        return domain_of(user_id) == self.server_name

    async def room_version(self, room_id: str) -> Optional[RoomVersion]:
        """The room's version, or ``None`` if we do not know the room."""
        rv = self._versions.get(room_id)
        if rv is None:
            if not isinstance(room_id, str) or not room_id.startswith("!"):
                return None
            rv = await self.store.get_room_version(room_id)
            if rv is not None:
                if len(self._versions) >= _VERSION_CACHE_SIZE:
                    self._versions.clear()
                self._versions[room_id] = rv
        return rv

    async def is_here(self, room_id: str) -> bool:
        """Whether local events can be made in the room: we hold its state and one of our
        users is joined (or no server is: a local room everyone left)."""
        if await self.room_version(room_id) is None:
            return False
        state = await self.pipeline.current_state(room_id)
        if not state:
            return False
        anyone, ours = await self.store.rooms.get_joined_presence(room_id, self.server_name)
        return ours or not anyone

    async def send(
        self,
        room_id: str,
        *,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: Optional[str] = None,
        redacts: Optional[str] = None,
        client_txn: Optional[tuple[str, str, str, str]] = None,
    ) -> Event:
        """Make an event on the room's current state and take it in.

        :param client_txn: ``(user_id, scope, txn_id, path)`` of the client request, stored in
            the transaction that stores the event (a retry finds it even after a crash).

        :returns: the accepted event (stored).
        :raises MatrixError: 404 for an unknown room; 403 ``M_FORBIDDEN`` (auth rules);
            413 ``M_TOO_LARGE``; 400 ``M_BAD_JSON`` for an event that cannot be built.
        """
        rv = await self.room_version(room_id)
        if rv is None:
            raise not_found("Unknown room")
        try:
            event, outcome = await self.creator.send(
                room_id, rv, type=type, sender=sender, content=content, state_key=state_key, redacts=redacts,
                client_txn=client_txn,
            )
        except EventTooLarge as e:
            raise too_large(f"Event too large: {e}") from None
        except InvalidEvent as e:
            raise bad_json(f"Invalid event: {e}") from None
        return check_outcome(event, outcome)

    async def create_room(self, rv: RoomVersion, sender: str, content: Mapping[str, Any]) -> Event:
        """Make and take in the ``m.room.create`` event of a new room.

        :returns: the create event (its ``room_id`` is the new room's).
        :raises MatrixError: 413 ``M_TOO_LARGE``; 400 ``M_INVALID_ROOM_STATE`` if the
            event is invalid or the auth rules refuse it.
        """
        for _ in range(10):
            event = await self.new_create_event(rv, sender, content)
            event, outcome = await self.pipeline.create_local(event.room_id, lambda state, ext, ev=event: ev)
            if outcome.duplicate:
                continue
            try:
                return check_outcome(event, outcome)
            except MatrixError as e:
                raise MatrixError(400, "M_INVALID_ROOM_STATE", f"m.room.create refused: {e.error}") from None
        raise unknown("Could not make a new room id")

    async def new_create_event(self, rv: RoomVersion, sender: str, content: Mapping[str, Any]) -> Event:
        """Build (not take in) the ``m.room.create`` event of a new room, of a room id
        that is not in use.

        From room v12 the room id is the create event's hash, so two rooms created with
        the same content by the same user in the same millisecond would be ONE room: each
        new room gets a timestamp after the last one made here, and a create event that
        exists already (made by an earlier run) is made again one millisecond later.

        :raises MatrixError: 413 ``M_TOO_LARGE``; 400 ``M_INVALID_ROOM_STATE`` if the
            event is invalid.
        """
        for _ in range(10):
            ts = max(self.creator.now_ms(), self._last_create_ts + 1)
            self._last_create_ts = ts
            room_id = None if rv.room_id_from_create_event else f"!{secrets.token_urlsafe(18)}:{self.server_name}"
            try:
                event = build_event(
                    rv, room_id=room_id, type="m.room.create", sender=sender, content=content, state_key="",
                    prev_event_ids=[], auth_event_ids=[], depth=1, origin_server_ts=ts,
                    server_name=self.server_name, signing_key=self._signing_key,
                )
            except EventTooLarge as e:
                raise too_large(f"Event too large: {e}") from None
            except InvalidEvent as e:
                raise MatrixError(400, "M_INVALID_ROOM_STATE", f"Invalid m.room.create event: {e}") from None
            if event.event_id not in await self.store.get_event_meta([event.event_id]):
                return event
        raise unknown("Could not make a new room id")

    def out_of_band_leave(self, invite: Event, reason: Optional[str] = None) -> Event:
        """A leave of ``invite``'s target, made here only, after an invite (or knock) to a
        room that is not here: no server in the room could be reached to reject it. It
        follows the invite, is signed by us, is stored as an outlier and is never sent.

        :raises MatrixError: 400 ``M_BAD_JSON`` if it cannot be built.
        """
        content: dict[str, Any] = {"membership": "leave"}
        if reason:
            content["reason"] = reason
        try:
            return build_event(
                invite.room_version, room_id=invite.room_id, type="m.room.member", sender=invite.state_key,
                content=content, state_key=invite.state_key, prev_event_ids=[invite.event_id],
                auth_event_ids=[invite.event_id], depth=invite.depth + 1,
                origin_server_ts=max(self.creator.now_ms(), invite.origin_server_ts + 1),
                server_name=self.server_name, signing_key=self._signing_key,
            )
        except InvalidEvent as e:
            raise bad_json(f"Invalid event: {e}") from None

    async def federation_room_state(self, room_id: str, inviter: Optional[str] = None) -> list[dict[str, Any]]:
        """The room's stripped state as sent to an invitee's server (``invite_room_state``):
        full PDUs since Matrix 1.16, redacted where a redaction applies; with the
        ``inviter``'s membership event (:func:`stripped_state_keys`)."""
        state = await self.store.get_current_state_events(room_id, stripped_state_keys(inviter))
        return await federation_stripped_state(self._served, [e for _, e in sorted(state.items())])

    async def stripped_room_state(self, room_id: str, extra: Iterable[Event] = ()) -> list[dict[str, Any]]:
        """The room's stripped state (spec "Stripped state"), plus ``extra`` events."""
        state = await self.store.get_current_state_events(room_id, [(t, "") for t in STRIPPED_STATE_TYPES])
        out = [stripped_state(e) for _, e in sorted(state.items())]
        out.extend(stripped_state(e) for e in extra)
        return out


class MembershipHandler:
    """Membership operations of our users (client-server API "Room membership").

    :param events: the shared :class:`RoomEvents`.
    :param directory: the :class:`~fedserver.handlers.rooms.directory.DirectoryHandler` (to join
        by alias).
    :param remote: a :class:`~fedserver.handlers.federation.remote_membership.RemoteMembership` for
        rooms that are not here and users of other servers; ``None``: such requests get
        404 (join, knock, leave) or 400 (invite).
    :param notifier: told about forgotten rooms (optional).
    :param is_room_blocked: ``room_id -> bool``: rooms an administrator blocked, which our
        users may not join or knock on (403 ``M_FORBIDDEN``); ``None``: none.
    """

    def __init__(
        self, events: RoomEvents, directory: Any = None, *, remote: Any = None, notifier: Any = None,
        is_room_blocked: Optional[Callable[[str], bool]] = None,
    ) -> None:
        self.events = events
        self.store = events.store
        self.server_name = events.server_name
        self.directory = directory
        self.remote = remote
        self.notifier = notifier
        self.is_room_blocked = is_room_blocked
        #: Coroutine functions ``(user_id, room_id)`` awaited after a join of one of our
        #: users succeeded (e.g. following a room upgrade); their errors are logged.
        self.on_joined: list[Any] = []

    def _check_not_blocked(self, room_id: str) -> None:
        if self.is_room_blocked is not None and self.is_room_blocked(room_id):
            raise forbidden("This room has been blocked on this server")

    # -- helpers ----------------------------------------------------------------------------

    async def member_profile(self, user_id: str) -> dict[str, str]:
        """``displayname`` / ``avatar_url`` of a local user for member events."""
        accounts = getattr(self.store, "accounts", None)
        if accounts is None or not self.events.is_mine(user_id):
            return {}
        profile = await accounts.get_profile(user_id) or {}
        return {k: v for k, v in profile.items() if k in ("displayname", "avatar_url") and isinstance(v, str)}

    async def resolve_room(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        """A room id, or an alias resolved through the directory: ``(room_id, servers)``.

        :raises MatrixError: 400 ``M_INVALID_PARAM``; 404 for an unknown alias.
        """
        if isinstance(room_id_or_alias, str) and room_id_or_alias.startswith("!") and len(room_id_or_alias) > 1:
            return room_id_or_alias, []
        if split_alias(room_id_or_alias) is not None:
            if self.directory is None:
                raise not_found("Room alias not found")
            found = await self.directory.resolve_alias(room_id_or_alias)
            return found["room_id"], list(found.get("servers") or [])
        raise invalid_param("roomIdOrAlias", f"{room_id_or_alias!r} is not a room ID or alias")

    async def _member(self, room_id: str, target: str, sender: str, membership: str, extra: Mapping[str, Any]) -> Event:
        content = {k: v for k, v in extra.items() if v is not None}
        content["membership"] = membership
        return await self.events.send(room_id, type="m.room.member", sender=sender, content=content, state_key=target)

    async def _remote_row(self, user_id: str, room_id: str) -> Any:
        """The user's invite, knock or leave recorded for a room that is not here (by the
        federation handshakes), or ``None``."""
        extras = getattr(self.store, "federation_extras", None)
        if extras is None:
            return None
        return await extras.get_remote_membership(user_id, room_id)

    async def _inviter_hint(self, user_id: str, room_id: str) -> list[str]:
        """The server of whoever invited the user to a room that is not here (recorded by
        the federation handshakes): the first server to try (seed 001)."""
        row = await self._remote_row(user_id, room_id)
        domain = domain_of(row.sender) if row is not None else None
        return [domain] if domain else []

    async def _record_remote(self, user_id: str, room_id: str, event: Optional[Event], membership: str,
                             stripped: Sequence[Any] = ()) -> None:
        """Store our user's own knock or leave in a room that is not here (an outlier)
        and record it as their remote membership, so their /sync shows it (a knock) or
        stops showing the invite or knock (a leave)."""
        extras = getattr(self.store, "federation_extras", None)
        if event is None or extras is None:
            return
        await self.store.persist_events([PersistEntry(event=event, outlier=True)])
        await extras.set_remote_membership(user_id, room_id, membership, event.event_id, user_id, list(stripped))
        if self.notifier is not None:
            self.notifier.notify_user(user_id)

    def _candidates(self, room_id: str, hints: Sequence[str]) -> list[str]:
        out = []
        for s in list(hints) + [domain_of(room_id) or ""]:
            if s and s != self.server_name and s not in out:
                out.append(s)
        return out

    # -- join -------------------------------------------------------------------------------

    async def join(
        self,
        user_id: str,
        room_id_or_alias: str,
        *,
        server_names: Sequence[str] = (),
        reason: Optional[str] = None,
    ) -> str:
        """``POST /join/{roomIdOrAlias}`` and ``/rooms/{roomId}/join``.

        :param server_names: ``via`` / ``server_name`` hints, kept for joins over
            federation.
        :returns: the room id.
        :raises MatrixError: 403 (the auth rules refuse: banned, invite-only...), 404 (a
            room that is not here and no remote path).
        """
        room_id, alias_servers = await self.resolve_room(room_id_or_alias)
        self._check_not_blocked(room_id)
        reason = check_reason(reason)
        hints = list(server_names) + [s for s in alias_servers if s not in server_names]
        if not await self.events.is_here(room_id):
            await self._remote_join(user_id, room_id, hints, reason)
            await self._joined(user_id, room_id)
            return room_id
        current = await self.store.rooms.get_membership(room_id, user_id)
        if current is not None and current.membership == "join":
            return room_id  # already joined: nothing to change
        content: dict[str, Any] = dict(await self.member_profile(user_id))
        if reason:
            content["reason"] = reason
        authoriser = await self._restricted_authoriser(room_id, user_id, current)
        if authoriser is not None:
            content["join_authorised_via_users_server"] = authoriser
        await self._member(room_id, user_id, user_id, "join", content)
        await self._joined(user_id, room_id)
        return room_id

    async def _joined(self, user_id: str, room_id: str) -> None:
        for callback in list(self.on_joined):
            try:
                await callback(user_id, room_id)
            except Exception:  # noqa: BLE001 - the join is done; a follow-up must not undo its answer
                log.failure("on_joined callback failed for {room_id}", room_id=room_id)

    async def _remote_join(self, user_id: str, room_id: str, hints: Sequence[str], reason: Optional[str]) -> str:
        candidates = self._candidates(room_id, await self._inviter_hint(user_id, room_id) + list(hints))
        if self.remote is None or not candidates:
            raise not_found("This server is not in the room and knows no server to join it through")
        content: dict[str, Any] = dict(await self.member_profile(user_id))
        if reason:
            content["reason"] = reason
        await self.remote.join(user_id, room_id, candidates, content)
        return room_id

    async def _restricted_authoriser(self, room_id: str, user_id: str, current: Any) -> Optional[str]:
        """For a restricted join rule (rooms v8+; auth rule "If the join_rule is
        restricted": 5.2), one of our joined users who may invite, once the joining user is
        known to be in a room the rule allows. ``None`` when not needed."""
        rv = await self.events.room_version(room_id)
        if rv is None or not rv.restricted_joins:
            return None
        if current is not None and current.membership in ("join", "invite"):
            return None  # rule 5.1
        state = await self.store.get_current_state_events(room_id, [("m.room.join_rules", "")])
        jr = state.get(("m.room.join_rules", ""))
        rule = jr.content.get("join_rule") if jr is not None else None
        if rule not in ("restricted", "knock_restricted"):
            return None
        allowed = False
        allow = jr.content.get("allow")
        for entry in allow if isinstance(allow, list) else []:
            if isinstance(entry, dict) and entry.get("type") == "m.room_membership" and isinstance(entry.get("room_id"), str):
                other = await self.store.rooms.get_membership(entry["room_id"], user_id)
                if other is not None and other.membership == "join":
                    allowed = True
                    break
        if not allowed:
            if rule == "knock_restricted":
                return None  # the auth rules decide (an invited or knocking user...)
            raise forbidden("You are not a member of any room the join rules allow")
        power = await current_power(self.store, room_id, user_id)
        needed = power.power_levels.invite
        best: Optional[tuple[float, str]] = None
        for member in await self.store.get_room_members(room_id, "join"):
            if domain_of(member) != self.server_name:
                continue
            level = power.user_level(member)
            if level >= needed and (best is None or (-level, member) < best):
                best = (-level, member)
        if best is None:
            raise MatrixError(400, "M_UNABLE_TO_GRANT_JOIN", "No user of this server may invite to the room")
        return best[1]

    # -- leave ------------------------------------------------------------------------------

    async def leave(self, user_id: str, room_id: str, *, reason: Optional[str] = None) -> None:
        """``POST /rooms/{roomId}/leave``: leave, reject an invite, or withdraw a knock.

        :raises MatrixError: 403 (e.g. banned), 404 (unknown room).
        """
        reason = check_reason(reason)
        if not await self.events.is_here(room_id):
            await self._remote_leave(user_id, room_id, reason)
            return
        current = await self.store.rooms.get_membership(room_id, user_id)
        if current is None or current.membership == "leave":
            return  # nothing to leave
        await self._member(room_id, user_id, user_id, "leave", {"reason": reason})

    async def _remote_leave(self, user_id: str, room_id: str, reason: Optional[str]) -> None:
        """Leave, reject an invite or withdraw a knock in a room that is not here, through
        make_leave/send_leave on the inviter's server first, then the other candidates.

        If every candidate fails while the user holds an invite or knock recorded here,
        the rejection is recorded locally (an out-of-band leave, never sent): the user's
        client stops seeing the invite even though the inviting server is unreachable."""
        if self.remote is None:
            raise not_found("This server is not in the room")
        row = await self._remote_row(user_id, room_id)
        hints: list[str] = []
        if row is not None:
            # The inviter's server first (seed 001), then the servers of the room's
            # stripped state (a knock was sent by the user: its creator's server...).
            senders = [row.sender] + [e.get("sender") for e in row.stripped_state if isinstance(e, dict)]
            hints = [d for d in (domain_of(x) for x in senders if isinstance(x, str)) if d]
        try:
            event = await self.remote.leave(user_id, room_id, self._candidates(room_id, hints), reason)
        except MatrixError as e:
            pending = row is not None and row.membership in ("invite", "knock")
            invite = await self.store.get_event(row.event_id) if pending else None
            if invite is None:
                raise
            log.info(
                "No server in {room_id} took {user_id}'s leave ({error}); rejecting the {membership} locally",
                room_id=room_id, user_id=user_id, error=e.error, membership=row.membership,
            )
            event = self.events.out_of_band_leave(invite, reason)
        await self._record_remote(user_id, room_id, event, "leave")

    # -- invite, kick, ban, unban -----------------------------------------------------------

    async def invite(
        self, sender: str, room_id: str, target: Any, *, reason: Optional[str] = None, is_direct: bool = False
    ) -> None:
        """``POST /rooms/{roomId}/invite`` (and invites of ``createRoom``).

        :raises MatrixError: 400 ``M_INVALID_PARAM`` (bad user id), 404 (unknown room or
            local user), 403 (the auth rules refuse), 400 ``M_UNKNOWN`` for a user of
            another server without a remote path.
        """
        if not valid_user_id(target):
            raise invalid_param("user_id", "Invalid user ID")
        reason = check_reason(reason)
        if not await self.events.is_here(room_id):
            raise not_found("This server is not in the room")
        content: dict[str, Any] = {}
        if reason:
            content["reason"] = reason
        if is_direct:
            content["is_direct"] = True
        if self.events.is_mine(target):
            accounts = getattr(self.store, "accounts", None)
            if accounts is not None and await accounts.get_user(target) is None:
                raise not_found("Unknown user")
            content.update(await self.member_profile(target))
            await self._member(room_id, target, sender, "invite", content)
            return
        if self.remote is None:
            raise MatrixError(400, M_UNKNOWN, "Inviting users of other servers is not supported yet")
        rv = await self.events.room_version(room_id)
        await self.remote.invite(
            room_id,
            rv,
            sender=sender,
            target=target,
            prepare=self.events.creator.prepare,
            invite_room_state=await self.events.federation_room_state(room_id, inviter=sender),
            content=content,
        )

    async def kick(self, sender: str, room_id: str, target: Any, *, reason: Optional[str] = None) -> None:
        """``POST /rooms/{roomId}/kick``: the target must be joined, invited or knocking.

        :raises MatrixError: 403 (not in the room, or the auth rules refuse).
        """
        await self._moderate(sender, room_id, target, "leave", reason, ("join", "invite", "knock"), "User is not in the room")

    async def ban(self, sender: str, room_id: str, target: Any, *, reason: Optional[str] = None) -> None:
        """``POST /rooms/{roomId}/ban`` (any target; the auth rules decide)."""
        await self._moderate(sender, room_id, target, "ban", reason, None, "")

    async def unban(self, sender: str, room_id: str, target: Any, *, reason: Optional[str] = None) -> None:
        """``POST /rooms/{roomId}/unban``: the target must be banned."""
        await self._moderate(sender, room_id, target, "leave", reason, ("ban",), "User is not banned")

    async def _moderate(
        self,
        sender: str,
        room_id: str,
        target: Any,
        membership: str,
        reason: Any,
        required: Optional[tuple[str, ...]],
        refusal: str,
    ) -> None:
        if not valid_user_id(target):
            raise invalid_param("user_id", "Invalid user ID")
        reason = check_reason(reason)
        if not await self.events.is_here(room_id):
            raise not_found("This server is not in the room")
        if required is not None:
            current = await self.store.rooms.get_membership(room_id, target)
            if current is None or current.membership not in required:
                raise forbidden(refusal)
        await self._member(room_id, target, sender, membership, {"reason": reason})

    # -- knock and forget -------------------------------------------------------------------

    async def knock(
        self, user_id: str, room_id_or_alias: str, *, server_names: Sequence[str] = (), reason: Optional[str] = None
    ) -> str:
        """``POST /knock/{roomIdOrAlias}`` (rooms v7+ with a knock join rule).

        :returns: the room id.
        :raises MatrixError: 403 (the auth rules refuse), 404.
        """
        room_id, alias_servers = await self.resolve_room(room_id_or_alias)
        self._check_not_blocked(room_id)
        reason = check_reason(reason)
        if not await self.events.is_here(room_id):
            candidates = self._candidates(room_id, list(server_names) + alias_servers)
            if self.remote is None or not candidates:
                raise not_found("This server is not in the room and knows no server to knock through")
            knocked = await self.remote.knock(user_id, room_id, candidates, reason)
            if knocked is not None:
                event, room_state = knocked
                await self._record_remote(user_id, room_id, event, "knock", room_state)
            return room_id
        content: dict[str, Any] = dict(await self.member_profile(user_id))
        if reason:
            content["reason"] = reason
        await self._member(room_id, user_id, user_id, "knock", content)
        return room_id

    async def forget(self, user_id: str, room_id: str) -> None:
        """``POST /rooms/{roomId}/forget``: the room leaves the user's /sync (until they
        have a new membership in it).

        :raises MatrixError: 400 ``M_UNKNOWN`` while the user is joined, invited or
            knocking (spec: "they must leave before calling this API").
        """
        current = await self.store.rooms.get_membership(room_id, user_id)
        if current is None:
            return
        if current.membership in ("join", "invite", "knock"):
            raise MatrixError(400, M_UNKNOWN, "You must leave the room before forgetting it")
        await self.store.rooms.forget_room(user_id, room_id, current.event_nid)
        if self.notifier is not None:
            self.notifier.notify_user(user_id)

    # -- profile changes --------------------------------------------------------------------

    async def refresh_profile(self, user_id: str) -> int:
        """Send a new join event carrying the user's current display name and avatar into
        every room here the user is joined to (after a profile change).

        :returns: how many rooms were updated (refusals are logged and skipped).
        """
        profile = await self.member_profile(user_id)
        count = 0
        for m in await self.store.rooms.get_memberships_for_user(user_id):
            if m.membership != "join" or not await self.events.is_here(m.room_id):
                continue
            event = await self.store.get_event(m.event_id)
            content = {k: v for k, v in (event.content if event else {}).items() if k not in ("displayname", "avatar_url")}
            content.update(profile)
            content["membership"] = "join"
            try:
                await self.events.send(m.room_id, type="m.room.member", sender=user_id, content=content, state_key=user_id)
                count += 1
            except MatrixError as e:
                log.info("Profile update of {user} in {room} refused: {e}", user=user_id, room=m.room_id, e=e)
        return count
