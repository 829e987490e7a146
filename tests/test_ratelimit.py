"""Tests for fedserver.ratelimit: token buckets on a Clock, errors, bounded memory, config."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fedserver.errors import MatrixError
from fedserver.ratelimit import DEFAULT_RULES, LOGIN_IP, RateLimiter, Rule, rules_from_config


class BucketTests(SynchronousTestCase):
    """One action with burst 3 and one token per 2 seconds."""

    def setUp(self):
        self.clock = Clock()
        self.limiter = RateLimiter(self.clock, {"act": Rule(per_second=0.5, burst=3)})

    def refused(self, key="k") -> MatrixError:
        with self.assertRaises(MatrixError) as cm:
            self.limiter.check("act", key)
        return cm.exception

    def test_burst_then_limit(self):
        """The burst passes, the next is 429 M_LIMIT_EXCEEDED with retry_after_ms."""
        for _ in range(3):
            self.limiter.check("act", "k")
        err = self.refused()
        self.assertEqual((err.code, err.errcode), (429, "M_LIMIT_EXCEEDED"))
        self.assertEqual(err.to_json()["retry_after_ms"], 2000)

    def test_refill(self):
        """Tokens come back at the rate: retry_after_ms shrinks, then one action passes, and
        a long pause refills only up to the burst."""
        for _ in range(3):
            self.limiter.check("act", "k")
        self.clock.advance(1.5)
        self.assertEqual(self.refused().to_json()["retry_after_ms"], 500)
        self.clock.advance(0.5)
        self.limiter.check("act", "k")
        self.refused()
        self.clock.advance(1000)
        for _ in range(3):
            self.limiter.check("act", "k")
        self.refused()

    def test_refusal_takes_nothing(self):
        """Refused attempts do not push the wait further out."""
        for _ in range(3):
            self.limiter.check("act", "k")
        for _ in range(10):
            self.refused()
        self.clock.advance(2)
        self.limiter.check("act", "k")

    def test_keys_and_actions_independent(self):
        """Another key, or an action without a rule, is not affected."""
        for _ in range(3):
            self.limiter.check("act", "k")
        self.refused("k")
        self.limiter.check("act", "other")
        for _ in range(100):
            self.limiter.check("unlimited", "k")

    def test_peek_and_record(self):
        """peek refuses only an empty bucket and takes nothing; record takes a token even
        from an empty bucket without going below zero."""
        for _ in range(5):
            self.limiter.peek("act", "k")
        for _ in range(10):
            self.limiter.record("act", "k")
        with self.assertRaises(MatrixError):
            self.limiter.peek("act", "k")
        self.clock.advance(2)
        self.limiter.peek("act", "k")

    def test_bounded_memory(self):
        """No more than max_keys buckets are kept; the least recently used go first."""
        limiter = RateLimiter(self.clock, {"act": Rule(0.5, 1)}, max_keys=100)
        for i in range(1000):
            limiter.check("act", i)
        self.assertEqual(len(limiter), 100)
        limiter.check("act", 0)  # forgotten, so full again
        with self.assertRaises(MatrixError):
            limiter.check("act", 999)


class ConfigTests(SynchronousTestCase):
    """Rule validation and rules_from_config."""

    def test_rule_validation(self):
        """Non-positive or non-finite rates and bursts below 1 are refused."""
        for per_second, burst in ((0, 1), (-1, 1), (float("inf"), 1), (1, 0), (1, 1.5), (1, True)):
            self.assertRaises(ValueError, Rule, per_second, burst)

    def test_overrides(self):
        """Given values override the defaults; the rest keep theirs."""
        rules = rules_from_config({LOGIN_IP: {"burst": 50}})
        self.assertEqual(rules[LOGIN_IP], Rule(DEFAULT_RULES[LOGIN_IP].per_second, 50))
        self.assertEqual(set(rules), set(DEFAULT_RULES))
        self.assertEqual(rules_from_config(None), dict(DEFAULT_RULES))

    def test_bad_config(self):
        """Unknown actions, unknown fields and bad values are one-line ValueErrors."""
        for raw in ([], {"nope": {}}, {LOGIN_IP: {"rate": 1}}, {LOGIN_IP: {"burst": 0}}, {LOGIN_IP: 5}):
            with self.assertRaises(ValueError) as cm:
                rules_from_config(raw)
            self.assertNotIn("\n", str(cm.exception))
