"""Prometheus metrics: two whole fedservers on loopback, one with metrics_listen, scraped over HTTP."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fedserver.metrics import ServerMetrics
from fedserver.testing import loopback_config, start_server
from tests.test_federation_support import deferLater
from tests.test_remote_rooms import Server


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{sample name: [(labels, value)]}`` of a text exposition."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for l, v in samples.get(name, []) if all(l.get(k) == x for k, x in labels.items()))


class MetricsScrapeTests(TestCase):
    """A server with metrics on a separate loopback listener, fed by real traffic."""

    timeout = 60

    async def scrape(self, svc: Any) -> tuple[int, str, dict]:
        port = svc.metrics_listener.port.getHost().port
        resp = await treq.get(f"http://127.0.0.1:{port}/metrics", reactor=reactor, persistent=False)
        self.text = (await resp.content()).decode("utf-8")
        return resp.code, resp.headers.getRawHeaders(b"content-type", [b""])[0].decode(), parse(self.text)

    async def until(self, predicate, what: str) -> Any:
        for _ in range(1000):
            got = await predicate()
            if got:
                return got
            await deferLater(0.01)
        self.fail(f"timed out waiting for {what}")

    async def test_scrape_after_client_and_federation_traffic(self):
        """After HTTP requests on the client API and a message arriving over federation,
        a scrape of /metrics on the metrics listener (not on the public listeners) shows:
        requests by route template and status (never a raw room id), latency histograms,
        inbound transactions and accepted PDUs, database transaction and state-resolution
        histograms, reactor lag, joined rooms and users, the outbound queue gauge and the
        process collectors."""
        a_cfg = loopback_config(os.path.abspath(self.mktemp()), metrics_listen="127.0.0.1:0", log_level="warn")
        a = Server(await start_server(self, a_cfg))
        b = Server(await start_server(self, loopback_config(os.path.abspath(self.mktemp()), log_level="warn")))
        self.assertIsNone(b.svc.metrics_listener)
        alice, bob = await a.user("alice"), await b.user("bob")
        room = await a.create_room(alice, "12", preset="public_chat")
        # Client traffic over HTTP on A's client listener, with an access token.
        login = await a.svc.accounts.accounts.issue_token(alice.user_id)
        client = f"http://127.0.0.1:{a.svc.client_listener.port.getHost().port}"
        for _ in range(2):
            resp = await treq.get(f"{client}/_matrix/client/versions", reactor=reactor, persistent=False)
            self.assertEqual(resp.code, 200)
            await resp.content()
        resp = await treq.put(
            f"{client}/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/t1",
            json={"msgtype": "m.text", "body": "hi"}, headers={"Authorization": f"Bearer {login.access_token}"},
            reactor=reactor, persistent=False,
        )
        self.assertEqual(resp.code, 200, await resp.text())
        resp = await treq.get(f"{client}/_matrix/client/v3/nope", reactor=reactor, persistent=False)
        self.assertEqual(resp.code, 404)
        await resp.content()
        # Federation: bob of B joins and talks; A receives a transaction with his PDU.
        await b.rooms.membership.join(bob.user_id, room, server_names=[a.name])
        await b.rooms.rooms.send_event(bob, room, "m.room.message", {"msgtype": "m.text", "body": "from b"}, "tb")

        async def accepted() -> Any:
            _, _, s = await self.scrape(a.svc)
            return s if value(s, "fedserver_federation_inbound_pdus_total", outcome="accepted") >= 1 else None

        await self.until(accepted, "B's message to be counted by A")
        await a.rooms.rooms.send_event(alice, room, "m.room.message", {"msgtype": "m.text", "body": "to b"}, "ta")

        async def sent() -> Any:
            _, _, s = await self.scrape(a.svc)
            return value(s, "fedserver_federation_outbound_transactions_total", result="ok") >= 1

        await self.until(sent, "A's transaction to B to be counted")
        code, content_type, samples = await self.scrape(a.svc)
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith("text/plain"), content_type)
        versions = "/_matrix/client/versions"
        self.assertEqual(value(samples, "fedserver_http_requests_total", listener="client", method="GET",
                               route=versions, status="200"), 2)
        send = "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}"
        self.assertEqual(value(samples, "fedserver_http_requests_total", route=send, status="200"), 1)
        self.assertEqual(value(samples, "fedserver_http_requests_total", route="unrecognized", status="404"), 1)
        self.assertEqual(value(samples, "fedserver_http_request_duration_seconds_count", route=versions), 2)
        self.assertGreaterEqual(value(samples, "fedserver_http_requests_total", listener="federation",
                                      route="/_matrix/federation/v1/send/{txn_id}", status="200"), 1)
        routes = {l.get("route", "") for l, _ in samples["fedserver_http_requests_total"]}
        self.assertFalse([r for r in routes if room in r or "%21" in r], routes)
        self.assertGreaterEqual(value(samples, "fedserver_federation_inbound_transactions_total", result="processed"), 1)
        self.assertEqual(value(samples, "fedserver_federation_inbound_pdus_total", outcome="rejected"), 0)
        self.assertGreater(value(samples, "fedserver_database_transaction_seconds_count", kind="write"), 0)
        self.assertGreater(value(samples, "fedserver_database_transaction_seconds_count", kind="read"), 0)
        self.assertIn("# TYPE fedserver_state_resolution_seconds histogram", self.text)
        self.assertIn("# TYPE fedserver_federation_outbound_queue_depth gauge", self.text)
        self.assertIn("# TYPE fedserver_federation_destination_backoff_seconds gauge", self.text)
        self.assertEqual(value(samples, "fedserver_users", status="active"), 1)
        self.assertEqual(value(samples, "fedserver_joined_rooms"), 1)
        self.assertGreaterEqual(value(samples, "fedserver_federation_outbound_transactions_total", result="ok"), 1)
        self.assertIn("process_resident_memory_bytes", samples)
        self.assertEqual(value(samples, "fedserver_build_info"), 1)
        # The metrics are not on the public listeners.
        resp = await treq.get(f"{client}/metrics", reactor=reactor, persistent=False)
        self.assertEqual(resp.code, 404)
        await resp.content()


class ServerMetricsUnitTests(SynchronousTestCase):
    """ServerMetrics with a fake clock: the reactor lag probe and the observers."""

    def test_reactor_lag_and_observers(self):
        """The lag probe observes once per interval; a transaction observer counts PDUs by
        outcome; state resolution is timed by room version."""
        from twisted.internet.task import Clock

        clock = Clock()
        m = ServerMetrics(clock, process_metrics=False)
        m.start()
        clock.advance(1.0)
        clock.advance(1.0)
        m.observe_transaction("x.test", "processed", {"accepted": 3, "soft_failed": 1, "dropped": 2}, 4)
        m.observe_state_resolution("12", 0.02)
        from prometheus_client.exposition import generate_latest

        s = parse(generate_latest(m.registry).decode())
        self.assertEqual(value(s, "fedserver_reactor_lag_seconds_count"), 2)
        self.assertEqual(value(s, "fedserver_federation_inbound_pdus_total", outcome="accepted"), 3)
        self.assertEqual(value(s, "fedserver_federation_inbound_pdus_total", outcome="soft_failed"), 1)
        self.assertEqual(value(s, "fedserver_federation_inbound_pdus_total", outcome="dropped"), 2)
        self.assertEqual(value(s, "fedserver_federation_inbound_pdus_total", outcome="rejected"), 0)
        self.assertEqual(value(s, "fedserver_federation_inbound_edus_total"), 4)
        self.assertEqual(value(s, "fedserver_state_resolution_seconds_count", room_version="12"), 1)
        m.stop()
        self.assertFalse(clock.getDelayedCalls())
