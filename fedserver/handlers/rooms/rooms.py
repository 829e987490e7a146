"""Local rooms for clients: createRoom, sending events, state, redaction (reading the timeline: timeline.py)."""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Mapping, Optional, Sequence

from twisted.logger import Logger

from fedserver.background import log_background_failure
from fedserver.events.model import Event
from fedserver.keyed_lock import KeyedLock
from fedserver.handlers.rooms.client_events import (
    HISTORY_VISIBILITY_KEY,
    WORLD_READABLE,
    ClientEventSource,
    history_visibility,
    transaction_scope,
)
from fedserver.handlers.rooms.directory import DirectoryHandler, current_power, split_alias, valid_new_localpart
from fedserver.handlers.rooms.membership import MembershipHandler, RoomEvents, check_reason, domain_of, valid_user_id
from fedserver.handlers.rooms.new_room import RoomDraft
from fedserver.handlers.client.sync_sections import SyncToken
from fedserver.errors import (
    M_UNKNOWN,
    MatrixError,
    bad_json,
    forbidden,
    invalid_param,
    not_found,
    unsupported_room_version,
)
from fedserver.room_versions import DEFAULT_ROOM_VERSION, RoomVersion, RoomVersionRegistry, UnknownRoomVersion
from fedserver.storage.rooms.rooms_store import TopoPos
from fedserver.handlers.requester import Requester

log = Logger()

M_ROOM_IN_USE = "M_ROOM_IN_USE"
M_INVALID_ROOM_STATE = "M_INVALID_ROOM_STATE"
M_BAD_ALIAS = "M_BAD_ALIAS"

#: ``join_rules``, ``history_visibility`` and ``guest_access`` of each preset (spec
#: ``POST /createRoom``, the presets table).
PRESETS: dict[str, dict[str, str]] = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "trusted_private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden"},
}

#: Longest event type or state key, in UTF-8 bytes (spec: 255 bytes).
MAX_ID_BYTES = 255
#: Longest client transaction id accepted.
MAX_TXN_ID_BYTES = 255
#: /messages default and largest page.
DEFAULT_MESSAGES_LIMIT = 10
MAX_MESSAGES_LIMIT = 1000
#: Pages of raw events /messages reads at most to fill one page of visible events.
MAX_PAGINATION_ROUNDS = 5
#: Most users createRoom invites.
MAX_CREATE_INVITES = 100
#: Most initial_state entries createRoom takes.
MAX_INITIAL_STATE = 100


# -- tokens ---------------------------------------------------------------------------------


def topo_token(pos: TopoPos) -> str:
    """A /messages pagination token for a boundary ``(depth, nid)``."""
    return f"t{pos[0]}_{pos[1]}"


def parse_topo_token(token: str) -> Optional[TopoPos]:
    """``(depth, nid)`` of a ``t`` token, or ``None`` if it is not one."""
    if not isinstance(token, str) or not token.startswith("t") or len(token) > 50:
        return None
    d, sep, n = token[1:].partition("_")
    if not sep or not (d.isascii() and d.isdigit() and n.isascii() and n.lstrip("-").isdigit()):
        return None
    return int(d), int(n)


def parse_stream_token(token: str) -> Optional[tuple[int, int]]:
    """``(event nid, account data position)`` of a /sync ``next_batch`` token (see
    :class:`~fedserver.handlers.client.sync_sections.SyncToken`; section positions are
    left out), or ``None`` if it is not one."""
    parsed = SyncToken.parse(token)
    return None if parsed is None else (parsed.events, parsed.account_data)


def stream_token(nid: int, account_data: int) -> str:
    """A /sync ``next_batch`` token."""
    return f"s{nid}_{account_data}"


