"""Tests for fedserver.events.status: the one enum of event outcomes."""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase

from fedserver.events.status import REFUSAL_KINDS, OutcomeStatus
from fedserver.handlers.rooms import pipeline


class OutcomeStatusTests(TestCase):
    def test_values_are_the_wire_strings(self) -> None:
        """Each member equals, formats and serialises as the string used before the enum
        (logs, admin API JSON, metrics labels and the database see no change)."""
        expected = {"ACCEPTED": "accepted", "REJECTED": "rejected", "SOFT_FAILED": "soft_failed", "MISSING": "missing"}
        self.assertEqual({m.name: m.value for m in OutcomeStatus}, expected)
        for member in OutcomeStatus:
            self.assertEqual(member, member.value)
            self.assertEqual(str(member), member.value)
            self.assertEqual(f"{member}", member.value)
            self.assertEqual(json.dumps({"s": member}), json.dumps({"s": member.value}))
        self.assertEqual(OutcomeStatus("soft_failed"), OutcomeStatus.SOFT_FAILED)
        with self.assertRaises(ValueError):
            OutcomeStatus("outlier")

    def test_refusal_kinds(self) -> None:
        """Only rejected and soft-failed events are stored with a refusal, in that order."""
        self.assertEqual(REFUSAL_KINDS, (OutcomeStatus.REJECTED, OutcomeStatus.SOFT_FAILED))
        self.assertIn("rejected", REFUSAL_KINDS)
        self.assertNotIn("accepted", REFUSAL_KINDS)

    def test_pipeline_outcomes_use_the_enum(self) -> None:
        """The pipeline's status names are the enum's members, so an Outcome's status is
        an OutcomeStatus and ``accepted`` follows it."""
        self.assertIs(pipeline.ACCEPTED, OutcomeStatus.ACCEPTED)
        self.assertIs(pipeline.MISSING, OutcomeStatus.MISSING)
        self.assertTrue(pipeline.Outcome(OutcomeStatus.ACCEPTED).accepted)
        self.assertFalse(pipeline.Outcome(OutcomeStatus.SOFT_FAILED).accepted)
