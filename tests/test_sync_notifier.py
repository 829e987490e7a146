"""Tests for the Notifier: positions, waking by room and user, timeouts, cancellation and bounds."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from fedserver.handlers.client.notifier import Notifier


class _Ev:
    def __init__(self, type, state_key=None):
        self.type = type
        self.state_key = state_key


class NotifierTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.notifier = Notifier(self.clock, max_timeout_ms=60_000, max_waiters=2)

    def test_room_event_wakes_room_waiter(self):
        """A waiter on a room fires True when an event of that room is persisted, not
        for another room; it is then removed."""
        pos = self.notifier.position()
        d = self.notifier.wait("@u:x", ["!a:x"], pos, 30_000)
        self.notifier.on_persisted("!b:x", [(_Ev("m.room.message"), None)])
        self.assertFalse(d.called)
        self.notifier.on_persisted("!a:x", [(_Ev("m.room.message"), None)])
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(self.notifier.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_member_event_wakes_target_user(self):
        """A member event wakes its target user even if they wait on no room."""
        d = self.notifier.wait("@bob:x", [], self.notifier.position(), 30_000)
        self.notifier.on_persisted("!a:x", [(_Ev("m.room.member", "@bob:x"), None)])
        self.assertTrue(self.successResultOf(d))

    def test_notification_before_wait_is_not_missed(self):
        """A notification after the position read but before wait() makes wait() return
        at once."""
        pos = self.notifier.position()
        self.notifier.notify_room("!a:x")
        d = self.notifier.wait("@u:x", ["!a:x"], pos, 30_000)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(self.notifier.waiting, 0)

    def test_timeout_clamped_and_fires_false(self):
        """The timeout fires False and is clamped to max_timeout_ms; 0 answers at once."""
        d = self.notifier.wait("@u:x", ["!a:x"], self.notifier.position(), 10**9)
        self.clock.advance(59.9)
        self.assertFalse(d.called)
        self.clock.advance(0.2)
        self.assertFalse(self.successResultOf(d))
        self.assertEqual(self.notifier.waiting, 0)
        self.assertFalse(self.successResultOf(self.notifier.wait("@u:x", [], self.notifier.position(), 0)))

    def test_cancel_removes_waiter(self):
        """Cancelling a wait (the client went away) removes it and its timer."""
        d = self.notifier.wait("@u:x", ["!a:x"], self.notifier.position(), 30_000)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.notifier.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.notifier.notify_room("!a:x")  # nothing left to wake

    def test_bounded_waiters(self):
        """Beyond max_waiters a wait answers False at once instead of holding memory."""
        self.notifier.wait("@a:x", [], self.notifier.position(), 30_000)
        self.notifier.wait("@b:x", [], self.notifier.position(), 30_000)
        third = self.notifier.wait("@c:x", [], self.notifier.position(), 30_000)
        self.assertFalse(self.successResultOf(third))
        self.assertEqual(self.notifier.waiting, 2)
