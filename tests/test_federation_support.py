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
