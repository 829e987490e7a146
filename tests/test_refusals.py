"""Tests for "why was this event refused?": the admin endpoints on a real loopback listener
and the fedserver-refusals command line, on a real SQLite database."""

from __future__ import annotations

import configparser
import io
import json
import os
import subprocess
import sys

from twisted.internet import reactor, threads
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from fedserver.events.builder import build_event
from fedserver.handlers.federation.history import EventStatusHandler
from fedserver.http.admin.events import build_admin_events_resources, is_loopback_request
from fedserver.errors import MatrixError
from fedserver.room_versions import V10
from fedserver.scripts import refusals as cli
from fedserver.storage import PersistEntry
from tests.test_history_support import ALICE, SIGNING_KEYS, US, LoopbackServer, persist_scenario, q
from tests.test_storage_support import StoreTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RefusalsTestCase(StoreTestCase):
    """Base: the scenario room (a rejected and a soft-failed event) plus an outlier."""

    async def setup_db(self):
        self.path = self.db_path()
        self.store = await self.open(self.path)
        self.room = await persist_scenario(self.store, V10)
        self.other = await persist_scenario(self.store, V10)
        self.outlier = build_event(
            V10, room_id=self.room.room_id, type="m.room.topic", sender=ALICE, content={"topic": "t"},
            state_key="", prev_event_ids=[], auth_event_ids=[], depth=50, origin_server_ts=1_800_000_000_000,
            server_name=US, signing_key=SIGNING_KEYS[US],
        )
        await self.store.persist_events([PersistEntry(self.outlier, outlier=True)])
        self.handler = EventStatusHandler(self.store)

    def eid(self, name, room=None):
        return (room or self.room).events[name].event_id


