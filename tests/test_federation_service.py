"""Tests for the federation wiring in fedserver.service: two whole servers started in-process on
loopback federate over real TLS (key fetches, signed queries, transactions, backoff reset)."""

from __future__ import annotations

import json
import logging
import os

from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fedserver.testing import free_port, loopback_config, start_server
from fedserver.crypto import verify_key_base64
from fedserver.federation.client import HttpResponseError, fed_path
from fedserver.federation.keyring import parse_key_document
from fedserver.service import StdlibToTwistedHandler, install_stdlib_logging_bridge
from fedserver.storage import open_store
from tests.test_federation_support import deferLater


class ServersTestCase(TestCase):
    """Whole servers started in-process, named by loopback IP literals, trusting each
    other's self-signed certificates only as far as federation_verify_certificates: false
    allows. Subclasses add the tests."""

    def make_config(self, name: str, port: int, **extra):
        return loopback_config(os.path.abspath(self.mktemp()), port, **extra)

    async def start(self, config):
        return await start_server(self, config)

    async def until(self, predicate, what):
        for _ in range(3000):
            value = await predicate()
            if value:
                return value
            await deferLater(0.01)
        self.fail(f"timed out waiting for {what}")


class TwoServersTests(ServersTestCase):
    """Two servers federating: keys, signed queries, transactions, backoff."""

    async def test_components_exposed(self):
        """Once ready the service exposes the federation components, and authenticated
        requests reach the sender's on_server_seen."""
        svc = await self.start(self.make_config("a", free_port()))
        for name in ("store", "federation_client", "keyring", "notary", "authenticator", "acls", "ingest",
                     "transactions", "sender", "profiles", "federation_resource"):
            self.assertIsNotNone(getattr(svc, name), name)
        self.assertIn(svc.sender.on_server_seen, svc.authenticator.on_authenticated)
        await svc.stopService()
        self.assertIsNone(svc.sender)
        self.assertIsNone(svc.store)

    async def test_keys_profile_and_transactions_between_two_servers(self):
        """A fetches and verifies B's keys through its notary endpoint; A's signed profile
        queries are verified by B (which fetches A's keys) and answered from B's accounts;
        A's outbound sender delivers a transaction that B records."""
        a = await self.start(self.make_config("a", free_port()))
        b = await self.start(self.make_config("b", free_port()))
        a_name, b_name = a.config.server_name, b.config.server_name

        # The notary endpoint of A, asked over the network for B's keys.
        answer = await a.federation_client.post_json(
            a_name, "/_matrix/key/v2/query", {"server_keys": {b_name: {}}}, sign=False
        )
        (doc,) = answer["server_keys"]
        parsed = parse_key_document(doc, b_name)
        self.assertEqual(list(parsed.verify_keys), [b.key_id])
        self.assertIn(a.key_id, doc["signatures"][a_name])

        # Signed queries from A to B: B verifies them with A's keys, fetched from A, and
        # answers from its accounts.
        await b.store.accounts.create_user(f"@bea:{b_name}", None, displayname="Bea")
        profile = await a.federation_client.get_json(
            b_name, "/_matrix/federation/v1/query/profile", {"user_id": f"@bea:{b_name}"}
        )
        self.assertEqual(profile, {"displayname": "Bea"})
        with self.assertRaises(HttpResponseError) as cm:
            await a.federation_client.get_json(b_name, "/_matrix/federation/v1/query/profile", {"user_id": f"@x:{b_name}"})
        self.assertEqual((cm.exception.code, cm.exception.errcode), (404, "M_NOT_FOUND"))
        self.assertTrue(await b.store.get_server_keys(a_name, [a.key_id]))

        # The outbound queue delivers to B.
        typing = []
        b.transactions.register_edu_handler("m.typing", lambda origin, content: typing.append((origin, content)))
        content = {"room_id": "!r:x", "user_id": f"@u:{a_name}", "typing": True}
        await a.sender.send_edu("m.typing", content, [b_name])

        async def delivered():
            return typing

        await self.until(delivered, "the EDU to reach B")
        self.assertEqual(typing, [(a_name, content)])
        self.assertEqual(await a.store.destinations_with_pending(), [])

    async def test_keys_through_a_trusted_notary(self):
        """With trusted_key_servers configured, a server whose direct key fetch fails (the
        origin is down) gets the keys from the notary (which cached them), checking the
        notary's signature with the configured key."""
        notary = await self.start(self.make_config("n", free_port()))
        origin = await self.start(self.make_config("o", free_port()))
        await notary.keyring.refresh_keys({origin.config.server_name: {"": 0}})
        await origin.stopService()
        trusting = {"server_name": notary.config.server_name,
                    "verify_keys": {notary.key_id: verify_key_base64(notary.signing_key)}}
        c = await self.start(self.make_config("c", free_port(), trusted_key_servers=[trusting]))
        keys = await c.keyring.get_verify_keys(origin.config.server_name, [origin.key_id], 0)
        self.assertEqual(list(keys), [origin.key_id])
        self.assertEqual(keys[origin.key_id].encode(), origin.signing_key.verify_key.encode())

    async def test_backoff_then_catch_up_when_the_peer_speaks(self):
        """A transaction to a server that is down backs off (state persisted); once that
        server is up and sends us a valid signed request, the queue is delivered."""
        a = await self.start(self.make_config("a", free_port()))
        b_port = free_port()
        b_name = f"127.0.0.1:{b_port}"
        await a.sender.send_edu("m.presence", {"push": []}, [b_name])

        async def backing_off():
            return a.sender.backoff_ms(b_name) > 0

        await self.until(backing_off, "the first attempt to fail")
        self.assertIsNotNone(await a.store.get_destination_retry(b_name))
        self.assertEqual(await a.store.destinations_with_pending(), [b_name])

        b = await self.start(self.make_config("b", b_port))
        got = []
        b.transactions.register_edu_handler("m.presence", lambda origin, content: got.append(origin))
        with self.assertRaises(HttpResponseError):
            await b.federation_client.get_json(a.config.server_name, fed_path("/_matrix/federation/v1/query/profile"),
                                               {"user_id": "@nobody:" + a.config.server_name})

        async def caught_up():
            return got and not await a.store.destinations_with_pending()

        await self.until(caught_up, "the queue to reach B")
        self.assertEqual(got, [a.config.server_name])
        self.assertIsNone(await a.store.get_destination_retry(b_name))

    async def test_old_transaction_answers_pruned_at_start(self):
        """Answers to inbound transactions older than a day are pruned when the server
        starts (and hourly after); recent ones are kept."""
        config = self.make_config("a", free_port())
        store = await open_store(config.store_target(), reactor)
        now = int(reactor.seconds() * 1000)
        await store.store_received_txn("old.test", "t", 200, {"pdus": {}}, now - 2 * 86_400_000)
        await store.store_received_txn("new.test", "t", 200, {"pdus": {}}, now)
        store.close()
        svc = await self.start(config)

        async def pruned():
            return await svc.store.get_received_txn("old.test", "t") is None

        await self.until(pruned, "the old answer to be pruned")
        self.assertIsNotNone(await svc.store.get_received_txn("new.test", "t"))
        # ... and again every hour while the server runs.
        self.assertTrue(svc._prune_loop.running)
        self.assertEqual(svc._prune_loop.interval, 3600)


