"""Serving the membership handshakes to other servers: make_/send_ join, leave, knock, and invite."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Collection, Mapping, Optional, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedserver.auth.selection import auth_types_for_event
from fedserver.events.model import Event
from fedserver.events.signing import (
    SignatureServersError, optional_signature_servers, required_signature_servers, sign_event,
)
from fedserver.events.validation import (
    CheckedPdu, EventTooLarge, InvalidEvent, check_membership_content, check_pdu,
)
from fedserver.federation.keyring import key_validity_minimum
from fedserver.handlers.federation.room_access import RESTRICTED_RULES, RoomAccess, join_rule
from fedserver.handlers.federation.served import ServedPdus
from fedserver.handlers.rooms.pipeline import ACCEPTED, MISSING, RoomPipeline
from fedserver.errors import MatrixError
from fedserver.room_versions import RoomVersion, RoomVersionRegistry, UnknownRoomVersion
from fedserver.storage.interface import PersistEntry, StateKey
from fedserver.streamed import StreamedJSON

log = Logger()

#: State event types shown to an invitee or knocker before they are in the room (the
#: client-server spec's "stripped state" recommendation).
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.encryption",
)


def _domain(user_id: Any) -> Optional[str]:
    if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id:
        return None
    return user_id.split(":", 1)[1]


def _not_found() -> MatrixError:
    # Seed 004: a room we are not in, or one the user may not see (room_access.py),
    # answers exactly as a room that does not exist.
    return MatrixError(404, "M_NOT_FOUND", "Unknown room")


def _bad(why: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", why)


def _forbidden(why: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", why)


#: Most stripped state events kept from an invite or a knock.
MAX_STRIPPED_STATE = 50


def stripped_state(events: Sequence[Event]) -> list[dict[str, Any]]:
    """The stripped form (type, state_key, sender, content) of state events."""
    return [
        {"type": e.type, "state_key": e.state_key, "sender": e.sender, "content": e.content}
        for e in events
        if e.state_key is not None
    ]


def strip_received_state(entries: Any) -> list[dict[str, Any]]:
    """A peer's ``invite_room_state`` / ``knock_room_state`` in the client-server spec's
    stripped form (``type``, ``state_key``, ``sender``, ``content``: what /sync shows).

    Since Matrix 1.16 (MSC4311) servers send these as full PDUs, before as stripped
    events; both are accepted. Malformed entries are dropped, and at most
    :data:`MAX_STRIPPED_STATE` kept.
    """
    out: list[dict[str, Any]] = []
    for e in entries if isinstance(entries, list) else []:
        if (
            isinstance(e, dict)
            and isinstance(e.get("type"), str)
            and isinstance(e.get("state_key"), str)
            and isinstance(e.get("sender"), str)
            and isinstance(e.get("content"), dict)
        ):
            out.append({"type": e["type"], "state_key": e["state_key"], "sender": e["sender"], "content": e["content"]})
            if len(out) >= MAX_STRIPPED_STATE:
                break
    return out


async def federation_stripped_state(served: ServedPdus, events: Sequence[Event]) -> list[dict[str, Any]]:
    """State events as sent in ``invite_room_state`` / ``knock_room_state`` over
    federation: full PDUs since Matrix 1.16 (MSC4311: the receiver can check the
    ``m.room.create`` event against the room id, which from room v12 is its hash), in
    their redacted form where a redaction applies."""
    return [dict(p) for p in await served.pdus([e for e in events if e.state_key is not None])]


class HandshakeHandler:
    """The resident server's side of the membership handshakes (server-server spec
    "Joining Rooms", "Leaving Rooms (Rejecting Invites)", "Knocking upon a room",
    "Inviting to a room"), with every check of HOSTILE.md rows 18-25.

    A room the requesting user may not see (:mod:`fedserver.handlers.federation.room_access`)
    is answered exactly like a room we do not know (404 ``M_NOT_FOUND`` "Unknown room"),
    before any other check about the room (its version, its server ACL, the event), and
    nothing is stored for it.

    :param clock: for timestamps.
    :param store: the :class:`fedserver.storage.interface.Store`.
    :param pipeline: the :class:`RoomPipeline` (the only way events enter a room).
    :param creator: the :class:`fedserver.handlers.rooms.creator.EventCreator` (templates).
    :param engine: the :class:`fedserver.auth.engine.AuthEngine` (templates are checked
        before they are offered).
    :param keyring: verifies the joining server's signatures.
    :param room_versions: the versions we support.
    :param server_name: ours.
    :param signing_key: ours (restricted joins and invites are countersigned).
    :param on_invite: ``(event, invite_room_state) -> Awaitable`` recording an invite for a
        local user (so their client sees it), or ``None``.
    :param is_local_user: ``user_id -> Awaitable[bool]``: whether a user exists here.
    :param is_room_blocked: ``room_id -> bool``: rooms an administrator blocked: no server
        joins or knocks through us (403 ``M_FORBIDDEN``), none of our users is invited.
    :param acl_check: ``(origin, room_id) -> Awaitable`` raising 403 ``M_FORBIDDEN`` if the
        room's server ACL denies ``origin`` (called once the room is known to be visible),
        or ``None``.
    :param served: the :class:`ServedPdus` PDUs are served through (one on ``store`` by
        default).
    :param serve_partial_state: honour send_join ``omit_members`` (else full state always).
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        store,
        pipeline: RoomPipeline,
        creator,
        engine,
        keyring,
        room_versions: RoomVersionRegistry,
        server_name: str,
        signing_key: Any,
        on_invite: Optional[Callable[[Event, list], Awaitable[Any]]] = None,
        is_local_user: Optional[Callable[[str], Awaitable[bool]]] = None,
        is_room_blocked: Optional[Callable[[str], bool]] = None,
        acl_check: Optional[Callable[[str, str], Awaitable[Any]]] = None,
        served: Optional[ServedPdus] = None,
        serve_partial_state: bool = True,
    ) -> None:
        self._serve_partial_state = serve_partial_state
        self._clock = clock
        self._store = store
        self._pipeline = pipeline
        self._creator = creator
        self._engine = engine
        self._keyring = keyring
        self._room_versions = room_versions
        self._server_name = server_name
        self._signing_key = signing_key
        self._on_invite = on_invite
        self._is_local_user = is_local_user
        self._is_room_blocked = is_room_blocked
        self._acl_check = acl_check
        self._served = served if served is not None else ServedPdus(store)
        self._access = RoomAccess(store, server_name)

    def _check_not_blocked(self, room_id: str) -> None:
        if self._is_room_blocked is not None and self._is_room_blocked(room_id):
            raise _forbidden("This room has been blocked on this server")

    # -- make_join / make_leave / make_knock ------------------------------------------------

    async def make_membership(
        self, origin: str, room_id: str, user_id: str, membership: str, versions: Optional[Sequence[str]]
    ) -> dict[str, Any]:
        """Answer ``make_<membership>``: an event template on our current state.

        :param versions: the ``ver`` query values (join, knock); ``None`` for leave.
        :raises MatrixError: 403 if ``user_id`` is not on ``origin`` (HOSTILE 19), 404 if we
            are not in the room or the user may not see it (HOSTILE 20), 403 if the room's
            server ACL denies ``origin``, 400 ``M_INCOMPATIBLE_ROOM_VERSION`` if the joining
            server cannot speak the room's version (HOSTILE 18), 403 if the auth rules
            refuse the membership.
        """
        if _domain(user_id) != origin:
            raise _forbidden("The user is not on the requesting server")
        rv, _hosts = await self._visible_room(origin, room_id, user_id)
        if membership in ("join", "knock"):
            self._check_not_blocked(room_id)
        if versions is not None:
            # Spec: without ``ver`` the joining server is taken to support only version 1.
            if rv.identifier not in (versions or ["1"]):
                raise MatrixError(
                    400, "M_INCOMPATIBLE_ROOM_VERSION",
                    f"Your server does not support room version {rv.identifier}",
                    room_version=rv.identifier,
                )
        content: dict[str, Any] = {"membership": membership}
        state = await self._pipeline.current_state(room_id)
        if membership == "join":
            authoriser = await self._restricted_authoriser(room_id, rv, user_id, state)
            if authoriser is not None:
                content["join_authorised_via_users_server"] = authoriser
        template, state = await self._creator.template(
            room_id, rv, type="m.room.member", sender=user_id, content=content, state_key=user_id
        )
        await self._check_template(rv, template, state, membership)
        return {"event": template, "room_version": rv.identifier}

    async def _resident_room(self, room_id: str) -> tuple[RoomVersion, set[str]]:
        """The room's version and its joined servers (ours among them), else 404."""
        rv = await self._store.get_room_version(room_id)
        hosts = await self._store.get_joined_hosts(room_id) if rv is not None else set()
        if rv is None or self._server_name not in hosts:
            raise _not_found()
        if await self._pipeline.is_partial_state(room_id):
            # We joined it with partial state and cannot tell the room's state yet: another
            # resident must serve the handshake (MSC3902). Answered as for a room we are
            # not in (whether the origin may see the room is not known yet either).
            raise _not_found()
        return rv, hosts

    async def _visible_room(self, origin: str, room_id: str, user_id: str) -> tuple[RoomVersion, set[str]]:
        """The room's version and its joined servers, once it is known that the room is
        here, that ``user_id`` may see it (else 404, as for a room that does not exist)
        and that its server ACL allows ``origin`` (else 403), in that order."""
        rv, hosts = await self._resident_room(room_id)
        state = await self._pipeline.current_state(room_id)
        if not await self._access.user_may_see(state, user_id) and not await self._join_allowed(room_id, rv, user_id):
            raise _not_found()
        if self._acl_check is not None:
            await self._acl_check(origin, room_id)
        return rv, hosts

    async def _restricted_authoriser(
        self, room_id: str, rv: RoomVersion, user_id: str, state: Mapping[StateKey, str]
    ) -> Optional[str]:
        """For restricted rooms (v8+), a local user who may invite, if the joining user is
        neither invited nor joined and belongs to a room the join rules allow."""
        if not rv.restricted_joins:
            return None
        jr_id = state.get(("m.room.join_rules", ""))
        if jr_id is None:
            return None
        events = await self._store.get_events([jr_id])
        jr = events.get(jr_id)
        rule = jr.content.get("join_rule") if jr else None
        if rule not in ("restricted", "knock_restricted"):
            return None
        member_id = state.get(("m.room.member", user_id))
        if member_id is not None:
            m = (await self._store.get_events([member_id])).get(member_id)
            if m is not None and m.membership in ("invite", "join"):
                return None
        if not await self._access.meets_conditions(jr, user_id):
            # Not a member of an allowed room we are in; rooms we are not in we cannot
            # judge (a user who may see the room but meets no condition we can check).
            raise MatrixError(
                400, "M_UNABLE_TO_AUTHORISE_JOIN",
                "The user is not a member of any room the join rules allow, as far as this server knows",
            )
        # A joined local user whose power reaches the invite level.
        pl_id = state.get(("m.room.power_levels", ""))
        pl = (await self._store.get_events([pl_id])).get(pl_id) if pl_id else None
        invite_level = 0
        users: Mapping[str, Any] = {}
        default = 0
        if pl is not None:
            invite_level = _as_int(pl.content.get("invite"), 0)
            users = pl.content.get("users") if isinstance(pl.content.get("users"), dict) else {}
            default = _as_int(pl.content.get("users_default"), 0)
        creators = await self._creators(room_id, rv, state)
        members = await self._store.get_room_members(room_id, "join")
        candidates = []
        for member in members:
            if _domain(member) != self._server_name:
                continue
            level = float("inf") if member in creators else _as_int(users.get(member), default)
            if level >= invite_level:
                candidates.append((-level if level != float("inf") else float("-inf"), member))
        if not candidates:
            raise MatrixError(400, "M_UNABLE_TO_GRANT_JOIN", "No user of this server may invite to the room")
        return sorted(candidates)[0][1]

    async def _creators(self, room_id: str, rv: RoomVersion, state: Mapping[StateKey, str]) -> set[str]:
        if not rv.privileged_creators:
            return set()
        create_id = state.get(("m.room.create", ""))
        create = (await self._store.get_events([create_id])).get(create_id) if create_id else None
        if create is None:
            return set()
        extra = create.content.get("additional_creators")
        return {create.sender} | ({u for u in extra if isinstance(u, str)} if isinstance(extra, list) else set())

    async def _join_allowed(self, room_id: str, rv: RoomVersion, user_id: str) -> bool:
        """Whether the auth rules, plugins' included, would let ``user_id`` join now: a
        join rule a plugin defines (e.g. ``org.fedserver.may_join``) shows the room to
        exactly the users it admits."""
        template, state = await self._creator.template(
            room_id, rv, type="m.room.member", sender=user_id, content={"membership": "join"}, state_key=user_id
        )
        return (await self._judge_template(rv, template, state)).allowed

    async def _check_template(
        self, rv: RoomVersion, template: dict[str, Any], state: Mapping[StateKey, str], membership: str
    ) -> None:
        """Offer a template only if the auth rules would accept it on the current state."""
        result = await self._judge_template(rv, template, state)
        if not result.allowed:
            # The user may see the room (checked first): the auth rules' reason is theirs.
            raise _forbidden(result.reason or "Not allowed")

    async def _judge_template(self, rv: RoomVersion, template: dict[str, Any], state: Mapping[StateKey, str]) -> Any:
        """The auth engine's verdict on a template on ``state``."""
        event = Event.from_pdu(template, rv, event_id="$template")
        need = auth_types_for_event(rv, event.type, event.state_key, event.sender, event.content)
        need.add(("m.room.create", ""))
        loaded = await self._store.get_events([state[k] for k in need if k in state])
        view = {k: loaded[state[k]] for k in need if k in state and state[k] in loaded}
        create = view.get(("m.room.create", ""))
        # A template is unsigned: judge it as the event it will become, signed by the
        # joining server and, for a restricted join naming one of our users, countersigned
        # by us at send_join (auth rule 5.2, rooms v8+: "validly signed by the
        # homeserver of the user ID denoted by" join_authorised_via_users_server).
        signers = frozenset(s for s in (_domain(event.sender), self._server_name) if s)
        return self._engine.check_against_state(event, view, create_event=create, verified_servers=signers)

    # -- send_join / send_leave / send_knock --------------------------------------------

    async def send_membership(
        self, origin: str, room_id: str, event_id: str, pdu: Any, membership: str, *, omit_members: bool = False
    ) -> dict[str, Any] | StreamedJSON:
        """Accept a signed membership event (``send_join`` / ``send_leave`` /
        ``send_knock``), take it into the room, pass it on, and answer.

        :param omit_members: send_join v2 ``omit_members=true``: the joining server accepts
            partial state (see :meth:`_join_response`).

        The checks that do not depend on the room come first (the same answer for any
        room); then whether the room is here and the sender may see it (404 otherwise,
        nothing stored), the server ACL, and only then the event against the room.

        :returns: the v2 response body (callers wrap it for v1).
        :raises MatrixError: HOSTILE rows 21-23: 400 ``M_BAD_JSON`` for a body that is not
            the expected membership event of this room, 403 for a refused or unsigned event
            or a restricted join we cannot authorise, 404 for a room we are not in or the
            sender may not see.
        """
        if not isinstance(pdu, dict):
            raise _bad("The body must be an event")
        if pdu.get("room_id") != room_id:
            raise _bad("The event's room_id does not match the path")
        if pdu.get("type") != "m.room.member":
            raise _bad("Not a membership event")
        content = pdu.get("content")
        if not isinstance(content, dict) or content.get("membership") != membership:
            raise _bad(f"The event's membership is not {membership}")
        if pdu.get("state_key") != pdu.get("sender"):
            raise _bad("state_key must be the sender")
        if not isinstance(pdu.get("sender"), str):
            raise _bad("sender must be a string")
        # Whether the room is here and the sender may see it comes first (a room it may
        # not see answers exactly like one that does not exist, and nothing is stored),
        # then the server ACL; then malformed for the room version (400) before anything
        # about authorization (403): the format, then what the auth rules read of the
        # content.
        rv, hosts_before = await self._visible_room(origin, room_id, pdu["sender"])
        checked, servers = _check_direct_event(pdu, rv)
        if _domain(pdu.get("sender")) != origin:
            raise _forbidden("The sender is not on the requesting server")
        if membership in ("join", "knock"):
            self._check_not_blocked(room_id)
        event = checked.event
        if event.event_id != event_id:
            raise _bad("The event id does not match the path")
        if not checked.content_hash_ok:
            raise _bad("The event's content hash does not match")
        # A restricted join names one of our users as the authoriser: we countersign, once
        # we have checked what that signature vouches for.
        if self._server_name in servers:
            await self._check_authorisable(room_id, event)
            signed = sign_event(dict(pdu), rv, self._server_name, self._signing_key)
            pdu = signed
            event = Event.from_pdu(pdu, rv, event.event_id)
        await self._verify(event, checked.signed_bytes, servers - {self._server_name})
        partial = omit_members and self._serve_partial_state
        verified = servers | await self._verify_optional(event, checked.signed_bytes, pdu, rv)
        # The other servers of the room get the event from us (spec "Joining Rooms": the
        # resident "sends the event to the other servers in the room"), queued in the
        # transaction that stores it: our 200 means it is committed and queued.
        outcomes = await self._pipeline.process(
            room_id, [event], verified_servers={event.event_id: verified},
            distribute=True, distribute_except=(origin,),
        )
        outcome = outcomes[event.event_id]
        if outcome.status == MISSING:
            raise _forbidden("The event cites events this server does not have")
        if outcome.status != ACCEPTED:
            reason = outcome.refusal.reason if outcome.refusal else outcome.status
            raise _forbidden(f"Not allowed: {reason}")
        if membership == "join":
            # With partial state, servers_in_room are those before the join (read when the
            # room was found here, above).
            if partial:
                return await self._join_response(room_id, event, pdu, hosts_before, hosts_before)
            return await self._join_response(room_id, event, pdu, await self._store.get_joined_hosts(room_id), None)
        if membership == "knock":
            return {"knock_room_state": await self._stripped_room_state(room_id)}
        return {}

    async def _check_authorisable(self, room_id: str, event: Event) -> None:
        """Our countersignature on a join naming one of our users in
        ``join_authorised_via_users_server`` says the joining user met the restricted
        room's conditions: the auth rules only check that we signed (rooms v8 rule 4.2.1:
        "If the event is not validly signed by the homeserver of the user ID denoted by the
        key, reject") and that the named user may invite (4.3.5.2), so checking the
        conditions is ours to do before signing. So: the user is invited or joined already, or the
        room is restricted and they are joined to an allowed room we are in.

        :raises MatrixError: 403 ``M_FORBIDDEN`` otherwise.
        """
        state = await self._pipeline.current_state(room_id)
        wanted = [v for v in (state.get(("m.room.member", event.sender)), state.get(("m.room.join_rules", ""))) if v]
        events = await self._store.get_events(wanted) if wanted else {}
        own = events.get(state.get(("m.room.member", event.sender), ""))
        if own is not None and own.membership in ("invite", "join"):
            return
        jr = events.get(state.get(("m.room.join_rules", ""), ""))
        if join_rule(jr) in RESTRICTED_RULES and await self._access.meets_conditions(jr, event.sender) is True:
            return
        raise _forbidden("This server cannot authorise the join: the user meets none of the room's conditions it can check")

    async def _verify(self, event: Event, signed_bytes: bytes, servers: Collection[str]) -> None:
        minimum = key_validity_minimum(event.origin_server_ts, event.room_version)
        sigs = event.signatures
        requests = [(s, signed_bytes, sigs.get(s), minimum) for s in sorted(servers)]
        verdicts = await self._keyring.verify_signatures(requests)
        for server, verdict in zip(sorted(servers), verdicts):
            if verdict is not True:
                raise _forbidden(f"Signature of {server} does not verify: {verdict}")

    async def _verify_optional(
        self, event: Event, signed_bytes: bytes, pdu: dict[str, Any], rv: RoomVersion
    ) -> set[str]:
        """The servers among :func:`optional_signature_servers` whose signature is present
        and valid (a missing or bad one is for the auth rules to judge, not an error)."""
        sigs = event.signatures
        servers = sorted(s for s in optional_signature_servers(pdu, rv) if sigs.get(s) is not None)
        if not servers:
            return set()
        minimum = key_validity_minimum(event.origin_server_ts, event.room_version)
        verdicts = await self._keyring.verify_signatures(
            [(s, signed_bytes, sigs.get(s), minimum) for s in servers]
        )
        return {s for s, verdict in zip(servers, verdicts) if verdict is True}

    async def _join_response(
        self, room_id: str, event: Event, pdu: dict, hosts: Collection[str], hosts_before: Optional[Collection[str]]
    ) -> StreamedJSON:
        """The send_join answer: the state before the join and its auth chain.

        With ``omit_members`` (``hosts_before`` given; server-server spec, send_join v2,
        Matrix 1.6): ``m.room.member`` events are left out of ``state`` except the joining
        user's own and, for a room with neither ``m.room.name`` nor
        ``m.room.canonical_alias``, those of the heroes of its summary; the auth chain is
        that of what is returned, without the events ``state`` already holds;
        ``members_omitted`` is true and ``servers_in_room`` lists the servers with joined
        members before the join.

        The ids are read here; the events themselves are read, turned into the PDUs we
        serve and written a chunk at a time (:meth:`ServedPdus.chunks`) as the answer goes
        out (a 20,000-member room's answer is ~13 MB: the joining server starts checking
        it at once, and neither side holds it whole). Members are written in sorted order, so
        ``auth_chain`` comes before ``state``: a joining server has the auth events of
        the state before the state itself.
        """
        groups = await self._store.get_state_ids_for_events([event.event_id])
        group = groups.get(event.event_id)
        state_ids: Mapping[StateKey, str] = await self._store.get_state_group(group) if group is not None else {}
        partial = hosts_before is not None
        if partial:
            ids = [v for (t, _), v in state_ids.items() if t != "m.room.member"]
            own = state_ids.get(("m.room.member", event.state_key))
            if own is not None:
                ids.append(own)
            if ("m.room.name", "") not in state_ids and ("m.room.canonical_alias", "") not in state_ids:
                ids.extend(await self._hero_member_ids(room_id, state_ids, event.state_key))
            ids = list(dict.fromkeys(ids))
        else:
            ids = list(state_ids.values())
        chain = await self._store.get_auth_chain_ids(ids + [event.event_id])
        if partial:
            chain -= set(ids)
        servers = sorted(set(hosts_before if partial else hosts) | {self._server_name})
        log.info(
            "send_join of {user} to {room_id}: {how} state ({n} events of {total}), auth chain of {c}",
            user=event.state_key, room_id=room_id, how="partial (members omitted)" if partial else "full",
            n=len(ids), total=len(state_ids), c=len(chain),
        )
        return StreamedJSON(
            {
                "origin": self._server_name,
                "event": pdu,
                "members_omitted": partial,
                "servers_in_room": servers,
            },
            {"state": lambda: self._served.chunks(ids), "auth_chain": lambda: self._served.chunks(list(chain))},
        )

    async def _hero_member_ids(self, room_id: str, state_ids: Mapping[StateKey, str], joiner: Optional[str]) -> list[str]:
        """The member events of the room's heroes (client-server spec, ``m.heroes``: the
        first 5 joined or invited members by stream ordering, never the user asking)."""
        # The room's current members, in storing order, are read from the database at
        # once when their member events are those of ``state_ids`` (the state before the
        # join: nothing but the join itself has changed a membership since, as a rule):
        # else each member event's position is looked up (one row per member).
        current = await self._pipeline.current_state(room_id)

        def members(state: Mapping[StateKey, str]) -> dict[StateKey, str]:
            return {k: v for k, v in state.items() if k[0] == "m.room.member" and k[1] != joiner}

        before = members(state_ids)
        if members(current) == before:
            rows = await self._store.get_earliest_members(room_id, ("join", "invite"), 6)
            # (Checked again: no membership may have changed while the rows were read. The
            # pipeline's map is replaced on every change: the same map, nothing changed.)
            now = await self._pipeline.current_state(room_id)
            if now is current or members(now) == before:
                return [event_id for user_id, event_id in rows if user_id != joiner][:5]
        member_ids = {v: k[1] for k, v in state_ids.items() if k[0] == "m.room.member" and k[1] != joiner}
        meta = await self._store.get_event_meta(member_ids)
        ordered = sorted(meta, key=lambda i: meta[i].event_nid)
        heroes: list[str] = []
        for start in range(0, len(ordered), 20):
            loaded = await self._store.get_events(ordered[start:start + 20])
            for i in ordered[start:start + 20]:
                ev = loaded.get(i)
                if ev is not None and ev.membership in ("join", "invite"):
                    heroes.append(i)
                    if len(heroes) == 5:
                        return heroes
        return heroes

    async def _stripped_room_state(self, room_id: str) -> list[dict[str, Any]]:
        state = await self._pipeline.current_state(room_id)
        ids = [state[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state]
        events = await self._store.get_events(ids)
        return await federation_stripped_state(self._served, [events[i] for i in ids if i in events])

    # -- invites ---------------------------------------------------------------------------

    async def on_invite(
        self, origin: str, room_id: str, event_id: str, pdu: Any, room_version: Any, invite_room_state: Any
    ) -> dict[str, Any]:
        """Accept an invite for one of our users (``PUT /v2/invite``): check it, countersign
        it, record it for the invitee, and return our signed copy.

        :raises MatrixError: 400 ``M_INCOMPATIBLE_ROOM_VERSION`` for a version we do not
            support (HOSTILE 24), 400 ``M_BAD_JSON`` for anything but an invite event of this
            room (HOSTILE 25), 403 if the invitee is not ours or the signature fails.
        """
        try:
            rv = self._room_versions.get(room_version)
        except UnknownRoomVersion:
            raise MatrixError(
                400, "M_INCOMPATIBLE_ROOM_VERSION", f"Room version {room_version!r} is not supported here",
                room_version=room_version if isinstance(room_version, str) else None,
            ) from None
        if not isinstance(pdu, dict):
            raise _bad("The body must carry an event")
        if pdu.get("room_id") != room_id:
            raise _bad("The event's room_id does not match the path")
        content = pdu.get("content")
        if pdu.get("type") != "m.room.member" or not isinstance(content, dict) or content.get("membership") != "invite":
            raise _bad("Not an invite event")
        # Malformed (400) before anything about authorization (403).
        checked, servers = _check_direct_event(pdu, rv)
        target = pdu.get("state_key")
        if _domain(target) != self._server_name:
            raise _forbidden("The invited user is not on this server")
        self._check_not_blocked(room_id)
        if self._is_local_user is not None and not await self._is_local_user(target):
            raise MatrixError(404, "M_NOT_FOUND", "No such user")
        if _domain(pdu.get("sender")) != origin:
            raise _forbidden("The inviter is not on the requesting server")
        if checked.event.event_id != event_id:
            raise _bad("The event id does not match the path")
        if not checked.content_hash_ok:
            raise _bad("The event's content hash does not match")
        await self._verify(checked.event, checked.signed_bytes, servers - {self._server_name})
        signed = sign_event(dict(pdu), rv, self._server_name, self._signing_key)
        event = Event.from_pdu(signed, rv, checked.event.event_id)
        state = strip_received_state(invite_room_state)
        await self._store.persist_events([PersistEntry(event=event, outlier=True)])
        if self._on_invite is not None:
            await self._on_invite(event, state)
        log.info("{target} invited to {room_id} by {sender}", target=target, room_id=room_id, sender=pdu.get("sender"))
        return {"event": signed}


def _check_direct_event(pdu: dict[str, Any], rv: RoomVersion) -> tuple[CheckedPdu, set[str]]:
    """The shape checks of a membership event given to us directly: the room version's
    event format (receipt check 1) and the parts of the content the auth rules read.

    :returns: the checked PDU and the servers whose signatures it needs.
    :raises MatrixError: 413 ``M_TOO_LARGE``, or 400 ``M_BAD_JSON`` naming the problem.
    """
    try:
        checked = check_pdu(pdu, rv)
        check_membership_content(pdu, rv)
        servers = required_signature_servers(pdu, rv)
    except EventTooLarge as e:
        raise MatrixError(413, "M_TOO_LARGE", f"Event too large: {e}") from None
    except (InvalidEvent, SignatureServersError) as e:
        raise _bad(f"Invalid event: {e}") from None
    return checked, servers


def _as_int(value: Any, default: int) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    return default
