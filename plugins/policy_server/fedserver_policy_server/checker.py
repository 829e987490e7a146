"""One server's policy server client: signatures for our events, checks (and soft failure) of
every event, against the policy server a room's ``m.room.policy`` names."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.auth import SoftFail, hookimpl
from fedserver.events.model import Event
from fedserver.federation.client import FederationClientError, HttpResponseError

from fedserver_policy_server.options import PolicyServerOptions
from fedserver_policy_server.room_policy import (
    POLICY_EVENT_TYPE,
    POLICY_KEY_ID,
    POLICY_STATE_KEY,
    SIGN_PATH,
    PolicyServer,
    has_valid_signature,
    is_exempt,
    policy_server_from_content,
    signature_from_response,
)

log = Logger()

SIGNED = "signed"
REFUSED = "refused"
UNREACHABLE = "unreachable"
#: How many rooms' policy servers are cached.
ROOM_CACHE_SIZE = 10_000
CREATE_STATE_KEY = ("m.room.create", "")


@dataclass(frozen=True)
class Verdict:
    """The policy server's answer about one event.

    :ivar kind: ``signed``, ``refused`` (it answered without a valid signature) or
        ``unreachable`` (no answer to go by).
    :ivar signature: the valid signature, for ``signed``.
    :ivar reason: why not, for the others.
    """

    kind: str
    signature: Optional[str] = None
    reason: str = ""


class _Room:
    """What the cache knows of one room: its ``m.room.policy`` event (id, or ``None`` for
    none), the policy server it names, and whether that server has a joined member."""

    __slots__ = ("policy_event_id", "server", "joined", "read_at")

    def __init__(self, policy_event_id: Optional[str], server: Optional[PolicyServer], joined: Optional[bool], read_at: float):
        self.policy_event_id = policy_event_id
        self.server = server
        self.joined = joined
        self.read_at = read_at


class RoomPolicyCache:
    """Each room's policy server, read from storage at most every ``ttl`` seconds and kept
    up to date from the events the plugin sees.

    Spec (client-server "Policy Servers"): the room uses a policy server when its
    ``m.room.policy`` event is valid and "the server name in the state event has" at least
    one joined user; judged on the current state.  The policy hook's state view holds only
    the events the auth rules read, so when it has no ``m.room.policy`` event we cannot tell
    "none" from "not loaded" and ask this cache, which asks storage when stale.

    :param clock: ``seconds()``.
    :param store: ``get_event``, ``get_current_state_events``, ``get_joined_hosts``.
    :param server_name: ours (never our own policy server: we do not serve ``/sign``).
    :param ttl: seconds a room's entry is used before storage is read again.
    """

    def __init__(self, clock: Any, store: Any, server_name: str, ttl: float) -> None:
        self._clock = clock
        self._store = store
        self._server_name = server_name
        self._ttl = ttl
        self._rooms: OrderedDict[str, _Room] = OrderedDict()

    def _parse(self, event: Optional[Event]) -> Optional[PolicyServer]:
        if event is None:
            return None
        server = policy_server_from_content(event.content)
        if server is not None and server.via == self._server_name:
            log.info("Room {room_id} names this server as its policy server; ignored (we do not sign)",
                     room_id=event.room_id)
            return None
        return server

    def _put(self, room_id: str, room: _Room) -> _Room:
        self._rooms[room_id] = room
        self._rooms.move_to_end(room_id)
        while len(self._rooms) > ROOM_CACHE_SIZE:
            self._rooms.popitem(last=False)
        return room

    def _fresh(self, room: Optional[_Room]) -> bool:
        return room is not None and self._clock.seconds() - room.read_at <= self._ttl

    def known(self, room_id: str, policy_event: Optional[Event]) -> Optional[_Room]:
        """The cached entry if it answers without storage, else ``None``."""
        room = self._rooms.get(room_id)
        if not self._fresh(room):
            return None
        if policy_event is not None and room.policy_event_id != policy_event.event_id:
            return None
        if room.server is not None and room.joined is None:
            return None
        return room

    async def policy_server(
        self, room_id: str, *, policy_event: Optional[Event] = None, policy_event_id: Any = ...,
    ) -> Optional[PolicyServer]:
        """The policy server ``room_id`` uses now, or ``None``.

        :param policy_event: the ``m.room.policy`` event of the current state if the caller
            holds it (``None``: unknown).
        :param policy_event_id: the id of that event from a complete current state
            (``None``: the room has none); leave out when unknown.
        """
        if policy_event_id is None:
            return None
        room = self._rooms.get(room_id)
        usable = (
            self._fresh(room)
            and (policy_event is None or room.policy_event_id == policy_event.event_id)
            and (policy_event_id is ... or room.policy_event_id == policy_event_id)
        )
        if not usable:
            now = self._clock.seconds()
            if policy_event is None and policy_event_id is not ...:
                policy_event = await self._store.get_event(policy_event_id)
            elif policy_event is None:
                found = await self._store.get_current_state_events(room_id, [POLICY_STATE_KEY, CREATE_STATE_KEY])
                if CREATE_STATE_KEY not in found:
                    # A room we are only now joining: its state is not stored yet, so
                    # "no m.room.policy" means nothing.  Ask again next time.
                    return None
                policy_event = found.get(POLICY_STATE_KEY)
            room = self._put(room_id, _Room(policy_event.event_id if policy_event else None,
                                            self._parse(policy_event), None, now))
        if room.server is None:
            return None
        if room.joined is None:
            # "if the server name in the state event has zero joined users in the room,
            # the room also does not use a Policy Server".
            room.joined = room.server.via in await self._store.get_joined_hosts(room_id)
        return room.server if room.joined else None

    def note(self, event: Event) -> None:
        """Follow an event about to enter the room: a new ``m.room.policy`` replaces the
        entry; a membership change of the policy server's users updates "joined"."""
        if is_exempt(event):
            server = self._parse(event)
            self._put(event.room_id, _Room(event.event_id, server, None, self._clock.seconds()))
            return
        if event.type != "m.room.member" or not isinstance(event.state_key, str):
            return
        room = self._rooms.get(event.room_id)
        if room is None or room.server is None or event.state_key.partition(":")[2] != room.server.via:
            return
        # A join makes the server joined; anything else may leave it without members.
        room.joined = True if event.membership == "join" else None