def _check_id(value: Any, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise invalid_param(what, f"{what} must be a non-empty string")
    try:
        if len(value.encode("utf-8")) > MAX_ID_BYTES:
            raise invalid_param(what, f"{what} is longer than {MAX_ID_BYTES} bytes")
    except UnicodeEncodeError:
        raise invalid_param(what, f"{what} is not valid Unicode") from None
    return value


# -- event filters ------------------------------------------------------------------------------


def _matches_pattern(value: str, patterns: Iterable[str]) -> bool:
    """Spec filters: a ``*`` matches any run of characters."""
    for p in patterns:
        if p == value:
            return True
        if "*" in p:
            if fnmatch.fnmatchcase(value, p.replace("[", "[[]").replace("?", "[?]")):
                return True
    return False


class EventFilter:
    """A ``RoomEventFilter`` / ``EventFilter`` (spec "Filtering"): ``types``,
    ``not_types``, ``senders``, ``not_senders``, ``rooms``, ``not_rooms``, ``limit``,
    ``contains_url``, ``lazy_load_members``, ``include_redundant_members``. Unknown keys
    are ignored; malformed values are refused.

    :raises MatrixError: 400 ``M_INVALID_PARAM`` for a malformed filter.
    """

    __slots__ = (
        "types", "not_types", "senders", "not_senders", "rooms", "not_rooms", "limit", "contains_url",
        "lazy_load_members", "include_redundant_members",
    )

    def __init__(self, spec: Optional[Mapping[str, Any]] = None):
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise invalid_param("filter", "A filter must be a JSON object")
        for key in ("types", "not_types", "senders", "not_senders", "rooms", "not_rooms"):
            value = spec.get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise invalid_param("filter", f"filter {key} must be a list of strings")
            setattr(self, key, value)
        limit = spec.get("limit")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise invalid_param("filter", "filter limit must be a non-negative integer")
        self.limit = limit
        contains_url = spec.get("contains_url")
        self.contains_url = contains_url if isinstance(contains_url, bool) else None
        # Spec "Lazy-loading room members": only the senders' membership events are sent;
        # include_redundant_members "does not apply unless lazy_load_members is true".
        self.lazy_load_members = spec.get("lazy_load_members") is True
        self.include_redundant_members = self.lazy_load_members and spec.get("include_redundant_members") is True

    def allows_room(self, room_id: str) -> bool:
        if self.not_rooms is not None and room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def allows_type(self, event_type: str) -> bool:
        if self.not_types is not None and _matches_pattern(event_type, self.not_types):
            return False
        return self.types is None or _matches_pattern(event_type, self.types)

    def allows(self, event: Event) -> bool:
        """Whether the filter lets ``event`` through."""
        if not self.allows_type(event.type):
            return False
        if self.not_senders is not None and event.sender in self.not_senders:
            return False
        if self.senders is not None and event.sender not in self.senders:
            return False
        if event.room_id is not None and not self.allows_room(event.room_id):
            return False
        if self.contains_url is not None and self.contains_url != isinstance(event.content.get("url"), str):
            return False
        return True


# -- the handler --------------------------------------------------------------------------------


class RoomsHandler:
    """Rooms for clients (client-server API "Rooms", "Room events", "Room membership").

    :param events: the shared :class:`~fedserver.handlers.rooms.membership.RoomEvents`.
    :param membership: the :class:`~fedserver.handlers.rooms.membership.MembershipHandler`.
    :param directory: the :class:`~fedserver.handlers.rooms.directory.DirectoryHandler`.
    :param source: the :class:`~fedserver.handlers.rooms.client_events.ClientEventSource`.
    :param room_versions: the versions ``createRoom`` may use.
    :param default_room_version: for ``createRoom`` without ``room_version``.
    """

    def __init__(
        self,
        events: RoomEvents,
        membership: MembershipHandler,
        directory: DirectoryHandler,
        source: ClientEventSource,
        *,
        room_versions: Optional[RoomVersionRegistry] = None,
        default_room_version: RoomVersion = DEFAULT_ROOM_VERSION,
    ) -> None:
        self.events = events
        self.store = events.store
        self.server_name = events.server_name
        self.membership = membership
        self.directory = directory
        self.source = source
        self.room_versions = room_versions if room_versions is not None else RoomVersionRegistry()
        self.default_room_version = default_room_version
        self._txn_locks: KeyedLock[tuple[str, str, str, str]] = KeyedLock()
        #: The :class:`~fedserver.handlers.rooms.relations.RelationsHandler` that checks
        #: new related events (threads, annotations), or ``None``.
        self.relations: Any = None

    # -- pipeline hook ----------------------------------------------------------------------

    def on_persisted(self, room_id: str, taken: Sequence[tuple[Event, Any]]) -> None:
        """``RoomPipeline.on_persisted`` callback: index new redactions (from any server)
        so that the events they redact are served redacted."""
        if any(e.type == "m.room.redaction" for e, _ in taken):
            self.store.rooms.index_redactions().addErrback(log_background_failure, "Indexing redactions failed", logger=log)

    # -- createRoom ---------------------------------------------------------------------------

    async def create_room(self, requester: Requester, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /createRoom``: the events in the spec's order (create, the creator's
        join, power levels, canonical alias, the preset's join rules / history visibility /
        guest access, ``initial_state``, name and topic, invites), then the directory.

        The events up to name and topic are stored in one transaction, all or none (with
        the alias, given back if they cannot be stored): a failure leaves no half-made room.
        Invites (a remote one is a handshake with the invitee's server) and the directory
        listing follow once the room exists; a failed invite answers its error and the
        room stays, complete.

        :returns: ``{"room_id": ...}``.
        :raises MatrixError: 400 (``M_BAD_JSON``, ``M_INVALID_PARAM``, ``M_ROOM_IN_USE``,
            ``M_UNSUPPORTED_ROOM_VERSION``, ``M_INVALID_ROOM_STATE`` if an event the
            request implies is refused), 413.
        """
        user_id = requester.user_id
        req = _CreateRequest(body, self.server_name, self.room_versions, self.default_room_version)
        await self._check_create_request(req)
        # Steps 1-7 are built in memory and taken in at once, so that a failure leaves
        # no half-made room (see fedserver.handlers.rooms.new_room).
        draft = await RoomDraft.start(self.events, req.room_version, user_id, self._create_content(user_id, req))
        await self._draft_initial_state(draft, user_id, req)
        await self._commit_claiming_alias(draft, user_id, req)
        room_id = draft.room_id
        await self._send_initial_invites(user_id, room_id, req)
        if req.visibility == "public":
            await self.store.set_room_public(room_id, True)
        return {"room_id": room_id}

    async def _check_create_request(self, req: "_CreateRequest") -> None:
        """What ``createRoom`` refuses before any event is made: remote invitees when this
        server cannot federate invites, unknown local invitees, an alias already taken
        (spec ``POST /createRoom``, 400: "The room alias specified is already taken
        (``errcode`` set to ``M_ROOM_IN_USE``)").

        :raises MatrixError: 400 (``M_UNKNOWN``, ``M_ROOM_IN_USE``), 404.
        """
        remote_invitees = [u for u in req.invite if domain_of(u) != self.server_name]
        if remote_invitees and self.membership.remote is None:
            raise MatrixError(400, M_UNKNOWN, "remote invites not supported yet")
        accounts = getattr(self.store, "accounts", None)
        if accounts is not None:
            for u in req.invite:
                if domain_of(u) == self.server_name and await accounts.get_user(u) is None:
                    raise not_found(f"Unknown user {u}")
        if req.alias is not None and await self.store.rooms.get_alias(req.alias) is not None:
            raise MatrixError(400, M_ROOM_IN_USE, "Room alias already taken")

    def _create_content(self, user_id: str, req: "_CreateRequest") -> dict[str, Any]:
        """The ``m.room.create`` content (spec ``POST /createRoom`` step 1, "The
        ``m.room.create`` event itself"): ``creation_content`` with the room version and,
        before v12, the creator; for ``trusted_private_chat`` in v12+ the invitees appended
        to ``additional_creators`` (step 3's note).
        """
        rv = req.room_version
        content = dict(req.creation_content)
        content["room_version"] = rv.identifier
        if rv.implicit_room_creator:
            content.pop("creator", None)
        else:
            content["creator"] = user_id
        if req.preset == "trusted_private_chat" and rv.privileged_creators and req.invite:
            # v12: "the users specified in the invite parameter SHOULD also be appended
            # to additional_creators".
            extra = content.get("additional_creators")
            extra = list(extra) if isinstance(extra, list) else []
            content["additional_creators"] = extra + [u for u in req.invite if u not in extra and u != user_id]
        return content

    async def _draft_initial_state(self, draft: RoomDraft, user_id: str, req: "_CreateRequest") -> None:
        """Spec ``POST /createRoom`` steps 2-7 into ``draft``, in the spec's order: the
        creator's join, power levels, canonical alias, the preset's events,
        ``initial_state``, name and topic.
        """
        # 2. "An m.room.member event for the creator to join the room."
        join = dict(await self.membership.member_profile(user_id))
        join["membership"] = "join"
        await draft.add("m.room.member", user_id, join, user_id)
        initial = await self._draft_power_levels(draft, user_id, req)
        # 4. "An m.room.canonical_alias event if room_alias_name is given."
        if req.alias is not None:
            await draft.add("m.room.canonical_alias", user_id, {"alias": req.alias}, "")
        await self._draft_preset(draft, user_id, req, initial)
        await self._draft_given_state(draft, user_id, req, initial)

    async def _draft_power_levels(
        self, draft: RoomDraft, user_id: str, req: "_CreateRequest"
    ) -> list[tuple[str, str, Mapping[str, Any]]]:
        """Spec ``POST /createRoom`` step 3, "A default ``m.room.power_levels`` event.
        Overridden by the ``power_level_content_override`` parameter": an
        ``m.room.power_levels`` in ``initial_state`` replaces the default here (and is
        not sent again at step 6), the override is applied over either.

        :returns: ``initial_state`` without its power levels, for steps 5 and 6.
        """
        initial = list(req.initial_state)
        pl_content = self._power_levels(req.room_version, user_id, req)
        for i, (t, sk, c) in enumerate(initial):
            if (t, sk) == ("m.room.power_levels", ""):
                pl_content = dict(c)
                del initial[i]
                break
        pl_content.update(req.power_level_override)
        await draft.add("m.room.power_levels", user_id, pl_content, "")
        return initial

    async def _draft_preset(
        self,
        draft: RoomDraft,
        user_id: str,
        req: "_CreateRequest",
        initial: Sequence[tuple[str, str, Mapping[str, Any]]],
    ) -> None:
        """Spec ``POST /createRoom`` step 5, "Events set by the ``preset``": join rules,
        history visibility and guest access, each unless ``initial_state`` sets it (the
        spec on ``initial_state``: "Takes precedence over events set by ``preset``").
        """
        given = {(t, sk) for t, sk, _ in initial}
        preset = PRESETS[req.preset]
        for event_type, key in (
            ("m.room.join_rules", "join_rule"),
            ("m.room.history_visibility", "history_visibility"),
            ("m.room.guest_access", "guest_access"),
        ):
            if (event_type, "") not in given:
                await draft.add(event_type, user_id, {key: preset[key]}, "")

    async def _draft_given_state(
        self,
        draft: RoomDraft,
        user_id: str,
        req: "_CreateRequest",
        initial: Sequence[tuple[str, str, Mapping[str, Any]]],
    ) -> None:
        """Spec ``POST /createRoom`` steps 6 and 7: "Events listed in ``initial_state``,
        in the order that they are listed" (a name or topic there "gets overridden by
        ``name`` and ``topic`` keys"), then "Events implied by ``name`` and ``topic``".
        """
        for t, sk, c in initial:
            if (t, sk) == ("m.room.name", "") and req.name is not None:
                continue
            if (t, sk) == ("m.room.topic", "") and req.topic is not None:
                continue
            await draft.add(t, user_id, c, sk)
        if req.name is not None:
            await draft.add("m.room.name", user_id, {"name": req.name}, "")
        if req.topic is not None:
            await draft.add(
                "m.room.topic",
                user_id,
                {"topic": req.topic, "m.topic": {"m.text": [{"body": req.topic, "mimetype": "text/plain"}]}},
                "",
            )

    async def _commit_claiming_alias(self, draft: RoomDraft, user_id: str, req: "_CreateRequest") -> None:
        """Store steps 1-7 at once, with the alias of step 4.

        The alias is claimed before the events are stored (a race with another claim is
        lost here, with nothing stored) and given back if they cannot be.

        :raises MatrixError: 400 ``M_ROOM_IN_USE`` if the alias was claimed meanwhile.
        """
        if req.alias is not None and not await self.store.rooms.create_alias(req.alias, draft.room_id, user_id):
            raise MatrixError(400, M_ROOM_IN_USE, "Room alias already taken")
        try:
            await draft.commit()
        except BaseException:
            if req.alias is not None:
                try:
                    await self.store.rooms.delete_alias(req.alias)
                except Exception:
                    log.failure("Giving back the alias {alias} of a room not made failed", alias=req.alias)
            raise

    async def _send_initial_invites(self, user_id: str, room_id: str, req: "_CreateRequest") -> None:
        """Spec ``POST /createRoom`` step 8, "Invite events implied by ``invite``", once
        the room exists (the creator inviting themself is skipped).
        """
        for target in req.invite:
            if target == user_id:
                continue
            await self.membership.invite(user_id, room_id, target, is_direct=req.is_direct)

    def _power_levels(self, rv: RoomVersion, user_id: str, req: "_CreateRequest") -> dict[str, Any]:
        """The default ``m.room.power_levels`` content (spec ``createRoom`` step 3)."""
        users: dict[str, int] = {}
        if not rv.privileged_creators:
            # Rooms v1-v11: the creator (and for trusted_private_chat every invitee) gets 100.
            users[user_id] = 100
            if req.preset == "trusted_private_chat":
                for u in req.invite:
                    users[u] = 100
        return {
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                # v12: tombstones "MUST explicitly be higher than state_default".
                "m.room.tombstone": 150 if rv.privileged_creators else 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 50 if req.preset == "public_chat" else 0,
            "historical": 100,
            "notifications": {"room": 50},
        }

    # -- sending ------------------------------------------------------------------------------

    async def _with_txn(self, requester: Requester, txn_id: str, room_id: str, path: str, make) -> str:
        """Run ``make(key)`` (returning the new event id) once per client transaction id and
        request path (spec "Transaction identifiers": "a retransmission if the transaction
        ID is the same as a previous request, and the path of the HTTP request is the
        same"; a retry gets the first event back, the same id on another path is a new
        request). ``make`` gives ``key``, ``(user_id, scope, txn_id, path)``, to
        :meth:`RoomEvents.send`, which has it recorded in the transaction that stores the
        event: no crash or storage fault can leave the event stored without its transaction
        id (a retry would make it twice).

        :param path: the request path below the API version, without the transaction id,
            e.g. ``/rooms/{roomId}/send/{eventType}`` with the values filled in (``/r0/``
            and ``/v3/`` are the same endpoint).
        """
        if not isinstance(txn_id, str) or not txn_id or len(txn_id.encode("utf-8", "surrogatepass")) > MAX_TXN_ID_BYTES:
            raise invalid_param("txnId", "Invalid transaction id")
        scope = transaction_scope(requester)
        key = (requester.user_id, scope, txn_id, path)

        async def run() -> str:
            done = await self.store.rooms.get_client_txn(requester.user_id, scope, txn_id, path=path)
            if done is not None:
                return done
            return await make(key)

        return await self._txn_locks.run(key, run)

    async def send_event(
        self, requester: Requester, room_id: str, event_type: str, content: Mapping[str, Any], txn_id: str
    ) -> str:
        """``PUT /rooms/{roomId}/send/{eventType}/{txnId}``.

        :returns: the event id (the first one for a repeated transaction id).
        :raises MatrixError: 403 (the auth rules refuse: not joined, not enough power), 404
            (unknown room), 400, 413.
        """
        _check_id(event_type, "eventType")
        if not isinstance(content, Mapping):
            raise bad_json("Content must be a JSON object")
        user_id = requester.user_id

        async def make(key: tuple[str, str, str, str]) -> str:
            if event_type == "m.room.redaction" and isinstance(content.get("redacts"), str):
                await self._check_may_redact(room_id, user_id, content["redacts"])
            if self.relations is not None:
                await self.relations.check_new_event(room_id, user_id, event_type, content)
            event = await self.events.send(room_id, type=event_type, sender=user_id, content=content, client_txn=key)
            if event.type == "m.room.redaction":
                await self.store.rooms.index_redactions()
            return event.event_id

        return await self._with_txn(requester, txn_id, room_id, f"/rooms/{room_id}/send/{event_type}", make)

    async def set_state(
        self, requester: Requester, room_id: str, event_type: str, state_key: str, content: Mapping[str, Any]
    ) -> str:
        """``PUT /rooms/{roomId}/state/{eventType}/{stateKey}``. Setting a state to the
        content it already has (from the same sender) returns the existing event.

        :returns: the event id.
        :raises MatrixError: 403, 404, 400 (``M_BAD_ALIAS`` for a canonical alias that does
            not point to the room), 413.
        """
        _check_id(event_type, "eventType")
        _check_id(state_key, "stateKey", allow_empty=True)
        if not isinstance(content, Mapping):
            raise bad_json("Content must be a JSON object")
        user_id = requester.user_id
        current = await self.store.get_current_state_events(room_id, [(event_type, state_key)])
        existing = current.get((event_type, state_key))
        if existing is not None and existing.sender == user_id and existing.content == dict(content):
            return existing.event_id
        if event_type == "m.room.canonical_alias" and state_key == "":
            await self._check_canonical_alias(room_id, content, existing)
        if event_type == "m.room.member" and content.get("membership") == "invite":
            # An invite goes through the membership handler whichever API the client uses:
            # a user of another server must sign it (the federation invite handshake).
            await self.membership.invite(
                user_id, room_id, state_key, reason=content.get("reason"), is_direct=content.get("is_direct") is True
            )
            found = await self.store.get_current_state_events(room_id, [(event_type, state_key)])
            return found[(event_type, state_key)].event_id
        event = await self.events.send(room_id, type=event_type, sender=user_id, content=content, state_key=state_key)
        return event.event_id

    async def _check_canonical_alias(self, room_id: str, content: Mapping[str, Any], existing: Optional[Event]) -> None:
        """Spec ``m.room.canonical_alias``: new aliases must be valid and point to the
        room (400 ``M_BAD_ALIAS``); aliases already in the event are not checked."""
        old = set()
        if existing is not None:
            if isinstance(existing.content.get("alias"), str):
                old.add(existing.content["alias"])
            alt = existing.content.get("alt_aliases")
            if isinstance(alt, list):
                old.update(a for a in alt if isinstance(a, str))
        new = []
        alias = content.get("alias")
        if alias is not None:
            if not isinstance(alias, str):
                raise bad_json("alias must be a string")
            new.append(alias)
        alt = content.get("alt_aliases")
        if alt is not None:
            if not isinstance(alt, list) or not all(isinstance(a, str) for a in alt):
                raise bad_json("alt_aliases must be a list of strings")
            new.extend(alt)
        for a in new:
            if a in old:
                continue
            if split_alias(a) is None:
                raise MatrixError(400, M_BAD_ALIAS, f"{a!r} is not a valid room alias")
            try:
                found = await self.directory.resolve_alias(a)
            except MatrixError:
                found = None
            if found is None or found.get("room_id") != room_id:
                raise MatrixError(400, M_BAD_ALIAS, f"{a} does not point to this room")

    async def _check_may_redact(self, room_id: str, user_id: str, event_id: str) -> None:
        """Client-server API "Redactions": anyone may redact their own events (with the
        power to send ``m.room.redaction``, which the auth rules check); redacting other
        users' events needs the room's ``redact`` level. From room v3 the auth rules do
        not check the latter, so it is checked here."""
        target = await self.store.get_event(event_id) if isinstance(event_id, str) else None
        if target is not None and target.room_id == room_id and target.sender == user_id:
            return
        power = await current_power(self.store, room_id, user_id)
        if power.user_level(user_id) < power.power_levels.redact:
            raise forbidden("You may not redact other users' events")

    async def redact(
        self, requester: Requester, room_id: str, event_id: str, txn_id: str, reason: Optional[str] = None
    ) -> str:
        """``PUT /rooms/{roomId}/redact/{eventId}/{txnId}``.

        :returns: the redaction's event id.
        :raises MatrixError: 403, 404, 400.
        """
        _check_id(event_id, "eventId")
        reason = check_reason(reason)
        user_id = requester.user_id

        async def make(key: tuple[str, str, str, str]) -> str:
            await self._check_may_redact(room_id, user_id, event_id)
            content = {"reason": reason} if reason else {}
            event = await self.events.send(
                room_id, type="m.room.redaction", sender=user_id, content=content, redacts=event_id, client_txn=key
            )
            await self.store.rooms.index_redactions()
            return event.event_id

        return await self._with_txn(requester, txn_id, room_id, f"/rooms/{room_id}/redact/{event_id}", make)

    # -- reading state ------------------------------------------------------------------------

    async def readable_state(self, room_id: str, user_id: str) -> Mapping[tuple[str, str], str]:
        """The state a user may read: the current state if joined (or the room is
        world-readable), the state after their membership event if they left or were
        banned (spec: "as it was at the moment they left").

        :raises MatrixError: 403 otherwise (404 for an unknown room).
        """
        if await self.events.room_version(room_id) is None:
            raise forbidden("You are not in this room")
        membership = await self.store.rooms.get_membership(room_id, user_id)
        if membership is not None and membership.membership == "join":
            return await self.events.pipeline.current_state(room_id)
        if membership is not None and membership.membership in ("leave", "ban"):
            groups = await self.store.rooms.get_event_state_groups([membership.event_id])
            pair = groups.get(membership.event_id)
            if pair is not None:
                return await self.store.get_state_group(pair[1])
        hv = await self.store.get_current_state_events(room_id, [HISTORY_VISIBILITY_KEY])
        if history_visibility(hv.get(HISTORY_VISIBILITY_KEY)) == WORLD_READABLE:
            return await self.events.pipeline.current_state(room_id)
        raise forbidden("You are not in this room")

    async def get_state(self, requester: Requester, room_id: str) -> list[dict[str, Any]]:
        """``GET /rooms/{roomId}/state``: every state event, client format."""
        state = await self.readable_state(room_id, requester.user_id)
        events = await self.store.get_events(state.values())
        ordered = [events[v] for _, v in sorted(state.items()) if v in events]
        return await self.source.serialize(ordered, user_id=requester.user_id, scope=transaction_scope(requester))

    async def get_state_event(
        self, requester: Requester, room_id: str, event_type: str, state_key: str, *, format: str = "content"
    ) -> dict[str, Any]:
        """``GET /rooms/{roomId}/state/{eventType}/{stateKey}``: the content (or, with
        ``format=event``, the whole event).

        :raises MatrixError: 404 ``M_NOT_FOUND`` if the room has no such state.
        """
        state = await self.readable_state(room_id, requester.user_id)
        event_id = state.get((event_type, state_key))
        event = await self.store.get_event(event_id) if event_id is not None else None
        if event is None:
            raise not_found("Event not found")
        [served] = await self.source.serialize([event], user_id=requester.user_id, scope=transaction_scope(requester))
        return served if format == "event" else served["content"]

    async def joined_rooms(self, requester: Requester) -> dict[str, Any]:
        """``GET /joined_rooms``."""
        rows = await self.store.rooms.get_memberships_for_user(requester.user_id)
        return {"joined_rooms": sorted(m.room_id for m in rows if m.membership == "join")}


class _CreateRequest:
    """A ``createRoom`` body, checked before anything is written.

    :raises MatrixError: 400 for anything malformed.
    """

    def __init__(
        self, body: Mapping[str, Any], server_name: str, versions: RoomVersionRegistry, default: RoomVersion
    ) -> None:
        if not isinstance(body, Mapping):
            raise bad_json("Body must be a JSON object")
        visibility = body.get("visibility", "private")
        if visibility not in ("public", "private"):
            raise invalid_param("visibility", "visibility must be 'public' or 'private'")
        self.visibility = visibility
        preset = body.get("preset")
        if preset is None:
            preset = "public_chat" if visibility == "public" else "private_chat"
        if preset not in PRESETS:
            raise invalid_param("preset", f"Unknown preset {preset!r}")
        self.preset = preset
        version = body.get("room_version")
        if version is None:
            self.room_version = default
        else:
            if not isinstance(version, str):
                raise bad_json("room_version must be a string")
            try:
                self.room_version = versions.get(version)
            except UnknownRoomVersion:
                raise unsupported_room_version(f"Room version {version!r} is not supported") from None
        self.creation_content = self._object(body, "creation_content")
        self.power_level_override = self._object(body, "power_level_content_override")
        self.name = self._string(body, "name")
        self.topic = self._string(body, "topic")
        is_direct = body.get("is_direct", False)
        if not isinstance(is_direct, bool):
            raise bad_json("is_direct must be a boolean")
        self.is_direct = is_direct
        invite = body.get("invite", [])
        if not isinstance(invite, list) or len(invite) > MAX_CREATE_INVITES:
            raise bad_json(f"invite must be a list of at most {MAX_CREATE_INVITES} user IDs")
        for u in invite:
            if not valid_user_id(u):
                raise invalid_param("invite", f"{u!r} is not a valid user ID")
        self.invite = list(dict.fromkeys(invite))
        invite_3pid = body.get("invite_3pid", [])
        if invite_3pid:
            raise MatrixError(400, M_UNKNOWN, "Third-party invites are not supported")
        initial = body.get("initial_state", [])
        if not isinstance(initial, list) or len(initial) > MAX_INITIAL_STATE:
            raise bad_json(f"initial_state must be a list of at most {MAX_INITIAL_STATE} events")
        self.initial_state: list[tuple[str, str, dict]] = []
        for entry in initial:
            if not isinstance(entry, dict):
                raise bad_json("initial_state entries must be objects")
            t = entry.get("type")
            sk = entry.get("state_key", "")
            c = entry.get("content")
            if not isinstance(t, str) or not t or not isinstance(sk, str) or not isinstance(c, dict):
                raise bad_json("initial_state entries need a type, a string state_key and an object content")
            self.initial_state.append((t, sk, c))
        alias_name = body.get("room_alias_name")
        self.alias = None
        if alias_name is not None:
            if not valid_new_localpart(alias_name):
                raise invalid_param("room_alias_name", "Invalid room alias name")
            alias = f"#{alias_name}:{server_name}"
            if split_alias(alias) is None:
                raise invalid_param("room_alias_name", "Room alias too long")
            self.alias = alias

    @staticmethod
    def _object(body: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = body.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad_json(f"{key} must be an object")
        return dict(value)

    @staticmethod
    def _string(body: Mapping[str, Any], key: str) -> Optional[str]:
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise bad_json(f"{key} must be a string")
        return value
