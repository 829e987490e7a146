"""Calling the ``fedserver_check_event_policy`` hook: local policy that may only soft-fail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import pluggy
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure

from fedserver.auth.verdict import SoftFail
from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """What the policy plugins said about one event.

    :ivar soft_failures: each :class:`SoftFail`, with the plugin name filled in.
    :ivar errors: ``(plugin name, description)`` for each implementation that raised,
        failed asynchronously or returned something other than ``None`` / ``SoftFail``.
        Errors do not soft-fail the event (a broken spam checker must not silence a
        room); the caller logs them.
    """

    soft_failures: tuple[SoftFail, ...] = ()
    errors: tuple[tuple[str, str], ...] = ()

    @property
    def soft_failed(self) -> bool:
        """Whether any policy soft-failed the event."""
        return bool(self.soft_failures)


def check_event_policy(
    pm: pluggy.PluginManager,
    event: Event,
    room_version: RoomVersion,
    state: Mapping[tuple[str, str], Event],
) -> Deferred[PolicyResult]:
    """Ask every ``fedserver_check_event_policy`` implementation about ``event``, all at
    once, and gather their verdicts.

    Call it only for events that passed the auth rules.  It does no I/O itself;
    implementations may (e.g. ask a policy server) by returning a Deferred.

    :param pm: the plugin manager.
    :param event: the event.
    :param room_version: its room version.
    :param state: the room's current state.
    :returns: Deferred firing with a :class:`PolicyResult` (it never errbacks).
    """
    impls = list(reversed(pm.hook.fedserver_check_event_policy.get_hookimpls()))
    args: dict[str, Any] = {"event": event, "room_version": room_version, "state": state}
    # Outcomes in plugin order; a Deferred stands in for a policy that answers later.
    outcomes: list[Any] = []
    pending = False
    for impl in impls:
        if impl.hookwrapper or impl.wrapper:
            continue
        try:
            outcome = impl.function(*[args[a] for a in impl.argnames])
        except Exception:
            outcome = Failure()
        if isinstance(outcome, Deferred):
            pending = True
            outcomes.append(outcome.addBoth(_tag, impl.plugin_name))
        else:
            outcomes.append((impl.plugin_name, outcome))

    def combine(results: list[tuple[str, Any]]) -> PolicyResult:
        soft, errors = [], []
        for plugin, outcome in results:
            if outcome is None:
                continue
            if isinstance(outcome, Failure):
                errors.append((plugin, f"{outcome.type.__name__}: {outcome.getErrorMessage()}"))
            elif type(outcome) is SoftFail:
                soft.append(SoftFail(outcome.reason, plugin))
            else:
                errors.append((plugin, f"returned {type(outcome).__name__}, not None or SoftFail"))
        return PolicyResult(tuple(soft), tuple(errors))

    if not pending:
        # Every policy answered at once (the usual case): no Deferred machinery per event.
        return succeed(combine(outcomes))
    calls = [o if isinstance(o, Deferred) else succeed(o) for o in outcomes]
    return gatherResults(calls).addCallback(combine)

def _tag(outcome: Any, plugin: str) -> tuple[str, Any]:
    # Failures are turned into values so that one failing policy does not hide the others.
    return (plugin, outcome)
