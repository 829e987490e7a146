"""Tests for the failures mechanism (seed 000): reports sent, received, stored and listed."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial import unittest

from fedserver.handlers.federation.failures import (
    CODE_AUTH_REJECTED,
    CODE_INVALID_EVENT,
    ERROR,
    FAILURE_EDU_TYPE,
    FATAL,
    FailureReport,
    FailureReporter,
    parse_failure,
)
from fedserver.room_versions import RoomVersionRegistry
from fedserver.storage.sqlite import open_store
from fedserver.testing import database_arg_for_test, database_for_test


class FailureTests(unittest.TestCase):
    async def _reporter(self):
        store = await open_store(database_for_test(self, self.mktemp()), reactor, registry=RoomVersionRegistry())
        self.addCleanup(store.close)
        self.sent = []

        def send_edu(edu_type, content, destinations):
            self.sent.append((edu_type, content, list(destinations)))
            return defer.succeed(None)

        return store, FailureReporter(store, send_edu, "us.test", reactor)

    def test_report_sends_once_and_records(self):
        """A failure is sent as an org.fedserver.failures EDU to each server concerned
        (never to ourselves), recorded as sent, and the same report is not sent twice."""

        async def run():
            store, rep = await self._reporter()
            f = FailureReport(ERROR, CODE_AUTH_REJECTED, "sender not in room", "!r:x", "$a", None)
            await rep.report(["them.test", "us.test"], [f])
            await rep.report(["them.test"], [f])
            self.assertEqual(len(self.sent), 1)
            edu_type, content, dests = self.sent[0]
            self.assertEqual((edu_type, dests), (FAILURE_EDU_TYPE, ["them.test"]))
            self.assertEqual(content["failures"][0]["code"], CODE_AUTH_REJECTED)
            self.assertEqual(content["failures"][0]["affected"], "$a")
            self.assertNotIn("source", content["failures"][0])
            listed = await rep.list("sent")
            self.assertEqual([(x.server_name, x.severity, x.affected) for x in listed], [("them.test", ERROR, "$a")])

        return defer.ensureDeferred(run())

    def test_received_failures_validated_and_stored(self):
        """Failures received in an EDU are stored with the origin; malformed entries (bad
        severity, non-integer code, oversize ids) are ignored, not errors."""

        async def run():
            store, rep = await self._reporter()
            content = {
                "failures": [
                    {"severity": FATAL, "code": CODE_INVALID_EVENT, "reason": "no type", "affected": "$x"},
                    {"severity": "PANIC", "code": 1, "reason": "?"},
                    {"severity": ERROR, "code": "2002", "reason": "?"},
                    {"severity": ERROR, "code": 2002, "reason": "?", "affected": "$" + "a" * 300},
                    "junk",
                ]
            }
            new = await rep.on_edu("peer.test", content)
            self.assertEqual(new, 1)
            self.assertEqual(await rep.on_edu("peer.test", {"failures": "nope"}), 0)
            listed = await rep.list("received")
            self.assertEqual([(x.server_name, x.severity, x.code) for x in listed], [("peer.test", FATAL, CODE_INVALID_EVENT)])
            self.assertEqual(await rep.list("sent"), [])

        return defer.ensureDeferred(run())

    def test_parse_failure(self):
        """parse_failure keeps the documented fields and truncates long reasons."""
        f = parse_failure({"severity": "WARN", "code": 3002, "reason": "x" * 2000, "source": "$s"})
        self.assertEqual((f.severity, f.code, len(f.reason), f.source), ("WARN", 3002, 500, "$s"))
        self.assertIsNone(parse_failure({"severity": "WARN", "code": True, "reason": ""}))


class FailuresCliTests(unittest.TestCase):
    def test_cli_lists_sent_and_received(self):
        """fedserver-failures prints the stored failures as a table or JSON, filtered by
        direction, and exits 2 for a missing database."""
        import io
        import json as _json

        from fedserver.scripts.failures import run

        async def go():
            path = self.mktemp()
            store = await open_store(database_for_test(self, path), reactor, registry=RoomVersionRegistry())
            await store.federation_extras.add_failures(
                "received", [("peer.test", ERROR, CODE_AUTH_REJECTED, "bad", "!r:x", "$e", None)], 5
            )
            await store.federation_extras.add_failures(
                "sent", [("other.test", FATAL, CODE_INVALID_EVENT, "no type", None, "$f", None)], 6
            )
            store.close()
            out, err = io.StringIO(), io.StringIO()
            db_arg = database_arg_for_test(self, path)
            self.assertEqual(await run(reactor, ["-d", db_arg, "--received", "--json"], out, err), 0)
            rows = _json.loads(out.getvalue())
            self.assertEqual([(r["server_name"], r["code"]) for r in rows], [("peer.test", CODE_AUTH_REJECTED)])
            out = io.StringIO()
            self.assertEqual(await run(reactor, ["-d", db_arg], out, err), 0)
            self.assertIn("other.test", out.getvalue())
            self.assertIn("peer.test", out.getvalue())
            self.assertEqual(await run(reactor, ["-d", path + ".missing"], io.StringIO(), err), 2)

        return defer.ensureDeferred(go())
