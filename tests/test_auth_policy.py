"""fedserver_check_event_policy through fedserver.auth.policy: soft-fail only, Deferreds
allowed, failures reported without soft-failing."""

from __future__ import annotations

import types

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from fedserver.auth import SoftFail, hookimpl
from fedserver.auth.plugins import make_plugin_manager
from fedserver.auth.policy import PolicyResult, check_event_policy
from fedserver.room_versions import V12
from tests.test_auth_fixtures import ALICE, Room


def pm_with(**named_hooks):
    """A plugin manager with one plugin per keyword (name -> hook function)."""
    extra = [(types.SimpleNamespace(fedserver_check_event_policy=f), name)
             for name, f in named_hooks.items()]
    return make_plugin_manager(load_entrypoints=False, extra_plugins=extra)


class PolicyTests(SynchronousTestCase):
    """Calling the policy hook."""

    def setUp(self):
        self.room = Room(V12).standard()
        self.event = self.room.message(ALICE, "buy now")

    def _policy(self, pm):
        d = check_event_policy(pm, self.event, V12, self.room.state)
        return d

    def test_no_policy(self):
        """With no policy plugin the event is not soft-failed."""
        result = self.successResultOf(self._policy(make_plugin_manager(load_entrypoints=False)))
        self.assertEqual(result, PolicyResult())
        self.assertFalse(result.soft_failed)

    def test_soft_fail_attributed(self):
        """A SoftFail is collected with the plugin's registered name (not the one it
        claims); abstaining plugins add nothing."""

        @hookimpl
        def spam(event, state):
            if event.content.get("body") == "buy now":
                return SoftFail("spam", plugin="someone-else")

        @hookimpl
        def quiet(event):
            return None

        result = self.successResultOf(self._policy(pm_with(spam=spam, quiet=quiet)))
        self.assertTrue(result.soft_failed)
        self.assertEqual(result.soft_failures, (SoftFail("spam", "spam"),))
        self.assertEqual(result.errors, ())

    def test_deferred_verdict(self):
        """A policy may answer later through a Deferred (e.g. a policy server); the
        result waits for it."""
        pending: Deferred = Deferred()

        @hookimpl
        def remote(event, room_version):
            return pending

        d = self._policy(pm_with(remote=remote))
        self.assertNoResult(d)
        pending.callback(SoftFail("policy server says no"))
        self.assertEqual(self.successResultOf(d).soft_failures,
                         (SoftFail("policy server says no", "remote"),))

    def test_failures_reported_not_soft_failed(self):
        """A policy that raises, fails asynchronously or returns something else is
        reported in ``errors`` and does not soft-fail the event; other policies still
        count."""

        @hookimpl
        def raising(event):
            raise RuntimeError("crashed")

        @hookimpl
        def failing(event):
            return fail(ConnectionError("unreachable"))

        @hookimpl
        def wrong(event):
            return True

        @hookimpl
        def spam(event):
            return SoftFail("spam")

        result = self.successResultOf(self._policy(pm_with(raising=raising, failing=failing,
                                                        wrong=wrong, spam=spam)))
        self.assertEqual(result.soft_failures, (SoftFail("spam", "spam"),))
        self.assertEqual(sorted(p for p, _ in result.errors), ["failing", "raising", "wrong"])
        self.assertIn("RuntimeError: crashed", dict(result.errors)["raising"])
