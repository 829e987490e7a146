"""Our authorization verdicts against Synapse's own, on thousands of generated cases.

Synapse's ``event_auth`` runs in a child process under the Synapse venv's Python
(``synapse_auth_driver.py``); the cases come from ``auth_cases.py`` with a fixed seed, every
room version 1-12, plus more cases until every rule that rejects has rejected one of
them.  Agreement must be complete except for the documented divergences
(``docs/auth-conformance.md``, predicates in ``auth_divergences.py``).  Skipped without
``FEDSERVER_SYNAPSE_PYTHON`` unless ``FEDSERVER_INTEROP=require``, where it fails.

A bigger randomized sweep, by hand: ``bench/auth_conformance_sweep.py``.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.auth_cases import divergence_cases, our_verdict
from tests.interop.auth_conformance import (
    Report, compare, covering_cases, denial_rules, new_engine, synapse_verdicts,
)
from tests.interop.auth_divergences import DIVERGENCES, agree, classify
from tests.interop.peers import PeerUnavailable, synapse_python, unavailable

#: The CI sample: fixed, so a failure can be reproduced with the sweep script.
SEED = 12
COUNT = 6000

_result: dict[str, Any] = {}


def _run() -> dict[str, Any]:
    """Judge the sample and the divergence cases once for the whole module (one Synapse
    process for all of them)."""
    if not _result:
        try:
            python = synapse_python()
        except PeerUnavailable as e:
            raise unavailable(e) from None
        cases = covering_cases(SEED, COUNT)
        divergent = divergence_cases()
        version, verdicts = synapse_verdicts(python, cases + [c for _, c in divergent])
        _result["version"] = version
        _result["cases"] = cases
        _result["report"] = compare(cases, verdicts[:len(cases)])
        _result["divergent"] = list(zip(divergent, verdicts[len(cases):]))
    return _result


class AuthConformanceTests(SynchronousTestCase):
    """Synapse's verdicts are the oracle; the spec decides where they differ."""

    def test_agreement(self):
        """On every generated case we accept exactly when Synapse does, except where a
        documented divergence explains the difference; Synapse computes the same event
        ids as we do for every event of every case."""
        report: Report = _run()["report"]
        print(f"\nSynapse {_run()['version']}: {report.summary()}")
        self.assertGreaterEqual(report.total, COUNT)
        self.assertEqual(report.unexplained, [], report.summary())
        self.assertEqual(report.agreed + sum(report.divergences.values()), report.total)

    def test_every_version_and_outcome_is_exercised(self):
        """Each room version 1-12 gets hundreds of cases, some allowed and some rejected
        by both servers, in both modes (against cited auth events and against a state)."""
        cases = _run()["cases"]
        report: Report = _run()["report"]
        self.assertEqual(sorted(report.versions, key=int), [str(i) for i in range(1, 13)])
        for version, n in report.versions.items():
            self.assertGreater(n, 400, version)
        self.assertGreater(report.outcomes[("allow", "allow")], 1000)
        self.assertGreater(report.outcomes[("reject", "reject")], 2000)
        self.assertEqual({c["mode"] for c in cases}, {"receipt", "state"})

    def test_every_rule_rejects_some_case(self):
        """Every rule of every room version that can reject an event (rule 1.2 of v12
        excepted: the format check comes first) rejected at least one compared case."""
        report: Report = _run()["report"]
        missing = sorted(set(denial_rules()) - set(report.rules_hit))
        self.assertEqual(missing, [])

    def test_documented_divergences_still_diverge(self):
        """For each documented divergence, its hand-made case is still decided otherwise
        by Synapse than by us, and the divergence's predicate recognises it: the
        document describes Synapse as it is."""
        seen = set()
        for (divergence, case), synapse in _run()["divergent"]:
            ours = our_verdict(case, new_engine())
            self.assertFalse(agree(ours, synapse), (divergence, ours, synapse))
            found = classify(case, ours, synapse, lambda c: our_verdict(c, new_engine()))
            self.assertEqual(found, divergence, (ours, synapse))
            seen.add(divergence)
        self.assertEqual(seen, {d.id for d in DIVERGENCES})
