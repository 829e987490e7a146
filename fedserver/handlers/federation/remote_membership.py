"""This server's side of the membership handshakes for rooms hosted elsewhere."""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedserver.events.builder import build_event, build_from_template
from fedserver.events.model import Event
from fedserver.events.signing import signed_bytes_for_event
from fedserver.events.validation import InvalidEvent
from twisted.internet import defer

from fedserver.events.validation import is_valid_server_name
from fedserver.federation.client import (
    FederationClientError,
    HttpResponseError,
    InvalidResponse,
    RequestTimedOut,
    ResponseTooLarge,
    fed_path,
)
from fedserver.handlers.federation.intake import IntakeError, OutlierIntake
from fedserver.handlers.federation.handshakes import strip_received_state
from fedserver.handlers.rooms.membership import check_outcome
from fedserver.handlers.rooms.pipeline import ACCEPTED, REJECTED, SOFT_FAILED, PartialJoin, RoomPipeline
from fedserver.handlers.federation.receipt import check_received
from fedserver.errors import MatrixError
from fedserver.memory import release_free_memory
from fedserver.room_versions import RoomVersion, RoomVersionRegistry, UnknownRoomVersion

log = Logger()


#: State events of a joined room checked and stored per step (see ``OutlierIntake``).
JOIN_STATE_CHUNK = 2000
#: Seconds a send_join may take, answer included (a large room's state is read, checked
#: and stored as it arrives).
SEND_JOIN_TIMEOUT = 600.0
#: Joins with at least this many state and auth events give their memory back afterwards.
LARGE_JOIN = 5000
#: Default cap on a send_join answer (see the option ``send_join_max_response_size``).
DEFAULT_MAX_JOIN_SIZE = 1024 * 1024 * 1024


class HandshakeFailed(Exception):
    """One candidate server could not complete a handshake; another may.

    :ivar error: the MatrixError to give the user if no candidate succeeds.
    """

    def __init__(self, error: MatrixError):
        super().__init__(str(error))
        self.error = error


def _domain(user_or_room: str) -> Optional[str]:
    return user_or_room.split(":", 1)[1] if ":" in user_or_room else None


def join_candidates(
    preferred: Iterable[str], hints: Iterable[str], room_id: str, server_name: str
) -> list[str]:
    """The servers to try, in order, each once, never ourselves: ``preferred`` first (the
    invite's origin: seed 001 says to try it first and fall back to the others), then the
    ``hints`` (``server_name`` / ``via`` parameters, the directory's join candidates), then
    the room id's domain where it has one (rooms before v12)."""
    out: list[str] = []
    for s in list(preferred) + list(hints) + ([_domain(room_id)] if _domain(room_id) else []):
        if s and s != server_name and s not in out:
            out.append(s)
    return out