class AdminEndpointTests(RefusalsTestCase):
    """GET /_fedserver/admin/v1/events/{eventId}/status and /_fedserver/admin/v1/refusals."""

    async def serve(self, **kw):
        await self.setup_db()
        self.http = LoopbackServer(self, build_admin_events_resources(self.handler, **kw))

    async def status(self, event_id, **kw):
        return await self.http.request("GET", f"/_fedserver/admin/v1/events/{q(event_id)}/status", **kw)

    async def test_statuses(self):
        """Each kind of event gets its status; refused ones say why (reason, rule, and
        the plugin: the registered name, fedserver.auth.rules.<topic> for the spec's
        rules) and when; an event we never stored is "unknown"."""
        await self.serve()
        resp = await self.status(self.eid("rejected"))
        self.assertEqual(resp.code, 200, resp)
        body = resp.body
        self.assertEqual(
            {k: body[k] for k in ("event_id", "room_id", "status", "outlier", "reason", "rule", "plugin")},
            {
                "event_id": self.eid("rejected"), "room_id": self.room.room_id, "status": "rejected",
                "outlier": False, "reason": "sender is not joined to the room", "rule": "v10 5",
                "plugin": "fedserver.auth.rules.power",
            },
        )
        self.assertIsInstance(body["refused_ts"], int)
        body = (await self.status(self.eid("soft_failed"))).body
        self.assertEqual(
            (body["status"], body["reason"], body["rule"], body["plugin"]),
            ("soft_failed", "failed the spam check", "policy", "example.spamcheck"),
        )
        body = (await self.status(self.eid("m7"))).body
        self.assertEqual((body["status"], body["reason"], body["refused_ts"]), ("accepted", None, None))
        body = (await self.status(self.outlier.event_id)).body
        self.assertEqual((body["status"], body["outlier"]), ("outlier", True))
        body = (await self.status("$never-seen:peer.test")).body
        self.assertEqual(
            body,
            {"event_id": "$never-seen:peer.test", "room_id": None, "status": "unknown", "outlier": False,
             "reason": None, "rule": None, "plugin": None, "refused_ts": None},
        )

    async def test_hostile_event_ids(self):
        """Ids without a sigil, with NUL or too long are 400 M_INVALID_PARAM; quotes and
        SQL in a sigilled id are just an unknown event."""
        await self.serve()
        for bad in ("../../etc/passwd", "$a\x00b", "$" + "x" * 300):
            resp = await self.status(bad)
            self.assertEqual((resp.code, resp.body["errcode"]), (400, "M_INVALID_PARAM"), bad)
        resp = await self.status("$'; DROP TABLE events; --")
        self.assertEqual((resp.code, resp.body["status"]), (200, "unknown"))
        self.assertEqual((await self.status(self.eid("m7"))).body["status"], "accepted")

    async def test_listing_filters_and_paging(self):
        """The listing has every refusal of both rooms, newest first; room and kind
        filter it; limit=1 pages through with next_batch / from until next_batch is
        null."""
        await self.serve()
        base = "/_fedserver/admin/v1/refusals"
        resp = await self.http.request("GET", base)
        self.assertEqual(resp.code, 200, resp)
        listed = [(r["event_id"], r["kind"]) for r in resp.body["refusals"]]
        self.assertEqual(listed, [
            (self.eid("soft_failed", self.other), "soft_failed"),
            (self.eid("rejected", self.other), "rejected"),
            (self.eid("soft_failed"), "soft_failed"),
            (self.eid("rejected"), "rejected"),
        ])
        self.assertIsNone(resp.body["next_batch"])
        first = resp.body["refusals"][0]
        self.assertEqual(
            (first["room_id"], first["reason"], first["rule"], first["plugin"]),
            (self.other.room_id, "failed the spam check", "policy", "example.spamcheck"),
        )
        resp = await self.http.request("GET", f"{base}?room_id={q(self.room.room_id)}&kind=rejected")
        self.assertEqual([r["event_id"] for r in resp.body["refusals"]], [self.eid("rejected")])
        seen, token = [], None
        for _ in range(10):
            resp = await self.http.request("GET", f"{base}?limit=1" + (f"&from={token}" if token else ""))
            seen += [r["event_id"] for r in resp.body["refusals"]]
            token = resp.body["next_batch"]
            if token is None:
                break
        self.assertEqual(seen, [e for e, _ in listed])

    async def test_listing_bad_parameters(self):
        """An unknown kind, a malformed from token, a room id without sigil and a
        non-integer limit are 400 with a Matrix error; a huge limit is clamped."""
        await self.serve()
        base = "/_fedserver/admin/v1/refusals"
        for query in ("kind=banned", "from=abc", "from=-1", "room_id=nope", "limit=x"):
            resp = await self.http.request("GET", f"{base}?{query}")
            self.assertEqual(resp.code, 400, query)
            self.assertIn(resp.body["errcode"], ("M_INVALID_PARAM",), query)
        resp = await self.http.request("GET", f"{base}?limit=99999999")
        self.assertEqual((resp.code, len(resp.body["refusals"])), (200, 4))

    async def test_loopback_only_without_auth(self):
        """Without authentication wired, a loopback caller is served but a request that
        came through a reverse proxy (forwarding headers) is 403 M_FORBIDDEN, and with
        allow_loopback=False everyone is refused."""
        await self.serve()
        self.assertEqual((await self.status(self.eid("m7"))).code, 200)
        for header in (b"X-Forwarded-For", b"Forwarded", b"X-Real-IP"):
            resp = await self.status(self.eid("m7"), headers={header: [b"203.0.113.9"]})
            self.assertEqual((resp.code, resp.body["errcode"]), (403, "M_FORBIDDEN"), header)
        closed = LoopbackServer(self, build_admin_events_resources(self.handler, allow_loopback=False))
        resp = await closed.request("GET", "/_fedserver/admin/v1/refusals")
        self.assertEqual((resp.code, resp.body["errcode"]), (403, "M_FORBIDDEN"))

    async def test_admin_authentication_when_wired(self):
        """With authenticate_admin wired, it decides for every request, loopback or not:
        its MatrixError is the answer (401 without a token, 403 for a non-admin), and an
        admin is served."""
        calls = []

        async def authenticate_admin(request):
            calls.append(request.uri)
            token = request.requestHeaders.getRawHeaders(b"Authorization", [None])[0]
            if token is None:
                raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
            if token != b"Bearer admin":
                raise MatrixError(403, "M_FORBIDDEN", "You are not a server admin")
            return "@admin:us.test"

        await self.serve(authenticate_admin=authenticate_admin)
        resp = await self.status(self.eid("m7"))
        self.assertEqual((resp.code, resp.body["errcode"]), (401, "M_MISSING_TOKEN"))
        resp = await self.status(self.eid("m7"), headers={b"Authorization": [b"Bearer user"]})
        self.assertEqual((resp.code, resp.body["errcode"]), (403, "M_FORBIDDEN"))
        resp = await self.status(self.eid("rejected"), headers={b"Authorization": [b"Bearer admin"]})
        self.assertEqual((resp.code, resp.body["status"]), (200, "rejected"))
        resp = await self.http.request("GET", "/_fedserver/admin/v1/refusals", headers={b"Authorization": [b"Bearer admin"]})
        self.assertEqual(resp.code, 200)
        self.assertEqual(len(calls), 4)


class LoopbackDetectionTests(SynchronousTestCase):
    """is_loopback_request on plain requests."""

    def test_addresses(self):
        """127.0.0.1, other 127/8 addresses and ::1 are loopback; a LAN address, a
        public one and an IPv4-mapped public one are not."""
        for address, expected in [
            (IPv4Address("TCP", "127.0.0.1", 1), True),
            (IPv4Address("TCP", "127.8.9.10", 1), True),
            (IPv6Address("TCP", "::1", 1), True),
            (IPv4Address("TCP", "192.168.1.1", 1), False),
            (IPv4Address("TCP", "203.0.113.9", 1), False),
            (IPv6Address("TCP", "::ffff:203.0.113.9", 1), False),
            (IPv6Address("TCP", "fe80::1%eth0", 1), False),
        ]:
            request = DummyRequest([b""])
            request.client = address
            self.assertEqual(is_loopback_request(request), expected, address)


