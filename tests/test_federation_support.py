"""Shared helpers for the federation tests: peers with real keys, signed PDUs and requests,
a keyring over a real SQLite store, and a StubTreq driver for resources."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from signedjson.key import generate_signing_key
from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.trial import unittest

from fedserver.events.builder import build_event
from fedserver.events.hashing import unpadded_base64
from fedserver.federation.keyring import Keyring, parse_key_document, sign_json_object
from fedserver.federation.xmatrix import sign_request
from fedserver.room_versions import RoomVersion
from fedserver.storage import open_store

#: Our server name in these tests.
US = "us.test:8448"
FED = "/_matrix/federation/v1"


def now_ms() -> int:
    return int(time.time() * 1000)


class Peer:
    """A remote server: a name and a real ed25519 signing key."""

    def __init__(self, name: str, key_version: str = "p1") -> None:
        self.name = name
        self.key = generate_signing_key(key_version)
        self.key_id = f"ed25519:{key_version}"

    def key_document(self, valid_for_ms: int = 86_400_000) -> dict[str, Any]:
        """The peer's self-signed ``/_matrix/key/v2/server`` document."""
        doc = {
            "server_name": self.name,
            "valid_until_ts": now_ms() + valid_for_ms,
            "verify_keys": {self.key_id: {"key": unpadded_base64(self.key.verify_key.encode())}},
            "old_verify_keys": {},
        }
        return sign_json_object(doc, self.name, self.key_id, self.key)

    def auth_header(self, method: str, uri: str, content: Any = None, destination: str = US) -> dict[bytes, list[bytes]]:
        """An ``Authorization: X-Matrix`` header for a request to ``destination``."""
        return {b"Authorization": [sign_request(self.name, self.key, destination, method, uri, content).encode()]}

    def pdu(self, rv: RoomVersion, room_id: str, body: str = "hi", *, depth: int = 5, **fields: Any) -> dict[str, Any]:
        """A message event of this peer's user ``@u:<name>``, hashed and signed."""
        args: dict[str, Any] = dict(
            room_id=room_id,
            type="m.room.message",
            sender=f"@u:{self.name}",
            content={"msgtype": "m.text", "body": body},
            prev_event_ids=[],
            auth_event_ids=[],
            depth=depth,
            origin_server_ts=now_ms(),
            server_name=self.name,
            signing_key=self.key,
        )
        args.update(fields)
        return build_event(rv, **args).pdu


class StaticKeyFetcher:
    """A key fetcher serving the peers' self-signed key documents (as a direct fetch
    would), counting how often it is asked."""

    def __init__(self, *peers: Peer) -> None:
        self.peers = {p.name: p for p in peers}
        self.calls = 0

    def get_keys(self, needs: Any) -> defer.Deferred:
        self.calls += 1
        docs = [parse_key_document(self.peers[s].key_document(), s) for s in needs if s in self.peers]
        return defer.succeed(docs)


class StoreTestCase(unittest.TestCase):
    """A trial case opening real SQLite stores under ``mktemp()`` (closed at cleanup)."""

    async def open_store(self, path: str | None = None):
        if path is None:
            directory = self.mktemp()
            os.makedirs(directory)
            path = os.path.join(directory, "fedserver.db")
        store = await open_store(path, reactor)
        self.addCleanup(store.close)
        return store

    def make_keyring(self, store: Any, *peers: Peer) -> tuple[Keyring, StaticKeyFetcher]:
        fetcher = StaticKeyFetcher(*peers)
        own = generate_signing_key("us")
        return Keyring(reactor, store, [fetcher], US, {"ed25519:us": own.verify_key}), fetcher


async def stub_request(
    treq: StubTreq, method: str, uri: str, body: Any = None, headers: dict | None = None
) -> tuple[int, Any, bytes]:
    """One request through ``treq`` (a :class:`StubTreq`) whose resource may wait on the
    real reactor (the database): flushes until the answer is complete.

    :returns: ``(status, parsed JSON or None, raw body)``.
    """
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    d = treq.request(method, "https://" + US + uri, headers=headers or {}, data=data)
    response = await _flushing(treq, d)
    raw = await _flushing(treq, response.content())
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    return response.code, parsed, raw


async def _flushing(treq: StubTreq, d: defer.Deferred) -> Any:
    done: list[Any] = []
    d.addBoth(lambda r: done.append(r) or r)
    for _ in range(10_000):
        treq.flush()
        if done:
            return await d
        await deferLater(0.001)
    raise AssertionError("request never finished")


def deferLater(seconds: float) -> defer.Deferred:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class PeerRoom:
    """A stored room (creator ``@alice:a.example``) that the peers' users ``@u:<peer>``
    have joined, so that their messages pass every receipt check.

    :ivar room_id: the room.
    :ivar state: its current state ``{(type, state_key): event_id}``.
    """

    def __init__(self, store: Any, rv: RoomVersion) -> None:
        self.store = store
        self.rv = rv
        self.room_id = ""
        self.state: dict = {}
        self.last = ""
        self.depth = 0

    async def build(self, *peers: Peer) -> "PeerRoom":
        from tests.test_storage_support import linear_entries, make_event, make_room

        self.room_id, events = make_room(self.rv)
        await self.store.persist_events(linear_entries(events, self.state))
        self.last, self.depth = events[-1].event_id, len(events)
        for peer in peers:
            user = f"@u:{peer.name}"
            await self.add(make_event(self.rv, self.room_id, "m.room.member", user, {"membership": "join"}, user,
                                      prev=[self.last], auth=self.auth_ids(("m.room.join_rules", "")),
                                      depth=self.depth + 1))
        return self

    def auth_ids(self, *extra) -> list[str]:
        keys = [("m.room.create", ""), ("m.room.power_levels", ""), *extra]
        return [self.state[k] for k in keys if k in self.state]

    async def add(self, event: Any) -> None:
        """Store ``event`` (built on the last one) as the room's new last event."""
        from tests.test_storage_support import linear_entries

        await self.store.persist_events(linear_entries([event], self.state))
        self.last, self.depth = event.event_id, event.depth

    async def add_state(self, type: str, content: dict, sender: str = "@alice:a.example") -> None:
        """A state event of the creator, stored after the last one."""
        from tests.test_storage_support import make_event

        await self.add(make_event(self.rv, self.room_id, type, sender, content, "", prev=[self.last],
                                  auth=self.auth_ids(("m.room.member", sender)), depth=self.depth + 1))

    def pdu(self, peer: Peer, body: str = "hi") -> dict[str, Any]:
        """A message of ``@u:<peer>`` after the last event, signed by the peer."""
        return peer.pdu(self.rv, self.room_id, body, prev_event_ids=[self.last], depth=self.depth + 1,
                        auth_event_ids=self.auth_ids(("m.room.member", f"@u:{peer.name}")))


def make_receiver(store: Any) -> Any:
    """A real :class:`~fedserver.handlers.federation.receive.EventReceiver` on ``store``
    (the room pipeline with the built-in auth rules; no gap filling, no failure reports)."""
    from fedserver.auth.engine import AuthEngine
    from fedserver.auth.plugins import make_plugin_manager
    from fedserver.handlers.federation.receive import EventReceiver
    from fedserver.handlers.rooms.pipeline import RoomPipeline

    pm = make_plugin_manager(load_entrypoints=False)
    return EventReceiver(RoomPipeline(store, AuthEngine(pm), pm), store)
