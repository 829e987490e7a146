"""Our auth verdicts against Synapse's on generated cases: the pieces the CI test
(``test_synapse_auth_conformance.py``) and the by-hand sweep
(``bench/auth_conformance_sweep.py``) share.

Synapse runs in a child process (``synapse_auth_driver.py`` under the Synapse venv's
Python); nothing here imports Synapse.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any, Iterable

from fedserver.auth.engine import AuthEngine
from fedserver.auth.plugins import make_plugin_manager
from fedserver.auth.rule_ids import _children, rule_id
from fedserver.room_versions import SPEC_ROOM_VERSIONS, RoomVersion
from tests.interop.auth_cases import generate, more_cases, our_verdict
from tests.interop.auth_divergences import agree, classify

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synapse_auth_driver.py")

# Rules whose outcome is an allow (their "otherwise reject" sibling is what a denial
# names): not expected among the denials.
_ALLOWING = {
    ("member", "join", "creator"), ("member", "join", "invite"), ("member", "join", "public"),
    ("member", "join", "restricted", "member"), ("member", "invite", "third_party", "signature"),
    ("member", "invite", "level"), ("member", "leave", "kick"), ("member", "ban", "level"),
    ("member", "knock", "membership"), ("power_levels", "no_previous"), ("redaction", "level"),
    ("redaction", "domain"),
}

#: Denials no generated case can reach, and why.
UNREACHABLE = {
    ("12", ("create", "room_id")): "a v12 create event with a room_id fails the event format "
                                    "check before the auth rules run",
}


def _leaves(rv: RoomVersion) -> Iterable[tuple[str, ...]]:
    for top in _children(rv, ()):
        if top in ("create", "auth_events", "aliases", "third_party_invite", "redaction",
                   "power_levels"):
            for name in _children(rv, (top,)):
                yield (top, name)
        elif top == "member":
            for name in _children(rv, ("member",)):
                if name not in ("join", "invite", "leave", "ban", "knock"):
                    yield ("member", name)
                    continue
                for sub in _children(rv, ("member", name)):
                    if (name, sub) in (("join", "restricted"), ("invite", "third_party")):
                        for leaf in _children(rv, ("member", name, sub)):
                            yield ("member", name, sub, leaf)
                    else:
                        yield ("member", name, sub)
        elif top != "allow":
            yield (top,)


def denial_rules() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every rule of every spec room version that rejects an event, as
    ``{"v12 5.3.3": ("12", ("member", "join", "banned"))}``, without :data:`UNREACHABLE`."""
    out = {}
    for rv in SPEC_ROOM_VERSIONS:
        for path in _leaves(rv):
            if path[-1] == "allow" or path in _ALLOWING:
                continue
            if (rv.identifier, path) in UNREACHABLE:
                continue
            out[rule_id(rv, *path)] = (rv.identifier, path)
    return out


def new_engine() -> AuthEngine:
    """An engine with the built-in rules only (no entry points)."""
    return AuthEngine(make_plugin_manager(load_entrypoints=False))


def _rule_of(verdict: tuple[str, str]) -> str | None:
    return verdict[1].split(":", 1)[0] if verdict[0] == "reject" else None


def covering_cases(seed: int, count: int, *, max_extra: int = 100_000) -> list[dict[str, Any]]:
    """``count`` generated cases, then more (at most ``max_extra``) until every rule of
    :func:`denial_rules` has rejected at least one case by our verdict.

    Random cases reach the rare rules (a third-party invite without ``signed`` in room
    v2...) only now and then; this keeps the comparison about every rule of every version
    without a huge count.
    """
    engine = new_engine()
    cases = generate(seed, count)
    wanted = denial_rules()
    for case in cases:
        wanted.pop(_rule_of(our_verdict(case, engine)) or "", None)
    if not wanted:
        return cases
    versions = sorted({v for v, _ in wanted.values()}, key=int)
    stream = more_cases(seed, count, [rv for rv in SPEC_ROOM_VERSIONS if rv.identifier in versions])
    for _ in range(max_extra):
        case = next(stream)
        rule = _rule_of(our_verdict(case, engine))
        if rule in wanted:
            del wanted[rule]
            cases.append(case)
            if not wanted:
                break
    return cases


