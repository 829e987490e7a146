"""The operator's options for the policy server plugin, read from ``plugin_config``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

#: What to do with an event needing a policy server signature when no answer can be had.
UNREACHABLE_MODES = ("open", "closed")


@dataclass(frozen=True)
class PolicyServerOptions:
    """How the plugin behaves (every option has a default).

    :ivar when_unreachable: ``open`` (default): an event whose signature cannot be had
        because the policy server cannot be reached (network error, timeout, 5xx, 429,
        ``M_UNRECOGNIZED``) is let through; ``closed``: it is soft-failed.  A policy
        server that answers and refuses always soft-fails the event.
    :ivar timeout: seconds to wait for ``/_matrix/policy/v1/sign``.
    :ivar room_cache_seconds: how long a room's policy server (its ``m.room.policy``
        event and whether the server has a joined member) is trusted from the cache
        before storage is read again; the plugin also updates it from the events it sees.
    :ivar verdict_cache_size: how many events' answers are remembered, so one event is
        never sent to the policy server twice (e.g. when sending and then checking our own
        event).
    """

    when_unreachable: str = "open"
    timeout: float = 10.0
    room_cache_seconds: float = 30.0
    verdict_cache_size: int = 10_000

    @property
    def fail_closed(self) -> bool:
        return self.when_unreachable == "closed"

    @classmethod
    def from_mapping(cls, raw: Any) -> "PolicyServerOptions":
        """Options from the plugin's ``plugin_config`` section.

        :raises ValueError: naming the first unknown or invalid option.
        """
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError("the policy_server options must be a mapping")
        unknown = sorted(set(raw) - {"when_unreachable", "timeout", "room_cache_seconds", "verdict_cache_size"})
        if unknown:
            raise ValueError(f"unknown policy_server option {unknown[0]!r}")
        mode = raw.get("when_unreachable", cls.when_unreachable)
        if mode not in UNREACHABLE_MODES:
            raise ValueError(f"policy_server option 'when_unreachable' must be 'open' or 'closed', not {mode!r}")
        numbers = {}
        for name, low, high in (("timeout", 0.1, 300), ("room_cache_seconds", 0, 86400)):
            value = raw.get(name, getattr(cls, name))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"policy_server option {name!r} must be a number from {low} to {high}")
            numbers[name] = float(value)
        size = raw.get("verdict_cache_size", cls.verdict_cache_size)
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 10_000_000:
            raise ValueError("policy_server option 'verdict_cache_size' must be an integer from 1 to 10000000")
        return cls(when_unreachable=mode, verdict_cache_size=size, **numbers)