class PolicyServerChecker:
    """The plugin's per-server half, registered into one server's plugin manager by
    ``fedserver_on_start``.

    - ``fedserver_sign_local_event``: before one of our events is taken in, ask the room's
      policy server to sign it ("all homeservers wanting to send an event in the room MUST
      call the ``/sign`` API"); the signature travels with the event.
    - ``fedserver_check_event_policy``: on every event that passed the auth rules (ours
      and other servers'), verify the policy server's signature with the room's public
      key; ask ``/sign`` when it is missing or does not verify (the key may have been
      rotated); keep the signature it returns with the event (persisted, so passed on to
      whoever fetches the event from us); soft-fail the event when the policy server
      refuses, and when it cannot be reached only if the operator chose
      ``when_unreachable: closed``.  Never rejects.

    :param clock: the reactor (``seconds``).
    :param server_name: ours.
    :param federation_client: signs ``/sign`` requests with X-Matrix.
    :param store: see :class:`RoomPolicyCache`.
    :param options: :class:`PolicyServerOptions`.
    """

    def __init__(self, *, clock: Any, server_name: str, federation_client: Any, store: Any,
                 options: PolicyServerOptions = PolicyServerOptions()) -> None:
        self._client = federation_client
        self._options = options
        self.rooms = RoomPolicyCache(clock, store, server_name, options.room_cache_seconds)
        self._verdicts: OrderedDict[str, Verdict] = OrderedDict()
        self._asking: dict[str, defer.Deferred] = {}
        #: ``/sign`` requests made (for operators' metrics and tests).
        self.requests = 0

    @property
    def options(self) -> PolicyServerOptions:
        return self._options

    # -- the hooks ------------------------------------------------------------------------

    @hookimpl
    def fedserver_sign_local_event(
        self, event: Event, state: Mapping[tuple[str, str], str]
    ) -> Optional[defer.Deferred]:
        policy_id = state.get(POLICY_STATE_KEY)
        if policy_id is None or is_exempt(event):
            return None  # no m.room.policy in the (complete) state: nothing to ask
        return defer.Deferred.fromCoroutine(self._sign_local(event, policy_id))

    @hookimpl
    def fedserver_check_event_policy(
        self, event: Event, state: Mapping[tuple[str, str], Event]
    ) -> Optional[defer.Deferred]:
        policy_event = state.get(POLICY_STATE_KEY)
        if is_exempt(event):
            self.rooms.note(event)
            return None
        room = self.rooms.known(event.room_id, policy_event)
        if room is not None and (room.server is None or not room.joined):
            self.rooms.note(event)
            return None  # the usual case: the room uses no policy server
        return defer.Deferred.fromCoroutine(self._check(event, policy_event))

    # -- the work ------------------------------------------------------------------------

    async def _sign_local(self, event: Event, policy_id: str) -> Optional[dict[str, dict[str, str]]]:
        server = await self.rooms.policy_server(event.room_id, policy_event_id=policy_id)
        if server is None:
            return None
        verdict = await self.verdict(server, event)
        if verdict.kind != SIGNED:
            log.info("Policy server {via} gave no signature for our {event_id}: {reason}",
                     via=server.via, event_id=event.event_id, reason=verdict.reason)
            return None
        return {server.via: {POLICY_KEY_ID: verdict.signature}}

    async def _check(self, event: Event, policy_event: Optional[Event]) -> Optional[SoftFail]:
        try:
            server = await self.rooms.policy_server(event.room_id, policy_event=policy_event)
            if server is None or has_valid_signature(event, server):
                return None
            verdict = await self.verdict(server, event)
            if verdict.kind == SIGNED:
                # Signatures are outside the event id, hashes and other signatures: adding
                # the policy server's changes nothing else.  The pipeline persists the PDU
                # after this hook, so the signature is stored and served with the event.
                event.pdu.setdefault("signatures", {}).setdefault(server.via, {})[POLICY_KEY_ID] = verdict.signature
                return None
            if verdict.kind == REFUSED:
                return SoftFail(f"the room's policy server {server.via} refused to sign it: {verdict.reason}")
            if self._options.fail_closed:
                return SoftFail(f"the room's policy server {server.via} could not be asked ({verdict.reason});"
                                " failing closed")
            log.warn("Policy server {via} could not be asked about {event_id} ({reason}); failing open",
                     via=server.via, event_id=event.event_id, reason=verdict.reason)
            return None
        finally:
            self.rooms.note(event)

    def verdict(self, server: PolicyServer, event: Event) -> "defer.Deferred[Verdict]":
        """The policy server's answer about ``event``: remembered per event id, and one
        request at a time per event."""
        known = self._verdicts.get(event.event_id)
        if known is not None:
            return defer.succeed(known)
        asking = self._asking.get(event.event_id)
        if asking is None:
            asking = defer.Deferred.fromCoroutine(self._ask(server, event))
            if not asking.called:
                self._asking[event.event_id] = asking
        waiter: defer.Deferred = defer.Deferred()
        asking.addBoth(lambda v: (waiter.callback(v), v)[1])
        return waiter

    async def _ask(self, server: PolicyServer, event: Event) -> Verdict:
        try:
            verdict = await self._request(server, event)
        finally:
            self._asking.pop(event.event_id, None)
        self._verdicts[event.event_id] = verdict
        while len(self._verdicts) > self._options.verdict_cache_size:
            self._verdicts.popitem(last=False)
        return verdict

    async def _request(self, server: PolicyServer, event: Event) -> Verdict:
        """``POST /_matrix/policy/v1/sign`` with the PDU (server-server API), X-Matrix signed."""
        body = {k: v for k, v in event.pdu.items() if k != "unsigned"}
        self.requests += 1
        try:
            answer = await self._client.post_json(server.via, SIGN_PATH, body, timeout=self._options.timeout)
        except HttpResponseError as e:
            what = f"HTTP {e.code} {e.errcode or ''}: {e.error or ''}".strip()
            # 429 and 5xx say nothing about the event; 404/405 M_UNRECOGNIZED say the
            # server is no policy server at all.  Any other answer is a refusal (400
            # M_FORBIDDEN, M_BAD_JSON; 403 when we are ACL'd; 404 M_NOT_FOUND).
            if e.code == 429 or e.code >= 500 or e.errcode == "M_UNRECOGNIZED":
                return Verdict(UNREACHABLE, reason=what)
            return Verdict(REFUSED, reason=what)
        except (FederationClientError, ValueError) as e:
            return Verdict(UNREACHABLE, reason=f"{type(e).__name__}: {e}")
        signature, why = signature_from_response(answer, event, server)
        if signature is None:
            return Verdict(REFUSED, reason=why)
        return Verdict(SIGNED, signature=signature)


__all__ = ["PolicyServerChecker", "RoomPolicyCache", "Verdict", "SIGNED", "REFUSED", "UNREACHABLE",
           "POLICY_EVENT_TYPE"]
