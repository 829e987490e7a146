"""Interop with a real Synapse over loopback TLS: keys both ways, signed profile queries both
ways, broken signatures refused both ways, and our outbound sender delivering to Synapse.

Both servers run as child processes (tests/interop/peers.py), started once for this module
and stopped when the test process exits. Skipped without ``FEDSERVER_SYNAPSE_PYTHON``
unless ``FEDSERVER_INTEROP=require``.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from signedjson.key import decode_verify_key_bytes, generate_signing_key
from signedjson.sign import verify_signed_json
from twisted.internet import reactor, task
from twisted.names.client import Resolver
from twisted.trial.unittest import TestCase

from fedserver.events.hashing import decode_unpadded_base64
from fedserver.federation.client import HttpResponseError, build_federation_client, fed_path
from fedserver.federation.sender import FederationSender
from fedserver.federation.xmatrix import sign_request
from fedserver.storage import open_store
from fedserver.testing import database_for_test
from tests.interop.peers import (
    Fedserver,
    HTTPError,
    PeerPair,
    Synapse,
    http_json,
)

_pair = PeerPair("interop-")


def peers() -> tuple[Synapse, Fedserver]:
    """Synapse and fedserver, started on first use (once per test process)."""
    return _pair.get()


def verify_key_of(doc: dict, key_id: str):
    """The verify key ``key_id`` published in a key document."""
    return decode_verify_key_bytes(key_id, decode_unpadded_base64(doc["verify_keys"][key_id]["key"]))


def synapse_key_id(synapse: Synapse) -> str:
    (key_id,) = http_json("GET", synapse.fed_url + "/_matrix/key/v2/server")["verify_keys"]
    return key_id


class SynapseInteropTests(TestCase):
    """fedserver and Synapse federating over loopback TLS."""

    def setUp(self):
        self.synapse, self.fedserver = peers()
        for peer in (self.synapse, self.fedserver):
            if not peer.running():
                raise AssertionError(f"{type(peer).__name__} is not running:\n{peer.log_tail()}")

    def our_client(self):
        """Our federation client, speaking as the running fedserver (its name and key)."""
        client = build_federation_client(
            reactor,
            self.fedserver.server_name,
            self.fedserver.signing_key(),
            verify_tls=False,  # Synapse's certificate is self-signed
            allow_private_addresses=True,
            srv_resolver=Resolver(servers=[("127.0.0.1", 53)], reactor=reactor),  # unused: IP literals
            timeout=30,
        )
        self.addCleanup(client.close)
        return client

    # -- keys -----------------------------------------------------------------------------

    def test_synapse_fetches_and_verifies_our_keys(self):
        """Synapse's notary, asked for our keys, fetches them from fedserver, verifies them
        and returns our document signed by us and by Synapse."""
        ours = http_json("GET", self.fedserver.fed_url + "/_matrix/key/v2/server")
        (our_key_id,) = ours["verify_keys"]
        answer = http_json(
            "POST", self.synapse.fed_url + "/_matrix/key/v2/query",
            {"server_keys": {self.fedserver.server_name: {}}},
        )
        (doc,) = [d for d in answer["server_keys"] if d["server_name"] == self.fedserver.server_name]
        self.assertEqual(doc["verify_keys"], ours["verify_keys"])
        verify_signed_json(doc, self.fedserver.server_name, verify_key_of(ours, our_key_id))
        syn_doc = http_json("GET", self.synapse.fed_url + "/_matrix/key/v2/server")
        syn_key_id = synapse_key_id(self.synapse)
        verify_signed_json(doc, self.synapse.server_name, verify_key_of(syn_doc, syn_key_id))

    def test_we_fetch_and_verify_synapses_keys(self):
        """Our notary endpoint, asked for Synapse's keys, fetches them from Synapse,
        verifies its self-signature and returns the document signed by Synapse and by us."""
        syn_doc = http_json("GET", self.synapse.fed_url + "/_matrix/key/v2/server")
        syn_key_id = synapse_key_id(self.synapse)
        answer = http_json(
            "POST", self.fedserver.fed_url + "/_matrix/key/v2/query",
            {"server_keys": {self.synapse.server_name: {}}},
        )
        (doc,) = answer["server_keys"]
        self.assertEqual(doc["server_name"], self.synapse.server_name)
        self.assertEqual(doc["verify_keys"], syn_doc["verify_keys"])
        verify_signed_json(doc, self.synapse.server_name, verify_key_of(syn_doc, syn_key_id))
        ours = http_json("GET", self.fedserver.fed_url + "/_matrix/key/v2/server")
        (our_key_id,) = ours["verify_keys"]
        verify_signed_json(doc, self.fedserver.server_name, verify_key_of(ours, our_key_id))
        # The GET form answers the same keys.
        answer = http_json("GET", self.fedserver.fed_url + "/_matrix/key/v2/query/" + quote(self.synapse.server_name, safe=""))
        self.assertEqual(answer["server_keys"][0]["verify_keys"], syn_doc["verify_keys"])

    # -- profiles -------------------------------------------------------------------------

    async def test_synapse_answers_our_signed_profile_query(self):
        """A user registered on Synapse (shared-secret admin API) with a display name: our
        signed GET /query/profile is verified by Synapse (it fetches our keys) and answered."""
        user_id = self.synapse.register("alice")
        self.synapse.client("PUT", f"/_matrix/client/v3/profile/{quote(user_id)}/displayname",
                            {"displayname": "Alice on Synapse"}, as_user=user_id)
        client = self.our_client()
        profile = await client.get_json(
            self.synapse.server_name, "/_matrix/federation/v1/query/profile", {"user_id": user_id}
        )
        self.assertEqual(profile.get("displayname"), "Alice on Synapse")
        only = await client.get_json(
            self.synapse.server_name, "/_matrix/federation/v1/query/profile",
            {"user_id": user_id, "field": "displayname"},
        )
        self.assertEqual(only, {"displayname": "Alice on Synapse"})

    def test_we_answer_synapses_profile_query(self):
        """Synapse's client API asks fedserver for the profile of a user created with
        fedserver-register: fedserver verifies Synapse's signed request and answers; an
        unknown user of ours is a 404 relayed by Synapse."""
        viewer = self.synapse.register("viewer")
        bob = self.fedserver.register("bob", displayname="Bob on fedserver")
        profile = self.synapse.client("GET", f"/_matrix/client/v3/profile/{quote(bob)}", as_user=viewer)
        self.assertEqual(profile.get("displayname"), "Bob on fedserver")
        with self.assertRaises(HTTPError) as cm:
            self.synapse.client("GET", f"/_matrix/client/v3/profile/{quote('@nobody:' + self.fedserver.server_name)}",
                                as_user=viewer)
        self.assertEqual(cm.exception.status, 404)

    # -- broken signatures ------------------------------------------------------------------

    def test_synapse_refuses_our_tampered_request(self):
        """A request whose X-Matrix signature was made over another URI, or with a key we
        do not publish, is refused by Synapse with 401 (and the well-signed one accepted)."""
        user_id = self.synapse.register("carol")
        uri = "/_matrix/federation/v1/query/profile?user_id=" + quote(user_id, safe="")
        key = self.fedserver.signing_key()
        good = sign_request(self.fedserver.server_name, key, self.synapse.server_name, "GET", uri)
        http_json("GET", self.synapse.fed_url + uri, headers={"Authorization": good})
        other_uri = uri.replace("carol", "dave")
        tampered = sign_request(self.fedserver.server_name, key, self.synapse.server_name, "GET", other_uri)
        impostor = generate_signing_key(key.version)  # our key id, another key
        forged = sign_request(self.fedserver.server_name, impostor, self.synapse.server_name, "GET", uri)
        for header in (tampered, forged):
            with self.assertRaises(HTTPError) as cm:
                http_json("GET", self.synapse.fed_url + uri, headers={"Authorization": header})
            self.assertEqual(cm.exception.status, 401, cm.exception.body)

    def test_we_refuse_a_forged_synapse_request(self):
        """A request claiming to come from Synapse but signed with a key Synapse does not
        own (under Synapse's key id, or an unknown one) is refused by fedserver with 401
        M_UNAUTHORIZED after it fetched Synapse's real keys."""
        bob = self.fedserver.register("bob2")
        uri = "/_matrix/federation/v1/query/profile?user_id=" + quote(bob, safe="")
        for version in (synapse_key_id(self.synapse).split(":", 1)[1], "not_synapses"):
            impostor = generate_signing_key(version)
            header = sign_request(self.synapse.server_name, impostor, self.fedserver.server_name, "GET", uri)
            with self.assertRaises(HTTPError) as cm:
                http_json("GET", self.fedserver.fed_url + uri, headers={"Authorization": header})
            self.assertEqual((cm.exception.status, cm.exception.body.get("errcode")), (401, "M_UNAUTHORIZED"))

    # -- outbound transactions --------------------------------------------------------------

    async def test_our_sender_delivers_a_transaction(self):
        """Our outbound sender (persisted queue on a real SQLite file, our federation
        client, fedserver's identity) delivers a transaction with an EDU and an empty PDU
        list to Synapse, which answers 200; the queue is then empty."""
        client = self.our_client()
        directory = self.mktemp()
        os.makedirs(directory)
        store = await open_store(database_for_test(self, os.path.join(directory, "queue.db")), reactor)
        self.addCleanup(store.close)
        answers = []

        def put(destination, txn_id, body):
            d = client.put_json(destination, fed_path("/_matrix/federation/v1/send/{}", txn_id), body)
            d.addBoth(lambda result: answers.append(result) or result)
            return d

        sender = FederationSender(reactor, store, put, self.fedserver.server_name)
        self.addCleanup(sender.stop)
        await sender.start()
        await sender.send_edu("m.presence", {"push": []}, [self.synapse.server_name])
        for _ in range(3000):
            if answers and not sender.sending():
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(answers, [{"pdus": {}}])
        self.assertEqual(await store.destinations_with_pending(), [])

    async def test_synapse_refuses_a_transaction_from_an_impostor(self):
        """A transaction signed by a key that is not the origin's is refused by Synapse
        with 401, which our client reports as an HTTP error with that code."""
        impostor = build_federation_client(
            reactor, self.fedserver.server_name, generate_signing_key("fs_impostor"),
            verify_tls=False, allow_private_addresses=True,
            srv_resolver=Resolver(servers=[("127.0.0.1", 53)], reactor=reactor),
        )
        self.addCleanup(impostor.close)
        body = {"origin": self.fedserver.server_name, "origin_server_ts": 1, "pdus": []}
        with self.assertRaises(HttpResponseError) as cm:
            await impostor.put_json(self.synapse.server_name, fed_path("/_matrix/federation/v1/send/{}", "imp1"), body)
        self.assertEqual(cm.exception.code, 401)

