"""Tests for /sync sections: the token's section positions, what a section adds, and long-polls."""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from fedserver.errors import MatrixError
from fedserver.handlers.client.sync_sections import SyncContext, SyncToken
from tests.test_rooms_support import RoomsTestCase


class TokenTests(TestCase):
    def test_round_trip(self) -> None:
        """A token with section positions renders and parses back to the same positions."""
        token = SyncToken(12, 3, {"r": 88, "d": 4})
        self.assertEqual(token.render(), "s12_3_d4_r88")
        self.assertEqual(SyncToken.parse(token.render()), token)

    def test_old_tokens(self) -> None:
        """Tokens from before sections existed (``s12_3``, ``s12``) still parse, with no
        section positions."""
        self.assertEqual(SyncToken.parse("s12_3"), SyncToken(12, 3, {}))
        self.assertEqual(SyncToken.parse("s12"), SyncToken(12, 0, {}))

    def test_malformed(self) -> None:
        """Malformed tokens are refused: wrong prefix, repeated or bad section parts,
        non-ASCII digits, absurd length."""
        for bad in ("", "t1_2", "s", "sx_1", "s1_2_r1_r2", "s1_2_R1", "s1_2_r", "s1_2_1", "s١_2",
                    "s1_2_abcd1", "s" + "1" * 19, "s1_" + "_".join(f"a{i}" for i in range(200)), None, 12):
            self.assertIsNone(SyncToken.parse(bad), bad)


class _Counter:
    """A section whose stream is a counter; it adds one to-device-like event per step and
    an ephemeral event to every joined room."""

    def __init__(self, key: str = "x") -> None:
        self.key = key
        self.position = 0
        self.calls: list[tuple[Optional[int], int]] = []

    def current_position(self, user_id: str) -> int:
        return self.position

    async def contribute(self, ctx: SyncContext, since: Optional[int], now: int) -> bool:
        self.calls.append((since, now))
        start = 0 if since is None else since
        if now <= start:
            return False
        ctx.result["to_device"]["events"].extend({"type": "t", "content": {"n": n}} for n in range(start + 1, now + 1))
        for room_id in ctx.joined:
            ctx.joined_room(room_id)["ephemeral"]["events"].append({"type": "x.eph", "content": {"at": now}})
        return True


class SectionTests(RoomsTestCase):
    async def test_section_positions_in_the_token(self) -> None:
        """A registered section gets None on the initial sync, then the position it was
        given in the previous answer; an ephemeral addition creates the room's entry even
        when the room has no new events."""
        section = _Counter()
        self.sync_handler.register_section(section)
        alice = await self.user("alice")
        room_id = await self.create(alice)
        section.position = 2
        first = await self.sync(alice)
        self.assertEqual(section.calls[-1], (None, 2))
        self.assertEqual([e["content"]["n"] for e in first["to_device"]["events"]], [1, 2])
        self.assertEqual(SyncToken.parse(first["next_batch"]).sections, {"x": 2})
        section.position = 3
        second = await self.sync(alice, since=first["next_batch"])
        self.assertEqual(section.calls[-1], (2, 3))
        self.assertEqual([e["content"]["n"] for e in second["to_device"]["events"]], [3])
        self.assertEqual(second["rooms"]["join"][room_id]["timeline"]["events"], [])
        self.assertEqual(second["rooms"]["join"][room_id]["ephemeral"]["events"], [{"type": "x.eph", "content": {"at": 3}}])

    async def test_token_from_the_future_is_clamped(self) -> None:
        """A section position beyond the section's current one (another database, a
        restart that lost an in-memory stream) is treated as the current position."""
        section = _Counter()
        self.sync_handler.register_section(section)
        alice = await self.user("alice")
        await self.create(alice)
        section.position = 1
        first = await self.sync(alice)
        token = SyncToken.parse(first["next_batch"])
        future = SyncToken(token.events, token.account_data, {"x": 50}).render()
        await self.sync(alice, since=future)
        self.assertEqual(section.calls[-1], (1, 1))

    async def test_long_poll_woken_by_section(self) -> None:
        """A long-poll with nothing new answers as soon as a section has something (the
        section's area notifies the user) and not before."""
        section = _Counter()
        self.sync_handler.register_section(section)
        alice = await self.user("alice")
        await self.create(alice)
        first = await self.sync(alice)
        d = defer.ensureDeferred(self.sync(alice, since=first["next_batch"], timeout_ms=30_000))
        await self.until_waiting(1)
        self.clock.advance(1)
        self.assertFalse(d.called)
        section.position = 1
        self.notifier.notify_user(alice.user_id)
        result = await d
        self.assertEqual([e["content"]["n"] for e in result["to_device"]["events"]], [1])

    async def test_keys_are_checked(self) -> None:
        """Section keys must be one to three lowercase letters and unique."""
        self.sync_handler.register_section(_Counter("x"))
        with self.assertRaises(ValueError):
            self.sync_handler.register_section(_Counter("x"))
        for bad in ("", "X", "abcd", "a1", "s_"):
            with self.assertRaises(ValueError):
                self.sync_handler.register_section(_Counter(bad))

    async def test_malformed_since_is_refused(self) -> None:
        """A malformed since token answers 400 M_INVALID_PARAM."""
        alice = await self.user("alice")
        with self.assertRaises(MatrixError) as cm:
            await self.sync(alice, since="s1_2_r1_r2")
        self.assertEqual((cm.exception.code, cm.exception.errcode), (400, "M_INVALID_PARAM"))