class CommandLineTests(RefusalsTestCase):
    """fedserver-refusals, run in-process on the real reactor and as a subprocess."""

    async def run_cli(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        code = await cli.run(reactor, list(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    async def test_status_table_and_json(self):
        """An event id prints its status with reason, rule and plugin (table) or the same
        object the admin endpoint answers (--json); exit status 0."""
        await self.setup_db()
        code, out, err = await self.run_cli("--database", self.path, self.eid("soft_failed"))
        self.assertEqual((code, err), (0, ""))
        self.assertIn("soft_failed", out)
        self.assertIn("failed the spam check", out)
        self.assertIn("example.spamcheck", out)
        self.assertIn("policy", out)
        code, out, err = await self.run_cli("--database", self.path, "--json", self.eid("rejected"))
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out), await self.handler.get_status(self.eid("rejected")))
        code, out, _ = await self.run_cli("--database", self.path, self.eid("rejected"))
        self.assertIn("fedserver.auth.rules.power", out)
        self.assertIn("v10 5", out)

    async def test_unknown_event_exit_1(self):
        """An event the database does not hold prints status unknown and exits 1."""
        await self.setup_db()
        code, out, _ = await self.run_cli("-d", self.path, "$not-here:peer.test")
        self.assertEqual(code, 1)
        self.assertIn("unknown", out)

    async def test_listing(self):
        """Without an event id: the refusals table, filtered by --room and --kind, paged
        by --limit / --from; --json gives the page object."""
        await self.setup_db()
        code, out, _ = await self.run_cli("-d", self.path)
        self.assertEqual(code, 0)
        lines = out.strip().splitlines()
        self.assertTrue(lines[0].startswith("REFUSED"))
        self.assertEqual(len(lines), 5)
        code, out, _ = await self.run_cli("-d", self.path, "--json", "--room", self.room.room_id, "--kind", "soft_failed")
        page = json.loads(out)
        self.assertEqual([r["event_id"] for r in page["refusals"]], [self.eid("soft_failed")])
        code, out, _ = await self.run_cli("-d", self.path, "--limit", "1")
        self.assertIn("more: --from ", out)
        token = out.strip().splitlines()[-1].split()[-1]
        code, out, _ = await self.run_cli("-d", self.path, "--json", "--limit", "1", "--from", token)
        self.assertEqual(json.loads(out)["refusals"][0]["event_id"], self.eid("rejected", self.other))

    async def test_config_file_names_the_database(self):
        """--config reads database_path from the server's configuration file."""
        await self.setup_db()
        config = os.path.join(os.path.dirname(self.path), "fedserver.yaml")
        with open(config, "w") as f:
            f.write(f"database_path: {json.dumps(self.path)}\n")
        code, out, _ = await self.run_cli("--config", config, self.eid("m7"))
        self.assertEqual(code, 0)
        self.assertIn("accepted", out)

    async def test_errors_exit_2(self):
        """A missing database (not created), a bad config, an invalid event or room id,
        a bad limit, a bad --from and unknown options exit 2 with a message on stderr;
        --help prints the usage on stdout and exits 0."""
        await self.setup_db()
        missing = os.path.join(os.path.dirname(self.path), "nope.db")
        bad_config = os.path.join(os.path.dirname(self.path), "bad.yaml")
        with open(bad_config, "w") as f:
            f.write("no_such_option: 1\n")
        for argv in (
            ["-d", missing],
            ["--config", bad_config],
            ["-d", self.path, "../../etc/passwd"],
            ["-d", self.path, "--room", "nope"],
            ["-d", self.path, "--limit", "0"],
            ["-d", self.path, "--from", "x"],
            ["-d", self.path, "--kind", "banned"],
            ["-d", self.path, "--no-such-option"],
        ):
            code, out, err = await self.run_cli(*argv)
            self.assertEqual(code, 2, argv)
            self.assertEqual(out, "", argv)
            self.assertTrue(err.strip(), argv)
        self.assertFalse(os.path.exists(missing))
        code, out, err = await self.run_cli("--help")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("fedserver-refusals", out)

    async def test_as_a_process(self):
        """The module runs as a program (what the console script calls): status as JSON
        on stdout, exit status 0, while the store is open in this process too."""
        await self.setup_db()
        env = dict(os.environ, PYTHONPATH=ROOT)
        proc = await _run_process(
            [sys.executable, "-m", "fedserver.scripts.refusals", "-d", self.path, "--json", self.eid("soft_failed")],
            env,
        )
        code, out, err = proc
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["plugin"], "example.spamcheck")


class PackagingTests(SynchronousTestCase):
    """The console script is declared."""

    def test_console_script(self):
        """setup.cfg installs fedserver-refusals pointing at fedserver.scripts.refusals:main."""
        cfg = configparser.ConfigParser()
        cfg.read(os.path.join(ROOT, "setup.cfg"))
        scripts = cfg.get("options.entry_points", "console_scripts")
        self.assertIn("fedserver-refusals = fedserver.scripts.refusals:main", scripts)
        self.assertTrue(callable(cli.main))


def _run_process(argv, env):
    """Run a process off the reactor thread; fires with (status, stdout, stderr)."""

    def run():
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout, done.stderr

    return threads.deferToThread(run)

