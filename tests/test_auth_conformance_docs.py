"""docs/auth-conformance.md and the divergence predicates of the Synapse conformance test
name the same divergences."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.auth_divergences import DIVERGENCES

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "auth-conformance.md")


class DivergenceDocsTests(SynchronousTestCase):
    def test_every_divergence_documented_and_nothing_else(self):
        """Each divergence the conformance test accepts has its own section (### id)
        under "Divergences from Synapse", and that part documents no other one."""
        with open(DOC, encoding="utf-8") as f:
            text = f.read()
        part = text.split("## Divergences from Synapse", 1)[1]
        documented = re.findall(r"^### (\S+)$", part, flags=re.M)
        self.assertEqual(sorted(documented), sorted(d.id for d in DIVERGENCES))
        self.assertEqual(len(documented), len(set(documented)))