def synapse_verdicts(python: str, cases: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Run the driver under ``python`` (the Synapse venv's) on ``cases``.

    :returns: ``(Synapse's version, verdicts in case order)``.
    :raises RuntimeError: if the driver fails.
    """
    proc = subprocess.run(
        [python, DRIVER], input=json.dumps({"cases": cases}).encode(), capture_output=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the Synapse driver failed: {proc.stderr.decode()[-3000:]}")
    out = json.loads(proc.stdout)
    verdicts = out["verdicts"]
    if [v["id"] for v in verdicts] != [c["id"] for c in cases]:
        raise RuntimeError("the Synapse driver answered for other cases")
    return out["synapse"], verdicts


@dataclass
class Report:
    """The comparison of our verdicts with Synapse's.

    :ivar total: cases compared.
    :ivar agreed: cases where both accept, or neither does.
    :ivar outcomes: ``(ours, Synapse's)`` verdict pairs and their counts.
    :ivar divergences: documented divergence id -> cases it explains.
    :ivar unexplained: ``(case, ours, Synapse's)`` for every disagreement no documented
        divergence explains, and every case whose event ids Synapse computes otherwise.
    :ivar rules_hit: our denial rules and how many cases each rejected.
    """

    total: int = 0
    agreed: int = 0
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    divergences: collections.Counter = field(default_factory=collections.Counter)
    unexplained: list[tuple[dict[str, Any], tuple[str, str], dict[str, Any]]] = field(default_factory=list)
    rules_hit: collections.Counter = field(default_factory=collections.Counter)
    versions: collections.Counter = field(default_factory=collections.Counter)

    @property
    def agreement(self) -> float:
        """Agreed cases over all cases, in percent."""
        return 100.0 * self.agreed / self.total if self.total else 0.0

    def summary(self) -> str:
        lines = [
            f"{self.total} cases, {self.agreed} agree ({self.agreement:.2f} %), "
            f"{sum(self.divergences.values())} documented divergences, "
            f"{len(self.unexplained)} unexplained",
            "verdicts (ours, Synapse's): " + ", ".join(
                f"{o}/{s} {n}" for (o, s), n in sorted(self.outcomes.items())),
        ]
        for d, n in sorted(self.divergences.items()):
            lines.append(f"  divergence {d}: {n}")
        for case, ours, theirs in self.unexplained[:20]:
            lines.append(f"  UNEXPLAINED {case['id']} ({case['mode']}): ours {ours}, "
                         f"Synapse {theirs['verdict']} {theirs['detail'][:160]}")
        return "\n".join(lines)


def compare(cases: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> Report:
    """Judge every case here and compare with Synapse's verdicts."""
    engine = new_engine()
    report = Report()

    def rejudge(case: dict[str, Any]) -> tuple[str, str]:
        # A fresh engine: the modified copies keep event ids whose content they change,
        # and the engine caches parsed power levels by event id.
        return our_verdict(case, new_engine())

    for case, synapse in zip(cases, theirs):
        ours = our_verdict(case, engine)
        report.total += 1
        report.versions[case["room_version"]] += 1
        report.outcomes[(ours[0], synapse["verdict"])] += 1
        rule = _rule_of(ours)
        if rule:
            report.rules_hit[rule] += 1
        if synapse["verdict"] == "badid":
            report.unexplained.append((case, ours, synapse))
        elif agree(ours, synapse):
            report.agreed += 1
        else:
            divergence = classify(case, ours, synapse, rejudge)
            if divergence is None:
                report.unexplained.append((case, ours, synapse))
            else:
                report.divergences[divergence] += 1
    return report
