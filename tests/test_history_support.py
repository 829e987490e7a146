"""Shared helpers for the history and refusals tests: a real room built with build_event and
persisted to real SQLite, and a loopback federation listener with X-Matrix signing."""

from __future__ import annotations

import io
import json
from typing import Any, Optional
from urllib.parse import quote

from signedjson.key import generate_signing_key, get_verify_key
from twisted.internet import reactor, task
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from fedserver.events.builder import build_event
from fedserver.events.model import Event
from fedserver.events.redaction import redact
from fedserver.federation.xmatrix import sign_request
from fedserver.http.federation.transport import FederationResource
from fedserver.http.federation.history import register_history_routes
from fedserver.http.resource import MatrixSite, build_tree
from fedserver.http.federation.xmatrix_auth import XMatrixAuthenticator
from fedserver.handlers.federation.history import HistoryHandler
from fedserver.room_versions import RoomVersion
from fedserver.auth.rule_ids import rule_id
from fedserver.storage import PersistEntry, Refusal
from tests.test_xmatrix_auth import FakeKeyring

US = "us.test"
PEER = "peer.test"
STRANGER = "stranger.test"  # never had a member in the room
GONE = "gone.test"  # had a member, who left
BASE = "/_matrix/federation/v1"

ALICE = f"@alice:{US}"
BOB = f"@bob:{PEER}"
DAVE = f"@dave:{GONE}"
MALLORY = f"@mallory:{PEER}"

SIGNING_KEYS = {name: generate_signing_key("k1") for name in (US, PEER, STRANGER, GONE)}


class RoomBuilder:
    """Builds a linear room DAG with real, signed events and the state before each.

    :ivar events: every event built, by name.
    :ivar entries: the PersistEntries to store, in order.
    """

    _rooms = 0

    def __init__(self, rv: RoomVersion) -> None:
        self.rv = rv
        RoomBuilder._rooms += 1
        # Rooms v12+ take their id from the create event.
        self.room_id: Optional[str] = None if rv.room_id_from_create_event else f"!room{RoomBuilder._rooms}:{US}"
        self.state: dict[tuple[str, str], str] = {}
        self.by_id: dict[str, Event] = {}
        self.events: dict[str, Event] = {}
        self.entries: list[PersistEntry] = []
        self.prev: list[str] = []
        self.depth = 0
        self.ts = 1_700_000_000_000

    def _auth(self, type: str, sender: str, state_key: Optional[str], content: dict) -> list[str]:
        keys = [("m.room.power_levels", ""), ("m.room.member", sender)]
        if not self.rv.room_id_from_create_event:
            keys.insert(0, ("m.room.create", ""))
        if type == "m.room.member":
            keys.append(("m.room.member", state_key))
            if content.get("membership") in ("join", "invite"):
                keys.append(("m.room.join_rules", ""))
        out = []
        for k in keys:
            e = self.state.get(k)
            if e is not None and e not in out:
                out.append(e)
        return out

    def add(
        self,
        name: str,
        type: str,
        sender: str,
        content: dict,
        state_key: Optional[str] = None,
        *,
        rejection: Optional[Refusal] = None,
        soft_failure: Optional[Refusal] = None,
        redacts: Optional[str] = None,
    ) -> Event:
        """Build the next event; a refused one neither changes the state nor becomes a
        prev event of later ones."""
        self.depth += 1
        self.ts += 1
        server = sender.split(":", 1)[1]
        is_create = type == "m.room.create"
        event = build_event(
            self.rv,
            room_id=None if (is_create and self.rv.room_id_from_create_event) else self.room_id,
            type=type,
            sender=sender,
            content=content,
            state_key=state_key,
            prev_event_ids=list(self.prev),
            auth_event_ids=[] if is_create else self._auth(type, sender, state_key, content),
            depth=self.depth,
            origin_server_ts=self.ts,
            server_name=server,
            signing_key=SIGNING_KEYS[server],
            redacts=redacts,
        )
        if is_create:
            self.room_id = event.room_id
        refused = rejection is not None or soft_failure is not None
        delta = {event.state_tuple: event.event_id} if event.is_state() and not refused else None
        self.entries.append(
            PersistEntry(
                event,
                rejection=rejection,
                soft_failed=soft_failure is not None,
                soft_failure=soft_failure,
                state_before=dict(self.state),
                update_current_state=delta,
            )
        )
        if not refused:
            if event.is_state():
                self.state[event.state_tuple] = event.event_id
            self.prev = [event.event_id]
        self.events[name] = event
        self.by_id[event.event_id] = event
        return event


