"""Token-bucket rate limiting keyed by (action, key), with an injected clock and bounded memory."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping

from fedserver.errors import limit_exceeded


@dataclass(frozen=True)
class Rule:
    """How fast one action may happen per key.

    :ivar per_second: tokens added back per second (the sustained rate).
    :ivar burst: the bucket's size: how many actions may happen at once after a pause.
    """

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (isinstance(self.per_second, (int, float)) and self.per_second > 0 and math.isfinite(self.per_second)):
            raise ValueError("per_second must be a positive number")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError("burst must be a positive integer")


#: Login attempts per client IP address.
LOGIN_IP = "login_ip"
#: Failed login attempts per user id (a correct password is refused too while the
#: bucket is empty, so guessing cannot go on from many addresses).
LOGIN_FAILED_USER = "login_failed_user"
#: Registration requests per client IP address.
REGISTER_IP = "register_ip"
#: Failed shared-secret (admin) registrations per client IP address.
ADMIN_REGISTER_FAILED_IP = "admin_register_failed_ip"

#: Defaults: generous enough for a person or a test suite on one address, tight enough to
#: make password guessing slow (5 failures, then one every 10 s per user).
DEFAULT_RULES: Mapping[str, Rule] = {
    LOGIN_IP: Rule(per_second=1.0, burst=20),
    LOGIN_FAILED_USER: Rule(per_second=0.1, burst=5),
    REGISTER_IP: Rule(per_second=0.5, burst=20),
    ADMIN_REGISTER_FAILED_IP: Rule(per_second=0.1, burst=5),
}


def rules_from_config(raw: Any) -> dict[str, Rule]:
    """Build the rule table from a config value ``{action: {per_second, burst}}``, on top
    of :data:`DEFAULT_RULES`.

    :raises ValueError: one line naming the bad action or value.
    """
    rules = dict(DEFAULT_RULES)
    if raw is None:
        return rules
    if not isinstance(raw, Mapping):
        raise ValueError("must map action names to {per_second, burst}")
    for action, spec in raw.items():
        if action not in DEFAULT_RULES:
            raise ValueError(f"unknown rate-limited action {action!r} (known: {', '.join(DEFAULT_RULES)})")
        if not isinstance(spec, Mapping) or not set(spec) <= {"per_second", "burst"}:
            raise ValueError(f"{action}: expected {{per_second, burst}}")
        base = DEFAULT_RULES[action]
        try:
            rules[action] = Rule(
                per_second=spec.get("per_second", base.per_second), burst=spec.get("burst", base.burst)
            )
        except ValueError as e:
            raise ValueError(f"{action}: {e}") from None
    return rules


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """Token buckets, one per ``(action, key)``.

    A bucket starts full (``burst`` tokens) and refills at ``per_second``. Each allowed
    action takes one token; with less than one token left the action is refused with
    429 ``M_LIMIT_EXCEEDED`` and ``retry_after_ms`` (spec "Rate limiting").

    Memory is bounded: at most ``max_keys`` buckets are kept, the least recently used
    dropped first. Dropping a bucket forgets its debt, so the bound should exceed the
    number of keys one client can rotate through within a refill period.

    :param clock: provides ``seconds()`` (a reactor or :class:`twisted.internet.task.Clock`).
    :param rules: ``{action: Rule}``; actions without a rule are never limited.
    :param max_keys: the most buckets kept in memory.
    """

    clock: Any
    rules: Mapping[str, Rule] = field(default_factory=lambda: dict(DEFAULT_RULES))
    max_keys: int = 100_000

    def __post_init__(self) -> None:
        self._buckets: OrderedDict[tuple[str, Hashable], _Bucket] = OrderedDict()

    def _refill(self, rule: Rule, bucket: _Bucket, now: float) -> None:
        if now > bucket.updated:
            bucket.tokens = min(float(rule.burst), bucket.tokens + (now - bucket.updated) * rule.per_second)
        bucket.updated = now

    def _bucket(self, action: str, key: Hashable, rule: Rule, now: float) -> _Bucket:
        k = (action, key)
        bucket = self._buckets.get(k)
        if bucket is None:
            bucket = _Bucket(float(rule.burst), now)
            self._buckets[k] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(k)
            self._refill(rule, bucket, now)
        return bucket

    def _retry_after_ms(self, rule: Rule, bucket: _Bucket) -> int:
        return max(1, math.ceil((1.0 - bucket.tokens) / rule.per_second * 1000))

    def check(self, action: str, key: Hashable, *, cost: float = 1.0) -> None:
        """Take ``cost`` tokens for ``action`` by ``key``.

        :raises MatrixError: 429 ``M_LIMIT_EXCEEDED`` with ``retry_after_ms`` if the
            bucket does not hold enough; nothing is taken then.
        """
        rule = self.rules.get(action)
        if rule is None:
            return
        now = self.clock.seconds()
        bucket = self._bucket(action, key, rule, now)
        if bucket.tokens < cost:
            raise limit_exceeded(self._retry_after_ms(rule, bucket))
        bucket.tokens -= cost

    def peek(self, action: str, key: Hashable) -> None:
        """Refuse like :meth:`check` if the bucket is empty, without taking a token (e.g.
        before a login, whose failure is then recorded with :meth:`record`).

        :raises MatrixError: 429 ``M_LIMIT_EXCEEDED`` with ``retry_after_ms``.
        """
        rule = self.rules.get(action)
        if rule is None:
            return
        k = (action, key)
        bucket = self._buckets.get(k)
        if bucket is None:
            return
        self._refill(rule, bucket, self.clock.seconds())
        if bucket.tokens < 1.0:
            raise limit_exceeded(self._retry_after_ms(rule, bucket))

    def record(self, action: str, key: Hashable) -> None:
        """Take one token whatever the bucket holds (it floors at zero): counts a
        failure after the fact, to be enforced by the next :meth:`peek`."""
        rule = self.rules.get(action)
        if rule is None:
            return
        bucket = self._bucket(action, key, rule, self.clock.seconds())
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def __len__(self) -> int:
        return len(self._buckets)


__all__ = [
    "ADMIN_REGISTER_FAILED_IP",
    "DEFAULT_RULES",
    "LOGIN_FAILED_USER",
    "LOGIN_IP",
    "REGISTER_IP",
    "RateLimiter",
    "Rule",
    "rules_from_config",
]
