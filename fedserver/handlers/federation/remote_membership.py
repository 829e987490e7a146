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
from fedserver.federation.client import FederationClientError, HttpResponseError, fed_path
from fedserver.handlers.federation.handshakes import strip_received_state
from fedserver.handlers.rooms.membership import check_outcome
from fedserver.handlers.rooms.pipeline import ACCEPTED, MISSING, REJECTED, SOFT_FAILED, RoomPipeline
from fedserver.handlers.federation.receipt import check_received
from fedserver.errors import MatrixError
from fedserver.room_versions import RoomVersion, RoomVersionRegistry, UnknownRoomVersion
from fedserver.storage.interface import StateKey

log = Logger()


#: State events of a joined room checked and stored per step (see ``_take_in_join``).
JOIN_STATE_CHUNK = 2000


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
    ) -> None:
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
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server} is unreachable: {e}")) from None
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
        try:
            event = build_from_template(
                template, rv, origin_server_ts=self._now_ms(), server_name=self._server_name, signing_key=self._signing_key
            )
        except InvalidEvent as e:
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server}'s template is invalid: {e}")) from None
        resp = await self._send(server, "join", room_id, event)
        started = time.monotonic()
        joined = await self._take_in_join(server, room_id, rv, event, resp)
        log.info(
            "Joined {room_id} via {server}: {n} state events checked and stored in {s:.2f}s",
            room_id=room_id, server=server, n=len(resp.get("state") or []), s=time.monotonic() - started,
        )
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
                raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server} is unreachable: {e}")) from None
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

    async def _take_in_join(self, server: str, room_id: str, rv: RoomVersion, event: Event, resp: dict) -> Event:
        # A restricted join comes back countersigned by the resident: use that copy.
        returned = resp.get("event")
        if isinstance(returned, dict):
            checked = await check_received(self._keyring, [returned], rv, room_id=room_id)
            if checked.events and checked.events[0].event_id == event.event_id:
                event = checked.events[0]
        state_pdus = resp.get("state")
        chain_pdus = resp.get("auth_chain")
        if not isinstance(state_pdus, list) or not isinstance(chain_pdus, list):
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server}'s send_join answer lacks state"))
        if resp.get("members_omitted") is not False and resp.get("members_omitted") is not None:
            # Server-server spec, send_join v2: members_omitted is true "if m.room.member
            # events have been omitted from state" (MSC3706), which a resident may only do
            # when asked (omit_members=true; we never ask, yet). Such a state is not the
            # room's state: taking it as complete would show a room without its members.
            # Nothing is stored; the next candidate is tried.
            raise HandshakeFailed(MatrixError(
                502, "M_UNKNOWN", f"{server} answered send_join with partial state (members_omitted) unasked"
            ))
        # The create event first: nothing is stored for a room whose create event is wrong.
        created = await check_received(
            self._keyring,
            [p for p in state_pdus if isinstance(p, dict) and p.get("type") == "m.room.create" and p.get("state_key") == ""][:1],
            rv, room_id=room_id,
        )
        create = created.events[0] if created.events else None
        if create is None:
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", f"{server}'s state has no create event"))
        if create.content.get("room_version", "1") != rv.identifier:
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", "The create event names another room version"))
        if rv.room_id_from_create_event and "!" + create.event_id[1:] != room_id:
            raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", "The create event does not match the room id"))
        chain = await check_received(self._keyring, chain_pdus, rv, room_id=room_id)
        verified = {**chain.verified, **created.verified}
        by_id = {e.event_id: e for e in chain.events}
        outcomes = dict(await self._pipeline.process_outliers(room_id, [create, *chain.events], verified_servers=verified))
        # Then the state, in chunks: checking a chunk (signatures on the thread pool) overlaps
        # storing the one before (the database thread), and large rooms log their progress.
        state_events: list[Event] = [create]
        pending = None
        for start in range(0, len(state_pdus), JOIN_STATE_CHUNK):
            part = await check_received(self._keyring, state_pdus[start:start + JOIN_STATE_CHUNK], rv, room_id=room_id)
            verified.update(part.verified)
            for e in part.events:
                by_id[e.event_id] = e
                if e.state_key is not None and e.event_id != create.event_id:
                    state_events.append(e)
            if pending is not None:
                outcomes.update(await pending)
            pending = self._pipeline.process_outliers(room_id, part.events, verified_servers=verified)
            if len(state_pdus) > JOIN_STATE_CHUNK:
                log.info("Joining {room_id}: {n} of {total} state events checked",
                         room_id=room_id, n=min(start + JOIN_STATE_CHUNK, len(state_pdus)), total=len(state_pdus))
        if pending is not None:
            outcomes.update(await pending)
        # An event whose auth events came in a later chunk (a resident that left them out of
        # auth_chain) is checked again now that everything is stored.
        again = [e for e in state_events if outcomes.get(e.event_id) is not None and outcomes[e.event_id].status == MISSING]
        if again:
            outcomes.update(await self._pipeline.process_outliers(room_id, again, verified_servers=verified))
        state: dict[StateKey, str] = {}
        for e in state_events:
            o = outcomes.get(e.event_id)
            if o is not None and o.status == ACCEPTED:
                state[(e.type, e.state_key)] = e.event_id
        for a in event.auth_event_ids:
            if a not in by_id and a not in outcomes:
                if not await self._store.have_events([a]):
                    raise HandshakeFailed(MatrixError(502, "M_UNKNOWN", "The join's auth events were not returned"))
        # Our join goes to every server in the room too, queued with it (the resident
        # sends it as well; receivers drop the copy they already have).
        result = await self._pipeline.process(
            room_id, [event], state_before={event.event_id: state},
            verified_servers={event.event_id: frozenset({self._server_name, server})},
            distribute=True,
        )
        outcome = result[event.event_id]
        if outcome.status != ACCEPTED:
            why = outcome.refusal.reason if outcome.refusal else outcome.status
            raise HandshakeFailed(MatrixError(403, "M_FORBIDDEN", f"The join was refused here: {why}"))
        return event

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