#: The names of the scenario's events, in DAG order.
SCENARIO = (
    "create", "alice_join", "power", "join_rules", "history", "m1", "m2", "bob_invite", "m3",
    "bob_join", "m4", "m5", "dave_join", "m6", "dave_leave", "rejected", "soft_failed", "m7",
)


def build_scenario(rv: RoomVersion, visibility: Optional[str] = "shared") -> RoomBuilder:
    """The room every history test uses.

    alice (us.test) creates it and sets ``history_visibility`` (none if ``visibility`` is
    None); sends m1, m2; invites bob (peer.test); m3; bob joins; m4 (alice), m5 (bob);
    dave (gone.test) joins, m6, dave leaves; mallory (peer.test, never joined) sends a
    message that is rejected; bob sends one that soft-fails; alice sends m7.
    """
    r = RoomBuilder(rv)
    create_content: dict[str, Any] = {"room_version": rv.identifier}
    if not rv.updated_redaction_rules:
        create_content["creator"] = ALICE
    r.add("create", "m.room.create", ALICE, create_content, "")
    r.add("alice_join", "m.room.member", ALICE, {"membership": "join", "displayname": "Alice"}, ALICE)
    r.add("power", "m.room.power_levels", ALICE, {"users": {ALICE: 100}}, "")
    r.add("join_rules", "m.room.join_rules", ALICE, {"join_rule": "public"}, "")
    if visibility is not None:
        r.add("history", "m.room.history_visibility", ALICE, {"history_visibility": visibility}, "")
    r.add("m1", "m.room.message", ALICE, {"msgtype": "m.text", "body": "one"})
    r.add("m2", "m.room.message", ALICE, {"msgtype": "m.text", "body": "two"})
    r.add("bob_invite", "m.room.member", ALICE, {"membership": "invite", "displayname": "Bob"}, BOB)
    r.add("m3", "m.room.message", ALICE, {"msgtype": "m.text", "body": "three"})
    r.add("bob_join", "m.room.member", BOB, {"membership": "join", "displayname": "Bob"}, BOB)
    r.add("m4", "m.room.message", ALICE, {"msgtype": "m.text", "body": "four"})
    r.add("m5", "m.room.message", BOB, {"msgtype": "m.text", "body": "five"})
    r.add("dave_join", "m.room.member", DAVE, {"membership": "join", "displayname": "Dave"}, DAVE)
    r.add("m6", "m.room.message", ALICE, {"msgtype": "m.text", "body": "six"})
    r.add("dave_leave", "m.room.member", DAVE, {"membership": "leave"}, DAVE)
    r.add(
        "rejected", "m.room.message", MALLORY, {"msgtype": "m.text", "body": "spam"},
        # What the built-in rule 6 stores (tests/test_pipeline.py checks it is).
        rejection=Refusal("sender is not joined to the room", rule_id(rv, "sender_in_room"),
                          "fedserver.auth.rules.power"),
    )
    r.add(
        "soft_failed", "m.room.message", BOB, {"msgtype": "m.text", "body": "evading"},
        soft_failure=Refusal("failed the spam check", "policy", "example.spamcheck"),
    )
    r.add("m7", "m.room.message", ALICE, {"msgtype": "m.text", "body": "seven"})
    return r


async def persist_scenario(store: Any, rv: RoomVersion, visibility: Optional[str] = "shared") -> RoomBuilder:
    """Build the scenario room and store it in one batch."""
    room = build_scenario(rv, visibility)
    await store.persist_events(room.entries)
    return room


def make_keyring() -> FakeKeyring:
    """A keyring knowing every test server's key, valid for a long time."""
    valid_until = 2**62
    return FakeKeyring({name: {"ed25519:k1": (get_verify_key(key), valid_until)} for name, key in SIGNING_KEYS.items()})