class LoggingBridgeTests(SynchronousTestCase):
    """stdlib logging reaches twisted.logger (and so the twistd log), at log_level."""

    def setUp(self):
        root = logging.getLogger()
        self.saved = (root.level, list(root.handlers))
        self.events = []
        globalLogPublisher.addObserver(self.events.append)

        def restore():
            globalLogPublisher.removeObserver(self.events.append)
            root.setLevel(self.saved[0])
            root.handlers[:] = self.saved[1]

        self.addCleanup(restore)

    def test_records_become_log_events(self):
        """A stdlib warning becomes a twisted warn event with the logger's name as
        namespace and its message (and traceback); records below log_level are dropped;
        installing twice keeps one handler."""
        handler = install_stdlib_logging_bridge("warn")
        self.assertIs(install_stdlib_logging_bridge("warn"), handler)
        self.assertEqual(sum(isinstance(h, StdlibToTwistedHandler) for h in logging.getLogger().handlers), 1)
        logger = logging.getLogger("fedserver.state.iterative")
        logger.info("quiet %s", "info")
        logger.warning("loud %s", "warning")
        try:
            1 / 0
        except ZeroDivisionError:
            logger.exception("it broke")
        mine = [e for e in self.events if e.get("log_namespace") == "fedserver.state.iterative"]
        texts = [e["stdlib_message"] for e in mine]
        self.assertEqual(texts[0], "loud warning")
        self.assertTrue(texts[1].startswith("it broke\nTraceback"))
        self.assertIn("ZeroDivisionError", texts[1])
        self.assertEqual([e["log_level"].name for e in mine], ["warn", "error"])
        self.assertNotIn("quiet info", json.dumps(texts))