class RemoteMembership:
    """Joins, leaves and knocks on rooms hosted elsewhere, and invites remote users.

    A join runs the handshake of the server-server spec ("Joining Rooms"): ``make_join``
    offering every room version we support, the real event built from the template with
    our origin and timestamp, hashed and signed, ``send_join`` v2 (v1 where a peer lacks
    v2), then every returned event checked (format, signatures, hashes, each against its own
    auth events) and stored, and the join taken in on the returned state. If a candidate
    fails at any step, the next one is tried.

    :param client: the :class:`fedserver.federation.client.FederationClient`.
    :param keyring: verifies the events the resident returns.
    :param pipeline: the :class:`RoomPipeline`.
    :param store: the store.
    :param room_versions: the versions we support (all offered to ``make_join``).
    :param server_name: ours.
    :param signing_key: ours.
    :param clock: for timestamps.
    :param partial_state_joins: ask residents for partial state (send_join
        ``omit_members``); the room's members are then fetched by the resync that
        ``on_partial_join(room_id)`` starts.
    :param max_join_size: the largest send_join answer accepted, in bytes.
    """

    def __init__(
        self,
        *,
        client,
        keyring,
        pipeline: RoomPipeline,
        store,
        room_versions: RoomVersionRegistry,
        server_name: str,
        signing_key: Any,
        clock: IReactorTime,
        partial_state_joins: bool = True,
        max_join_size: int = DEFAULT_MAX_JOIN_SIZE,
        on_partial_join: Optional[Callable[[str], Any]] = None,
    ) -> None:
        self._partial_joins = partial_state_joins
        self._max_join_size = max_join_size
        self._on_partial_join = on_partial_join
        self._client = client
        self._keyring = keyring
        self._pipeline = pipeline
        self._store = store
        self._versions = room_versions
        self._server_name = server_name
        self._signing_key = signing_key
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    # -- joining -----------------------------------------------------------------------------

    async def join(
        self, user_id: str, room_id: str, candidates: Sequence[str], content: Optional[Mapping[str, Any]] = None
    ) -> Event:
        """Join ``user_id`` to ``room_id`` through the first candidate that can do it.

        :param candidates: servers to try, in order (see :func:`join_candidates`).
        :param content: extra member content (displayname, avatar_url, reason).
        :returns: our join event, once it and the room's state are stored.
        :raises MatrixError: the most telling error of the candidates (404 if none knows
            the room).
        """
        return await self._each_candidate(
            candidates, lambda server: self._join_via(server, user_id, room_id, content or {}), "join"
        )

    async def _each_candidate(self, candidates: Sequence[str], attempt, what: str):
        errors: list[MatrixError] = []
        for server in candidates:
            try:
                return await attempt(server)
            except HandshakeFailed as e:
                log.info("{what} via {server} failed: {error}", what=what, server=server, error=e.error)
                errors.append(e.error)
        if not candidates:
            raise MatrixError(404, "M_NOT_FOUND", "No server to contact for this room")
        # Prefer an answer that says something about the room over "unreachable".
        for code in (403, 400):
            for e in errors:
                if e.code == code:
                    raise e
        raise errors[-1] if errors else MatrixError(502, "M_UNKNOWN", f"Could not {what}")

    async def _make(self, server: str, kind: str, room_id: str, user_id: str, versions: bool) -> tuple[RoomVersion, dict]:
        args = {"ver": self._versions.identifiers()} if versions else None
        try:
            resp = await self._client.get_json(
                server, fed_path(f"/_matrix/federation/v1/make_{kind}/{{}}/{{}}", room_id, user_id), args=args
            )
        except HttpResponseError as e:
            raise HandshakeFailed(_relay(e)) from None
        except FederationClientError as e:
            raise HandshakeFailed(self._client_error(server, f"make_{kind}", e)) from None
        if not isinstance(resp, dict) or not isinstance(resp.get("event"), dict):
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server} sent a malformed make_{kind} answer"))
        try:
            rv = self._versions.get(resp.get("room_version", "1"))
        except UnknownRoomVersion:
            raise HandshakeFailed(
                MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "The room's version is not supported here")
            ) from None
        template = resp["event"]
        content = template.get("content")
        if (
            template.get("type") != "m.room.member"
            or template.get("sender") != user_id
            or template.get("state_key") != user_id
            or template.get("room_id", room_id) != room_id
            or not isinstance(content, dict)
            or content.get("membership") != kind
        ):
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server} offered an unexpected {kind} template"))
        return rv, template

    async def _join_via(self, server: str, user_id: str, room_id: str, extra: Mapping[str, Any]) -> Event:
        rv, template = await self._make(server, "join", room_id, user_id, versions=True)
        template = dict(template)
        template["content"] = {**extra, **template["content"], "membership": "join"}
        event = self._build(server, template, rv)
        started = time.monotonic()

        def check_create(create: Event) -> None:
            if create.content.get("room_version", "1") != rv.identifier:
                raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", "The create event names another room version"))
            if rv.room_id_from_create_event and "!" + create.event_id[1:] != room_id:
                raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", "The create event does not match the room id"))

        intake = OutlierIntake(self._keyring, self._pipeline, room_id, rv, check_create=check_create)
        top, asked = await self._send_join(server, room_id, event, intake)
        joined, partial = await self._take_in_join(server, room_id, rv, event, top, intake, asked)
        log.info(
            "Joined {room_id} via {server}{how}: {n} state and auth events checked and stored in {s:.2f}s",
            room_id=room_id, server=server, how=" with partial state" if partial else "",
            n=intake.received, s=time.monotonic() - started,
        )
        if intake.received >= LARGE_JOIN:
            # After the join is answered: a full collection walks every object (about
            # 0.1 s after a 20,000-member join), which the user need not wait for.
            self._clock.callLater(0, release_free_memory)
        if partial and self._on_partial_join is not None:
            self._on_partial_join(room_id)
        return joined

    def _build(self, server: str, template: dict, rv: RoomVersion) -> Event:
        """Our event from a resident's template (hashed, signed).

        :raises HandshakeFailed: if the template cannot make a valid event."""
        try:
            return build_from_template(
                template, rv, origin_server_ts=self._now_ms(), server_name=self._server_name, signing_key=self._signing_key
            )
        except InvalidEvent as e:
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server}'s template is invalid: {e}")) from None

    async def _send_join(
        self, server: str, room_id: str, event: Event, intake: OutlierIntake
    ) -> tuple[dict, bool]:
        """``send_join`` v2 (asking for partial state if configured), its answer read as it
        arrives: ``state`` and ``auth_chain`` go to ``intake`` batch by batch; v1 where the
        peer lacks v2.

        :returns: the answer's other members (``event``, ``members_omitted``,
            ``servers_in_room``; ``state`` and ``auth_chain`` map to ``None`` if present),
            and whether partial state was asked for (never through v1, which has no
            ``omit_members``).
        """
        path = fed_path("/_matrix/federation/v2/send_join/{}/{}", room_id, event.event_id)
        args = {"omit_members": "true"} if self._partial_joins else None

        def on_batch(key: str, pdus: list) -> defer.Deferred:
            return intake.feed(pdus, state=key == "state")

        try:
            top = await self._client.request_json_stream(
                "PUT", server, path, event.pdu, on_batch, stream_keys=("state", "auth_chain"), args=args,
                batch_size=JOIN_STATE_CHUNK, timeout=SEND_JOIN_TIMEOUT, max_size=self._max_join_size,
            )
            return top, args is not None
        except HttpResponseError as e:
            if not (e.code in (400, 404) and e.errcode in ("M_UNRECOGNIZED", None)):
                raise HandshakeFailed(_relay(e)) from None
        except FederationClientError as e:
            raise HandshakeFailed(self._client_error(server, "send_join", e)) from None
        # v1 answers [200, body], unstreamed.
        try:
            resp = await self._client.put_json(
                server, fed_path("/_matrix/federation/v1/send_join/{}/{}", room_id, event.event_id), event.pdu,
                timeout=SEND_JOIN_TIMEOUT, max_size=self._max_join_size,
            )
        except HttpResponseError as e1:
            raise HandshakeFailed(_relay(e1)) from None
        except FederationClientError as e1:
            raise HandshakeFailed(self._client_error(server, "send_join", e1)) from None
        if isinstance(resp, list) and len(resp) == 2 and isinstance(resp[1], dict):
            resp = resp[1]
        if not isinstance(resp, dict):
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server} sent a malformed send_join answer"))
        for key in ("auth_chain", "state"):
            if isinstance(resp.get(key), list):
                await intake.feed(resp[key], state=key == "state")
                resp[key] = None
        return resp, False

    def _client_error(self, server: str, what: str, e: FederationClientError) -> MatrixError:
        """What to tell the user when a request to ``server`` failed."""
        if isinstance(e, ResponseTooLarge):
            return MatrixError(
                502, "M_TOO_LARGE",
                f"{server}'s {what} answer is larger than {self._max_join_size // (1024 * 1024)} MiB, the most "
                "this server accepts (option send_join_max_response_size)",
            )
        if isinstance(e, RequestTimedOut):
            return MatrixError(504, "M_UNKNOWN", f"{server} did not answer {what} in time")
        if isinstance(e, InvalidResponse):
            return MatrixError(502, "M_UNKNOWN", f"{server} sent an invalid {what} answer: {e}")
        return MatrixError(502, "M_UNKNOWN", f"{server} is unreachable: {e}")

    async def _send(self, server: str, kind: str, room_id: str, event: Event) -> dict:
        """``send_<kind>`` v2, falling back to v1 where the peer does not know v2.

        ``send_knock`` exists only as v1 and answers its body unwrapped (server-server
        spec "Knocking upon a room": ``PUT /_matrix/federation/v1/send_knock``)."""
        path = "/_matrix/federation/{}/send_%s/{}/{}" % kind
        if kind == "knock":
            try:
                resp = await self._client.put_json(
                    server, fed_path(path.format("v1", "{}", "{}"), room_id, event.event_id), event.pdu
                )
            except HttpResponseError as e:
                raise HandshakeFailed(_relay(e)) from None
            except FederationClientError as e:
                raise HandshakeFailed(self._client_error(server, "send_knock", e)) from None
            if not isinstance(resp, dict):
                raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server} sent a malformed send_knock answer"))
            return resp
        try:
            resp = await self._client.put_json(server, fed_path(path.format("v2", "{}", "{}"), room_id, event.event_id), event.pdu)
        except HttpResponseError as e:
            if e.code in (400, 404) and e.errcode in ("M_UNRECOGNIZED", None):
                try:
                    resp = await self._client.put_json(
                        server, fed_path(path.format("v1", "{}", "{}"), room_id, event.event_id), event.pdu
                    )
                except HttpResponseError as e1:
                    raise HandshakeFailed(_relay(e1)) from None
                except FederationClientError as e1:
                    raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server} is unreachable: {e1}")) from None
                # v1 answers [200, body].
                if isinstance(resp, list) and len(resp) == 2 and isinstance(resp[1], dict):
                    resp = resp[1]
            else:
                raise HandshakeFailed(_relay(e)) from None
        except FederationClientError as e:
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server} is unreachable: {e}")) from None
        if not isinstance(resp, dict):
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server} sent a malformed send_{kind} answer"))
        return resp

    async def _take_in_join(
        self, server: str, room_id: str, rv: RoomVersion, event: Event, top: dict, intake: OutlierIntake,
        asked: bool,
    ) -> tuple[Event, bool]:
        """Check the rest of the send_join answer, finish storing its events, and take our
        join in on the state it gave (marking the room partial-state if members were
        omitted, which only an answer to ``omit_members=true`` may do).

        :returns: ``(our join, whether the room is partial-state)``.
        """
        if "state" not in top or "auth_chain" not in top:
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server}'s send_join answer lacks state"))
        omitted = top.get("members_omitted")
        if omitted is None:
            omitted = False  # absent (v1, older servers) or null: the full state
        if type(omitted) is not bool:
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server}'s members_omitted is not a boolean"))
        partial: Optional[PartialJoin] = None
        if omitted:
            # Server-server spec, send_join v2: members_omitted is true "if m.room.member
            # events have been omitted from state" (MSC3706), which a resident may only do
            # when asked (omit_members=true), and servers_in_room is then required. A
            # partial state we did not ask for is not taken as the room's state (it would
            # show a room without its members): our join is not taken in, and the next
            # candidate is tried. (The answer's events, read as they arrived, may be held
            # as outliers: they are signed events of the room that nothing refers to.)
            if not asked:
                raise HandshakeFailed(MatrixError(
                    502, "M_UNKNOWN",
                    f"{server} answered send_join with partial state (members_omitted) that was not asked for",
                ))
            servers = top.get("servers_in_room")
            if type(servers) is not list or not servers or not all(is_valid_server_name(x) for x in servers):
                raise HandshakeFailed(MatrixError(
                    502, "M_UNKNOWN", f"{server} omitted the room's members without a valid servers_in_room"
                ))
            partial = PartialJoin(event.event_id, server, tuple(sorted(set(servers) - {self._server_name})))
        # A restricted join comes back countersigned by the resident: use that copy.
        returned = top.get("event")
        if isinstance(returned, dict):
            checked = await check_received(self._keyring, [returned], rv, room_id=room_id)
            if checked.events and checked.events[0].event_id == event.event_id:
                event = checked.events[0]
        try:
            await intake.finish()
        except IntakeError as e:
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server}'s state: {e}")) from None
        state = dict(intake.state)
        if ("m.room.create", "") not in state:
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server}'s state has no create event"))
        unknown = [a for a in event.auth_event_ids if a not in intake.taken]
        if unknown and len(await self._store.have_events(unknown)) < len(unknown):
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", "The join's auth events were not returned"))
        # Our join goes to every server in the room too, queued with it (the resident
        # sends it as well; receivers drop the copy they already have). In a partial-state
        # room those are the resident's servers_in_room, marked in the same transaction.
        result = await self._pipeline.process(
            room_id, [event], state_before={event.event_id: state},
            verified_servers={event.event_id: frozenset({self._server_name, server})},
            partial_join=partial,
            distribute=True,
        )
        outcome = result[event.event_id]
        if outcome.status != ACCEPTED:
            why = outcome.refusal.reason if outcome.refusal else outcome.status
            raise HandshakeFailed(MatrixError(403, "M_FORBIDDEN", f"The join was refused here: {why}"))
        return event, partial is not None

    # -- leaving and knocking -------------------------------------------------------------

    async def leave(self, user_id: str, room_id: str, candidates: Sequence[str], reason: Optional[str] = None) -> Event:
        """Leave (or reject an invite to) a room we may not be in, through ``make_leave`` /
        ``send_leave`` on the first candidate that answers."""

        async def via(server: str) -> Event:
            rv, template = await self._make(server, "leave", room_id, user_id, versions=False)
            template = dict(template)
            if reason:
                template["content"] = {**template["content"], "reason": reason}
            event = self._build(server, template, rv)
            await self._send(server, "leave", room_id, event)
            return event

        return await self._each_candidate(candidates, via, "leave")

    async def knock(
        self, user_id: str, room_id: str, candidates: Sequence[str], reason: Optional[str] = None
    ) -> tuple[Event, list]:
        """Knock on a room through ``make_knock`` / ``send_knock``.

        :returns: ``(knock event, knock_room_state)``.
        """

        async def via(server: str):
            rv, template = await self._make(server, "knock", room_id, user_id, versions=True)
            template = dict(template)
            if reason:
                template["content"] = {**template["content"], "reason": reason}
            event = self._build(server, template, rv)
            resp = await self._send(server, "knock", room_id, event)
            return event, strip_received_state(resp.get("knock_room_state") or resp.get("knock_state"))

        return await self._each_candidate(candidates, via, "knock")

    # -- inviting a remote user --------------------------------------------------------------

    async def invite(
        self,
        room_id: str,
        rv: RoomVersion,
        *,
        sender: str,
        target: str,
        prepare: Callable[..., Awaitable[dict]],
        invite_room_state: list,
        content: Optional[Mapping[str, Any]] = None,
    ) -> Event:
        """Invite ``target`` (on another server) to one of our rooms: the invite is signed
        by us, sent to the invitee's server (``invite`` v2 with stripped room state), and
        only the copy that server signed is taken into the room.

        :param prepare: ``EventCreator.prepare``-like coroutine giving prev/auth/depth on
            the current state.
        :returns: the invite as signed by both servers, taken into the room.
        :raises MatrixError: if the invitee's server refuses or cannot be reached.
        """
        server = _domain(target)
        member_content = {**(content or {}), "membership": "invite"}
        state = await self._pipeline.current_state(room_id)
        extremities = await self._pipeline.forward_extremities(room_id)
        fields = await prepare(
            room_id, rv, state, extremities, type="m.room.member", sender=sender, content=member_content, state_key=target
        )
        event = build_event(
            rv, room_id=room_id, type="m.room.member", sender=sender, content=member_content, state_key=target,
            origin_server_ts=self._now_ms(), server_name=self._server_name, signing_key=self._signing_key, **fields,
        )
        body = {"event": event.pdu, "room_version": rv.identifier, "invite_room_state": invite_room_state}
        try:
            resp = await self._client.put_json(
                server, fed_path("/_matrix/federation/v2/invite/{}/{}", room_id, event.event_id), body
            )
        except HttpResponseError as e:
            raise _relay(e) from None
        except FederationClientError as e:
            raise MatrixError(502, "M_UNKNOWN", f"{server} is unreachable: {e}") from None
        signed = resp.get("event") if isinstance(resp, dict) else None
        if not isinstance(signed, dict):
            raise MatrixError(502, "M_UNKNOWN", f"{server} sent a malformed invite answer")
        checked = await check_received(self._keyring, [signed], rv, room_id=room_id)
        if (
            not checked.events
            or checked.events[0].event_id != event.event_id
            or server not in (checked.events[0].signatures or {})
        ):
            raise MatrixError(502, "M_UNKNOWN", f"{server} did not return the invite signed")
        # Verify the invitee's server's signature too.
        verdicts = await self._keyring.verify_signatures(
            [(server, signed_bytes_for_event(signed, rv), signed["signatures"].get(server), 0)]
        )
        if verdicts[0] is not True:
            raise MatrixError(502, "M_UNKNOWN", f"{server}'s signature on the invite does not verify")
        invite = checked.events[0]
        result = await self._pipeline.process(room_id, [invite], local=True, persist_rejected=False)
        outcome = result[invite.event_id]
        if outcome.status in (REJECTED, SOFT_FAILED):
            check_outcome(invite, outcome)  # 403 naming the rule and the plugin
        if outcome.status != ACCEPTED:
            why = outcome.refusal.reason if outcome.refusal else outcome.status
            raise MatrixError(403, "M_FORBIDDEN", why)
        return invite


def _relay(e: HttpResponseError) -> MatrixError:
    """A peer's Matrix error, passed on to our client (5xx becomes 502)."""
    code = e.code if 400 <= e.code < 500 else 502
    return MatrixError(code, e.errcode or "M_UNKNOWN", e.error or f"Remote server answered {e.code}")