class _TrackingSite(MatrixSite):
    """A MatrixSite that remembers its connections, so tests can close them."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.protocols: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        self.protocols.append(p)
        return p


class Response:
    """A response: status and parsed JSON body."""

    def __init__(self, code: int, body: Any, raw: bytes) -> None:
        self.code = code
        self.body = body
        self.raw = raw

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.raw[:200]!r}>"


class LoopbackServer:
    """A real listener on 127.0.0.1 serving ``mounts``, and a client for it.

    :param test: the TestCase (for cleanups).
    """

    def __init__(self, test: Any, mounts: dict[str, Any]) -> None:
        self.site = _TrackingSite(build_tree(mounts), reactor=reactor)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)
        test.addCleanup(self.stop)

    async def stop(self) -> None:
        await self.pool.closeCachedConnections()
        for p in self.site.protocols:
            transport = getattr(p, "transport", None)
            if transport is not None and transport.connected:
                transport.abortConnection()
        await self.port.stopListening()
        # Let aborted connections finish closing before trial checks the reactor.
        await task.deferLater(reactor, 0, lambda: None)

    async def request(
        self, method: str, uri: str, *, body: Any = None, raw_body: Optional[bytes] = None,
        headers: Optional[dict[bytes, list[bytes]]] = None,
    ) -> Response:
        data = raw_body if raw_body is not None else (None if body is None else json.dumps(body).encode())
        producer = None if data is None else FileBodyProducer(io.BytesIO(data))
        h = Headers(headers or {})
        if data is not None:
            h.setRawHeaders(b"Content-Type", [b"application/json"])
        response = await self.agent.request(method.encode(), (self.base + uri).encode("ascii"), h, producer)
        raw = await readBody(response)
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        return Response(response.code, parsed, raw)


class FederationHarness:
    """The history routes on a real FederationResource with X-Matrix authentication,
    over loopback HTTP.

    :param acl_check: passed to :func:`register_history_routes`.
    """

    def __init__(self, test: Any, store: Any, *, acl_check: Any = None) -> None:
        self.auth = XMatrixAuthenticator(make_keyring(), US, reactor)
        self.resource = FederationResource(self.auth)
        self.handler = HistoryHandler(store, US, reactor)
        register_history_routes(self.resource, self.handler, acl_check=acl_check)
        self.server = LoopbackServer(test, {BASE: self.resource})

    async def call(
        self, method: str, path: str, *, origin: Optional[str] = PEER, body: Any = None,
        raw_body: Optional[bytes] = None,
    ) -> Response:
        """Send a request signed by ``origin`` (unsigned if ``None``). ``path`` is below
        /_matrix/federation/v1 and sent exactly as given."""
        uri = BASE + path
        headers = {}
        if origin is not None:
            headers[b"Authorization"] = [
                sign_request(origin, SIGNING_KEYS[origin], US, method, uri, body).encode()
            ]
        return await self.server.request(method, uri, body=body, raw_body=raw_body, headers=headers)


def q(value: str) -> str:
    """Percent-encode a path segment or query value completely."""
    return quote(value, safe="")


def pdu_ids(room: RoomBuilder, pdus: list[dict]) -> list[str]:
    """The event ids of PDUs served for ``room``'s events (matched by content hash, which
    redaction keeps)."""
    by_hash = {e.pdu["hashes"]["sha256"]: e.event_id for e in room.by_id.values()}
    return [by_hash[p["hashes"]["sha256"]] for p in pdus]


def served_kinds(room: RoomBuilder, pdus: list[dict]) -> dict[str, str]:
    """``{event name: "full" | "redacted" | "altered"}`` for PDUs served for ``room``'s
    events: exactly the stored PDU, exactly its redacted copy, or something else. The
    scenario's events all lose something to redaction, so the two are told apart."""
    names = {e.event_id: n for n, e in room.events.items()}
    out = {}
    for event_id, pdu in zip(pdu_ids(room, pdus), pdus):
        event = room.by_id[event_id]
        if pdu == event.pdu:
            kind = "full"
        elif pdu == redact(event.pdu, event.room_version):
            kind = "redacted"
        else:
            kind = "altered"
        out[names[event_id]] = kind
    return out


__all__ = [
    "ALICE", "BASE", "BOB", "DAVE", "GONE", "MALLORY", "PEER", "SCENARIO", "STRANGER", "US",
    "FederationHarness", "LoopbackServer", "RoomBuilder", "build_scenario", "persist_scenario",
    "make_keyring", "pdu_ids", "q", "served_kinds",
]
