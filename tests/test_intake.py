"""fedserver.handlers.federation.intake.OutlierIntake: batches of fetched events checked and
stored as a pipeline (reactor checks, signature checks, storing), in the order fed."""

from __future__ import annotations

import signedjson.key
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from fedserver.events.builder import build_event
from fedserver.handlers.federation.intake import BATCHES_IN_FLIGHT, IntakeError, OutlierIntake
from fedserver.handlers.rooms.pipeline import ACCEPTED, Outcome
from fedserver.room_versions import V10

SERVER = "resident.example"


def _room(n_members: int):
    """A v10 room's create event and ``n_members`` member events citing it (PDUs)."""
    key = signedjson.key.generate_signing_key("1")
    common = dict(server_name=SERVER, signing_key=key, origin_server_ts=1000)
    room_id = f"!room:{SERVER}"
    create = build_event(V10, room_id=room_id, type="m.room.create", sender=f"@owner:{SERVER}", state_key="",
                         content={"creator": f"@owner:{SERVER}", "room_version": "10"},
                         prev_event_ids=[], auth_event_ids=[], depth=1, **common)
    members = [
        build_event(V10, room_id=room_id, type="m.room.member", sender=f"@u{i}:{SERVER}", state_key=f"@u{i}:{SERVER}",
                    content={"membership": "join"}, prev_event_ids=[create.event_id],
                    auth_event_ids=[create.event_id], depth=2, **common)
        for i in range(n_members)
    ]
    return room_id, create, members


class _Keyring:
    """Every signature is good, but each batch's verdicts wait until released by the test."""

    def __init__(self):
        self.waiting: list[tuple[defer.Deferred, int]] = []

    def verify_signatures(self, requests):
        d = defer.Deferred()
        self.waiting.append((d, len(requests)))
        return d

    def release(self, index=0):
        d, n = self.waiting.pop(index)
        d.callback([True] * n)


class _Pipeline:
    """Records what is stored, in order; each store waits until released by the test."""

    def __init__(self, fail_on=None):
        self.stored: list[list[str]] = []
        self.waiting: list[defer.Deferred] = []
        self.fail_on = fail_on

    def process_outliers(self, room_id, events, verified_servers=None, history=False):
        ids = [e.event_id for e in events]
        self.stored.append(ids)
        d = defer.Deferred()
        if self.fail_on is not None and self.fail_on in ids:
            d.errback(RuntimeError("the database went away"))
            return d
        self.waiting.append(d)
        d.addCallback(lambda _: {i: Outcome(ACCEPTED, stored=True) for i in ids})
        return d

    def release_all(self):
        while self.waiting:
            self.waiting.pop(0).callback(None)


class OutlierIntakeTests(TestCase):
    def test_next_batch_is_checked_while_signatures_of_the_last_are_verified(self):
        """While a batch's signatures are being verified, the next batch is read and
        checked (the reader is not held back); batches are stored in the order fed, and
        ``finish`` knows every accepted state event."""
        self.assertEqual(BATCHES_IN_FLIGHT, 2)
        room_id, create, members = _room(6)
        keyring, pipeline = _Keyring(), _Pipeline()
        intake = OutlierIntake(keyring, pipeline, room_id, V10)
        first = intake.feed([create.pdu, members[0].pdu], state=True)
        self.successResultOf(first)  # room for another batch at once
        second = intake.feed([m.pdu for m in members[1:3]], state=True)
        self.assertNoResult(second)  # two batches waiting for their verdicts: reading pauses
        self.assertEqual(len(keyring.waiting), 2)  # the second batch is checked meanwhile
        keyring.release(1)  # the second batch's verdicts come first: it still waits its turn
        self.assertEqual(pipeline.stored, [])
        self.assertNoResult(second)
        keyring.release(0)
        self.assertEqual(pipeline.stored, [[create.event_id, members[0].event_id]])
        self.successResultOf(second)
        third = intake.feed([m.pdu for m in members[3:]], state=True)
        keyring.release(0)
        pipeline.release_all()
        self.successResultOf(third)
        done = defer.ensureDeferred(intake.finish())
        pipeline.release_all()
        self.successResultOf(done)
        self.assertEqual(
            pipeline.stored,
            [[create.event_id, members[0].event_id], [m.event_id for m in members[1:3]], [m.event_id for m in members[3:]]],
        )
        self.assertEqual(len(intake.state), 7)
        self.assertEqual(intake.received, 7)

    def test_a_failing_batch_fails_the_intake_once(self):
        """A batch that cannot be stored fails the ``feed`` waiting on it with its error,
        and every later ``feed`` and ``finish``; nothing is stored after it, and the
        batches fed after it are let go without errors left unhandled."""
        room_id, create, members = _room(4)
        keyring, pipeline = _Keyring(), _Pipeline(fail_on=members[0].event_id)
        intake = OutlierIntake(keyring, pipeline, room_id, V10)
        self.successResultOf(intake.feed([create.pdu, members[0].pdu], state=True))
        keyring.release(0)  # checked, handed to storage, which fails
        self.successResultOf(intake.feed([members[1].pdu], state=True))
        third = intake.feed([members[2].pdu], state=True)
        keyring.release(0)  # the second batch is taken: the failed store surfaces
        self.failureResultOf(third, RuntimeError)
        keyring.release(0)
        self.failureResultOf(intake.feed([members[3].pdu], state=True), RuntimeError)
        self.failureResultOf(defer.ensureDeferred(intake.finish()), RuntimeError)
        self.assertEqual(pipeline.stored, [[create.event_id, members[0].event_id]])
        self.assertEqual(keyring.waiting, [])  # the batch fed after the failure was never checked

    def test_a_wrong_create_event_stops_the_intake(self):
        """``check_create`` refusing the create event fails the intake; nothing is stored."""
        room_id, create, members = _room(1)

        def refuse(_create):
            raise IntakeError("not this room's create event")

        keyring, pipeline = _Keyring(), _Pipeline()
        intake = OutlierIntake(keyring, pipeline, room_id, V10, check_create=refuse)
        intake.feed([create.pdu], state=True)
        keyring.release(0)
        d = defer.ensureDeferred(intake.finish())
        self.failureResultOf(d, IntakeError)
        self.assertEqual(pipeline.stored, [])
