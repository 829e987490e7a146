"""Shared helpers for the room tests: a real store, pipeline, auth engine and the room handlers."""

from __future__ import annotations

from typing import Any, Optional

from signedjson.key import generate_signing_key
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from fedserver.auth.engine import AuthEngine
from fedserver.auth.plugins import make_plugin_manager
from fedserver.handlers.client.accounts import Requester
from fedserver.handlers.rooms.client_events import ClientEventSource
from fedserver.handlers.rooms.creator import EventCreator
from fedserver.handlers.rooms.directory import DirectoryHandler
from fedserver.handlers.rooms.membership import MembershipHandler, RoomEvents
from fedserver.handlers.client.notifier import Notifier
from fedserver.handlers.rooms.pipeline import RoomPipeline
from fedserver.handlers.rooms.rooms import RoomsHandler
from fedserver.handlers.rooms.timeline import TimelineHandler
from fedserver.handlers.client.sync import SyncHandler
from fedserver.errors import MatrixError
from fedserver.storage.sqlite import open_store

HERE = "here.test"


def uid(localpart: str) -> str:
    return f"@{localpart}:{HERE}"


class RoomsTestCase(unittest.TestCase):
    """Base class: every room handler wired on a real SQLite store under ``self.mktemp()``
    and the real auth engine and pipeline, as the server wires them. ``self.clock`` (a
    :class:`Clock`) gives event timestamps and drives /sync timeouts; the database runs on
    trial's reactor."""

    remote: Any = None

    def setUp(self) -> defer.Deferred:
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.store = await open_store(self.mktemp(), reactor)
        self.addCleanup(self.store.close)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        pm = make_plugin_manager(load_entrypoints=False)
        self.pipeline = RoomPipeline(self.store, AuthEngine(pm), pm)
        key = generate_signing_key("1")
        self.creator = EventCreator(self.clock, self.store, self.pipeline, HERE, key)
        self.notifier = Notifier(self.clock)
        self.pipeline.on_persisted.append(self.notifier.on_persisted)
        self.events = RoomEvents(self.store, self.creator, self.pipeline, HERE, key)
        self.directory = DirectoryHandler(self.store, HERE)
        self.source = ClientEventSource(self.store, self.clock)
        self.membership = MembershipHandler(self.events, self.directory, remote=self.remote, notifier=self.notifier)
        self.rooms = RoomsHandler(self.events, self.membership, self.directory, self.source)
        self.pipeline.on_persisted.append(self.rooms.on_persisted)
        self.timeline = TimelineHandler(self.events, self.source, self.rooms)
        self.sync_handler = SyncHandler(self.store, self.notifier, self.source, self.clock)
        self._token_ids = 0

    async def user(self, localpart: str, *, device_id: str = "DEV", admin: bool = False, displayname: Optional[str] = None) -> Requester:
        """Create a local user (and device) and return a requester for it."""
        user_id = uid(localpart)
        if await self.store.accounts.get_user(user_id) is None:
            await self.store.accounts.create_user(user_id, None, admin=admin, displayname=displayname)
        self._token_ids += 1
        return Requester(user_id, device_id, self._token_ids)

    async def create(self, requester: Requester, **body: Any) -> str:
        """``createRoom`` with ``body``; returns the room id."""
        result = await self.rooms.create_room(requester, body)
        return result["room_id"]

    async def send_text(self, requester: Requester, room_id: str, body: str, txn_id: Optional[str] = None) -> str:
        self._token_ids += 1
        return await self.rooms.send_event(
            requester, room_id, "m.room.message", {"msgtype": "m.text", "body": body}, txn_id or f"txn{self._token_ids}"
        )

    async def assertMatrixError(self, coro, code: int, errcode: str) -> MatrixError:
        """Await ``coro`` and assert it fails with that Matrix error."""
        try:
            await coro
        except MatrixError as e:
            self.assertEqual((e.code, e.errcode), (code, errcode), e.error)
            return e
        self.fail(f"expected {code} {errcode}")

    async def state_ids(self, room_id: str) -> dict:
        return await self.store.get_current_state_ids(room_id)

    async def state_content(self, room_id: str, event_type: str, state_key: str = "") -> Optional[dict]:
        found = await self.store.get_current_state_events(room_id, [(event_type, state_key)])
        ev = found.get((event_type, state_key))
        return None if ev is None else ev.content

    async def sync(self, requester: Requester, **kw: Any) -> dict:
        return await self.sync_handler.sync(requester, **kw)

    async def until_waiting(self, count: int = 1) -> None:
        """Let long-polls reach their wait (their database reads run on the real reactor's
        threads) until ``count`` are waiting, or fail."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        for _ in range(200):
            if self.notifier.waiting >= count:
                return
            await deferLater(reactor, 0.001, lambda: None)
        self.fail(f"{self.notifier.waiting} long-polls waiting, expected {count}")

    async def remote_member_event(self, target: str, membership: str, depth: int, room_id: str = "!remote:far.test"):
        """An outlier membership event of a room on another server (sent by
        ``@bob:far.test``, or by ``target`` for a leave), stored as the federation
        handshakes store it."""
        from fedserver import room_versions
        from fedserver.events.builder import build_event
        from fedserver.storage.interface import PersistEntry

        sender = target if membership == "leave" else "@bob:far.test"
        event = build_event(
            room_versions.V10, room_id=room_id, type="m.room.member", sender=sender,
            content={"membership": membership}, state_key=target, prev_event_ids=["$p" + "A" * 42],
            auth_event_ids=[], depth=depth, origin_server_ts=1_700_000_000_000 + depth,
            server_name=sender.partition(":")[2], signing_key=generate_signing_key("1"),
        )
        await self.store.persist_events([PersistEntry(event=event, outlier=True)])
        return event

