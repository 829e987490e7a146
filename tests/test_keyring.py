"""Tests for fedserver.federation.keyring: fetching, verifying, caching keys; batch signature checks."""

from __future__ import annotations

import copy

from signedjson.key import generate_signing_key
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fedserver.events.hashing import unpadded_base64
from fedserver.federation.keyring import (
    ANY_KEY,
    MAX_KEY_VALIDITY_MS,
    DirectKeyFetcher,
    Keyring,
    KeyVerificationError,
    NotaryKeyFetcher,
    is_valid_server_name,
    key_validity_minimum,
    parse_key_document,
    KeyDocumentError,
    sign_json_object,
    signed_bytes,
)
from fedserver.room_versions import V4, V5, V12

DAY_MS = 24 * 3600 * 1000
NOW_S = 1_700_000_000
NOW_MS = NOW_S * 1000


def key_id(sk):
    return f"{sk.alg}:{sk.version}"


def b64key(sk):
    return unpadded_base64(sk.verify_key.encode())


def make_key_doc(server_name, keys, valid_until_ts, old=None, signers=None):
    """A /_matrix/key/v2/server document for ``keys`` (SigningKeys), signed by ``signers``
    (default: all of ``keys``). ``old`` is ``[(SigningKey, expired_ts)]``."""
    doc = {
        "server_name": server_name,
        "valid_until_ts": valid_until_ts,
        "verify_keys": {key_id(k): {"key": b64key(k)} for k in keys},
        "old_verify_keys": {key_id(k): {"key": b64key(k), "expired_ts": ts} for k, ts in (old or [])},
    }
    for k in keys if signers is None else signers:
        sign_json_object(doc, server_name, key_id(k), k)
    return doc


def signed_object(server_name, sk, content=None):
    obj = {"content": content or {"body": "hello"}, "origin": server_name}
    return sign_json_object(obj, server_name, key_id(sk), sk)


class FakeKeyStore:
    """In-memory stand-in with exactly the storage interface the keyring uses."""

    def __init__(self):
        self.keys = {}  # (server, key_id) -> dict(verify_key, valid_until_ts, expired_ts)
        self.json = {}  # server -> list[bytes]
        self.reads = 0
        self.writes = []

    def store_server_keys(self, server_name, keys, key_json, fetched_ts):
        self.writes.append((server_name, list(keys), key_json, fetched_ts))
        for kid, vk, valid, expired in keys:
            self.keys[(server_name, kid)] = {"verify_key": vk, "valid_until_ts": valid, "expired_ts": expired}
        if key_json is not None:
            blobs = self.json.setdefault(server_name, [])
            if key_json not in blobs:
                blobs.append(key_json)
        return defer.succeed(None)

    def get_server_keys(self, server_name, key_ids):
        self.reads += 1
        return defer.succeed(
            {k: dict(self.keys[(server_name, k)]) for k in key_ids if (server_name, k) in self.keys}
        )

    def get_server_key_json(self, server_name):
        return defer.succeed(list(self.json.get(server_name, [])))


class FakeOrigins:
    """Servers answering GET /_matrix/key/v2/server: a plain function over a dict of documents."""

    def __init__(self):
        self.docs = {}
        self.calls = []
        self.pending = None  # when a list, requests wait on Deferreds appended here

    def get_json(self, server_name, path):
        self.calls.append((server_name, path))
        if self.pending is not None:
            d = defer.Deferred()
            self.pending.append((server_name, d))
            return d
        if server_name not in self.docs:
            return defer.fail(ConnectionRefusedError(server_name))
        return defer.succeed(copy.deepcopy(self.docs[server_name]))


class KeyringTestBase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.store = FakeKeyStore()
        self.origins = FakeOrigins()
        self.own_key = generate_signing_key("own")
        self.remote_key = generate_signing_key("r1")
        self.origins.docs["remote.example"] = make_key_doc("remote.example", [self.remote_key], NOW_MS + DAY_MS)
        self.notary_calls = []
        self.notary_answers = {}

    def make_keyring(self, fetchers=None, **kw):
        if fetchers is None:
            fetchers = [DirectKeyFetcher(self.origins.get_json)]
        return Keyring(
            self.clock, self.store, fetchers, "own.example", {key_id(self.own_key): self.own_key.verify_key}, **kw
        )

    def post_json(self, notary, path, body):
        self.notary_calls.append((notary, path, body))
        answer = self.notary_answers.get(notary)
        if answer is None:
            return defer.fail(ConnectionRefusedError(notary))
        return defer.succeed(copy.deepcopy(answer))


class DirectFetchTests(KeyringTestBase):
    """Direct fetching, verification and caching."""

    def test_fetch_verify_and_cache(self):
        """An unknown key is fetched from the origin, verified, stored with its document, and
        a second lookup is answered from memory without any fetch or store read."""
        keyring = self.make_keyring()
        kid = key_id(self.remote_key)
        got = self.successResultOf(keyring.get_verify_keys("remote.example", [kid], NOW_MS))
        self.assertEqual(got[kid].encode(), self.remote_key.verify_key.encode())
        self.assertEqual(self.origins.calls, [("remote.example", "/_matrix/key/v2/server")])
        self.assertEqual(self.store.keys[("remote.example", kid)]["valid_until_ts"], NOW_MS + DAY_MS)
        self.assertEqual(len(self.store.json["remote.example"]), 1)
        reads = self.store.reads
        got2 = self.successResultOf(keyring.get_verify_keys("remote.example", [kid], NOW_MS))
        self.assertEqual(list(got2), [kid])
        self.assertEqual(len(self.origins.calls), 1)
        self.assertEqual(self.store.reads, reads)

    def test_store_answers_without_fetch(self):
        """Keys already in the store (e.g. from before a restart) are used without fetching."""
        kid = key_id(self.remote_key)
        self.store.keys[("remote.example", kid)] = {
            "verify_key": b64key(self.remote_key), "valid_until_ts": NOW_MS + DAY_MS, "expired_ts": None
        }
        keyring = self.make_keyring()
        got = self.successResultOf(keyring.get_verify_keys("remote.example", [kid], NOW_MS))
        self.assertEqual(list(got), [kid])
        self.assertEqual(self.origins.calls, [])

    def test_refetch_when_not_valid_long_enough(self):
        """A cached key whose valid_until_ts is before the required minimum is fetched again,
        and the new document's validity is used."""
        keyring = self.make_keyring()
        kid = key_id(self.remote_key)
        self.successResultOf(keyring.get_verify_keys("remote.example", [kid], NOW_MS))
        self.origins.docs["remote.example"] = make_key_doc("remote.example", [self.remote_key], NOW_MS + 3 * DAY_MS)
        got = self.successResultOf(keyring.get_verify_keys("remote.example", [kid], NOW_MS + 2 * DAY_MS))
        self.assertEqual(list(got), [kid])
        self.assertEqual(len(self.origins.calls), 2)

    def test_refetch_for_unknown_key_id(self):
        """A key id the cache does not know triggers a fetch that learns the rotated key."""
        keyring = self.make_keyring()
        self.successResultOf(keyring.get_verify_keys("remote.example", [key_id(self.remote_key)], NOW_MS))
        new_key = generate_signing_key("r2")
        self.origins.docs["remote.example"] = make_key_doc(
            "remote.example", [new_key], NOW_MS + DAY_MS, old=[(self.remote_key, NOW_MS)]
        )
        got = self.successResultOf(keyring.get_verify_keys("remote.example", [key_id(new_key)], NOW_MS))
        self.assertEqual(list(got), [key_id(new_key)])
        self.assertEqual(len(self.origins.calls), 2)

    def test_own_keys_answered_locally(self):
        """Our own server's keys never cause a fetch or store read."""
        keyring = self.make_keyring()
        got = self.successResultOf(keyring.get_verify_keys("own.example", [key_id(self.own_key), "ed25519:nope"], NOW_MS))
        self.assertEqual(list(got), [key_id(self.own_key)])
        self.assertEqual((self.origins.calls, self.store.reads), ([], 0))

    def test_expired_valid_until_is_not_usable(self):
        """A document whose valid_until_ts has passed is stored but its key does not satisfy a
        later minimum."""
        self.origins.docs["remote.example"] = make_key_doc("remote.example", [self.remote_key], NOW_MS - 1000)
        keyring = self.make_keyring()
        kid = key_id(self.remote_key)
        self.assertEqual(self.successResultOf(keyring.get_verify_keys("remote.example", [kid], NOW_MS)), {})
        # ... but it verifies an event from before that time.
        got = self.successResultOf(keyring.get_verify_keys("remote.example", [kid], NOW_MS - 5000))
        self.assertEqual(list(got), [kid])

    def test_fetcher_raising_synchronously_is_a_failure_not_a_crash(self):
        """A get_json that raises instead of returning a failed Deferred just yields no keys."""

        def broken(server_name, path):
            raise RuntimeError("boom")

        keyring = self.make_keyring([DirectKeyFetcher(broken)])
        self.assertEqual(self.successResultOf(keyring.get_verify_keys("remote.example", ["ed25519:x"], 0)), {})

    def test_lru_cache_is_bounded(self):
        """With room for one server, looking up a second evicts the first, which is then read
        from the store again (not refetched)."""
        other_key = generate_signing_key("o1")
        self.origins.docs["other.example"] = make_key_doc("other.example", [other_key], NOW_MS + DAY_MS)
        keyring = self.make_keyring(cache_servers=1)
        self.successResultOf(keyring.get_verify_keys("remote.example", [key_id(self.remote_key)], NOW_MS))
        self.successResultOf(keyring.get_verify_keys("other.example", [key_id(other_key)], NOW_MS))
        reads = self.store.reads
        got = self.successResultOf(keyring.get_verify_keys("remote.example", [key_id(self.remote_key)], NOW_MS))
        self.assertEqual(len(got), 1)
        self.assertEqual(self.store.reads, reads + 1)
        self.assertEqual(len(self.origins.calls), 2)


class CoalescingAndNegativeCacheTests(KeyringTestBase):
    """No thundering herd; no fetch per event from a dead server."""

    def test_concurrent_lookups_share_one_fetch(self):
        """Three concurrent lookups for the same server (two of them batches) cause a single
        fetch; all complete when it answers."""
        self.origins.pending = []
        keyring = self.make_keyring()
        kid = key_id(self.remote_key)
        obj = signed_object("remote.example", self.remote_key)
        d1 = keyring.get_verify_keys("remote.example", [kid], NOW_MS)
        d2 = keyring.get_verify_keys("remote.example", [kid], NOW_MS)
        d3 = keyring.verify_json_for_server("remote.example", obj, NOW_MS)
        self.assertNoResult(d1)
        self.assertNoResult(d2)
        self.assertNoResult(d3)
        self.assertEqual(len(self.origins.pending), 1)
        server, pending = self.origins.pending.pop()
        pending.callback(copy.deepcopy(self.origins.docs[server]))
        self.assertEqual(list(self.successResultOf(d1)), [kid])
        self.assertEqual(list(self.successResultOf(d2)), [kid])
        self.assertIsNone(self.successResultOf(d3))
        self.assertEqual(len(self.origins.calls), 1)

    def test_failure_is_negatively_cached_briefly(self):
        """After a failed fetch, further lookups for that server within the negative-cache
        period answer at once without fetching; after it lapses a fetch is tried again."""
        keyring = self.make_keyring(negative_cache_seconds=30)
        for _ in range(20):
            self.assertEqual(self.successResultOf(keyring.get_verify_keys("dead.example", ["ed25519:a"], NOW_MS)), {})
        # A different key id from the same dead server does not refetch either.
        self.assertEqual(self.successResultOf(keyring.get_verify_keys("dead.example", ["ed25519:b"], NOW_MS)), {})
        self.assertEqual(len(self.origins.calls), 1)
        self.clock.advance(31)
        self.successResultOf(keyring.get_verify_keys("dead.example", ["ed25519:a"], NOW_MS))
        self.assertEqual(len(self.origins.calls), 2)

    def test_unknown_key_of_live_server_is_negatively_cached(self):
        """A key id the (reachable) server does not publish is not fetched again for every
        event claiming it, while its real keys keep working."""
        keyring = self.make_keyring()
        for _ in range(5):
            self.assertEqual(self.successResultOf(keyring.get_verify_keys("remote.example", ["ed25519:forged"], NOW_MS)), {})
        self.assertEqual(len(self.origins.calls), 1)
        got = self.successResultOf(keyring.get_verify_keys("remote.example", [key_id(self.remote_key)], NOW_MS))
        self.assertEqual(len(got), 1)
        self.assertEqual(len(self.origins.calls), 1)


class DocumentValidationTests(KeyringTestBase):
    """Key documents are accepted only if well-formed and self-signed."""

    def assertRejected(self, doc, server_name="remote.example"):
        self.origins.docs[server_name] = doc
        keyring = self.make_keyring()
        got = self.successResultOf(keyring.get_verify_keys(server_name, [key_id(self.remote_key)], 0))
        self.assertEqual(got, {})
        self.assertEqual(self.store.writes, [])
        self.assertRaises(KeyDocumentError, parse_key_document, doc, server_name)

    def test_missing_self_signature_rejected(self):
        """A document not signed by the key it publishes is rejected."""
        self.assertRejected(make_key_doc("remote.example", [self.remote_key], NOW_MS + DAY_MS, signers=[]))

    def test_signature_by_other_key_rejected(self):
        """A document signed only by some other key (not the one it claims) is rejected."""
        doc = make_key_doc("remote.example", [self.remote_key], NOW_MS + DAY_MS, signers=[])
        other = generate_signing_key("r1")  # same key id, different key
        sign_json_object(doc, "remote.example", key_id(other), other)
        self.assertRejected(doc)

    def test_one_of_two_keys_unsigned_rejected(self):
        """Every current verify key must sign the document, not just one of them."""
        second = generate_signing_key("r2")
        self.assertRejected(
            make_key_doc("remote.example", [self.remote_key, second], NOW_MS + DAY_MS, signers=[self.remote_key])
        )

    def test_tampered_document_rejected(self):
        """Changing a signed field after signing invalidates the document."""
        doc = make_key_doc("remote.example", [self.remote_key], NOW_MS + DAY_MS)
        doc["valid_until_ts"] += 1
        self.assertRejected(doc)

    def test_server_name_mismatch_rejected(self):
        """A correctly self-signed document for another server is rejected, even when it also
        carries a valid signature under the name of the server we asked."""
        self.assertRejected(make_key_doc("evil.example", [self.remote_key], NOW_MS + DAY_MS))
        doc = make_key_doc("evil.example", [self.remote_key], NOW_MS + DAY_MS)
        sign_json_object(doc, "remote.example", key_id(self.remote_key), self.remote_key)
        self.assertRejected(doc)

    def test_valid_until_ts_must_be_integer(self):
        """valid_until_ts that is a string, float, boolean, negative, too large or missing is
        rejected."""
        for bad in ("123", 1.5, True, -1, 2**60, None):
            doc = make_key_doc("remote.example", [self.remote_key], 0)
            doc["valid_until_ts"] = bad
            if type(bad) is int and bad < 2**53:
                sign_json_object(doc, "remote.example", key_id(self.remote_key), self.remote_key)
            self.assertRaises(KeyDocumentError, parse_key_document, doc, "remote.example")

    def test_hostile_shapes_rejected(self):
        """Non-objects, malformed key entries, non-base64 or wrong-length keys, too many keys
        and old keys without expired_ts are all rejected, never crash."""
        good = make_key_doc("remote.example", [self.remote_key], NOW_MS)
        cases = [None, [], "x", 1]
        for mutate in (
            lambda d: d.__setitem__("verify_keys", []),
            lambda d: d.__setitem__("verify_keys", {}),
            lambda d: d["verify_keys"].__setitem__(key_id(self.remote_key), "abc"),
            lambda d: d["verify_keys"].__setitem__(key_id(self.remote_key), {"key": "!!!"}),
            lambda d: d["verify_keys"].__setitem__(key_id(self.remote_key), {"key": "AAAA"}),
            lambda d: d["verify_keys"].__setitem__(key_id(self.remote_key), {"key": 5}),
            lambda d: d.__setitem__("old_verify_keys", {"ed25519:o": {"key": b64key(self.remote_key)}}),
            lambda d: d.__setitem__("old_verify_keys", "no"),
            lambda d: d.__setitem__("signatures", "no"),
            lambda d: d.__setitem__("signatures", {"remote.example": "no"}),
            lambda d: d["verify_keys"].update({f"ed25519:k{i}": {"key": b64key(self.remote_key)} for i in range(20)}),
            lambda d: d.__setitem__("extra", 1.5),
        ):
            doc = copy.deepcopy(good)
            mutate(doc)
            cases.append(doc)
        for doc in cases:
            self.assertRaises(KeyDocumentError, parse_key_document, doc, "remote.example")

    def test_unknown_algorithms_ignored(self):
        """Keys with algorithms we do not understand are ignored rather than rejecting the
        document; the ed25519 key is still used."""
        doc = make_key_doc("remote.example", [self.remote_key], NOW_MS + DAY_MS, signers=[])
        doc["verify_keys"]["curve9:x"] = {"key": "whatever"}
        sign_json_object(doc, "remote.example", key_id(self.remote_key), self.remote_key)
        parsed = parse_key_document(doc, "remote.example")
        self.assertEqual(list(parsed.verify_keys), [key_id(self.remote_key)])


class ValidityTests(KeyringTestBase):
    """The 7-day cap and old_verify_keys."""

    def test_seven_day_cap(self):
        """A key published as valid for 30 days is only treated as valid for 7 days from the
        fetch (room v5+ rule); asking beyond that finds nothing usable."""
        self.origins.docs["remote.example"] = make_key_doc("remote.example", [self.remote_key], NOW_MS + 30 * DAY_MS)
        keyring = self.make_keyring()
        kid = key_id(self.remote_key)
        self.assertEqual(len(self.successResultOf(keyring.get_verify_keys("remote.example", [kid], NOW_MS + 6 * DAY_MS))), 1)
        self.assertEqual(self.store.keys[("remote.example", kid)]["valid_until_ts"], NOW_MS + MAX_KEY_VALIDITY_MS)
        self.assertEqual(self.successResultOf(keyring.get_verify_keys("remote.example", [kid], NOW_MS + 8 * DAY_MS)), {})
        # ... and once 7 days have passed, a check at "now" refetches.
        self.clock.advance(7 * 24 * 3600 + 3600)
        calls = len(self.origins.calls)
        got = self.successResultOf(keyring.get_verify_keys("remote.example", [kid], NOW_MS + 7 * DAY_MS + 1000))
        self.assertEqual(len(got), 1)
        self.assertEqual(len(self.origins.calls), calls + 1)

    def test_old_verify_keys_only_before_expired_ts(self):
        """An old key verifies objects older than its expired_ts and nothing newer."""
        old = generate_signing_key("old")
        expired = NOW_MS - DAY_MS
        self.origins.docs["remote.example"] = make_key_doc(
            "remote.example", [self.remote_key], NOW_MS + DAY_MS, old=[(old, expired)]
        )
        keyring = self.make_keyring()
        self.assertEqual(len(self.successResultOf(keyring.get_verify_keys("remote.example", [key_id(old)], expired - 1))), 1)
        self.assertEqual(self.successResultOf(keyring.get_verify_keys("remote.example", [key_id(old)], expired)), {})
        self.assertEqual(self.store.keys[("remote.example", key_id(old))]["expired_ts"], expired)
        obj = signed_object("remote.example", old)
        self.successResultOf(keyring.verify_json_for_server("remote.example", obj, expired - 1))
        f = self.failureResultOf(keyring.verify_json_for_server("remote.example", obj, NOW_MS), KeyVerificationError)
        self.assertIn("usable", f.value.reason)

    def test_key_validity_minimum_per_room_version(self):
        """Room v5+ require keys valid at origin_server_ts; v1-v4 ignore valid_until_ts."""
        self.assertEqual(key_validity_minimum(1234, V4), 0)
        self.assertEqual(key_validity_minimum(1234, V5), 1234)
        self.assertEqual(key_validity_minimum(1234, V12), 1234)


class NotaryFetchTests(KeyringTestBase):
    """Keys through trusted notaries."""

    def setUp(self):
        super().setUp()
        self.notary_key = generate_signing_key("n1")
        self.notary = ("notary.example", {key_id(self.notary_key): b64key(self.notary_key)})

    def notarised(self, doc, key=None, notary="notary.example"):
        doc = copy.deepcopy(doc)
        sign_json_object(doc, notary, key_id(key or self.notary_key), key or self.notary_key)
        return doc

    def keyring_with_notary(self):
        return self.make_keyring([DirectKeyFetcher(self.origins.get_json), NotaryKeyFetcher(self.post_json, [self.notary])])

    def test_notary_used_when_direct_fails(self):
        """When the origin cannot be reached, the notary's doubly-signed answer is accepted and
        the request carries minimum_valid_until_ts per key id."""
        doc = self.origins.docs.pop("remote.example")
        self.notary_answers["notary.example"] = {"server_keys": [self.notarised(doc)]}
        keyring = self.keyring_with_notary()
        kid = key_id(self.remote_key)
        got = self.successResultOf(keyring.get_verify_keys("remote.example", [kid], NOW_MS))
        self.assertEqual(list(got), [kid])
        self.assertEqual(len(self.origins.calls), 1)
        [(notary, path, body)] = self.notary_calls
        self.assertEqual((notary, path), ("notary.example", "/_matrix/key/v2/query"))
        self.assertEqual(body, {"server_keys": {"remote.example": {kid: {"minimum_valid_until_ts": NOW_MS}}}})
        # The stored document carries the origin's signature only.
        stored = self.store.json["remote.example"][0]
        self.assertNotIn(b"notary.example", stored)

    def test_notary_not_asked_when_direct_succeeds(self):
        """Direct fetching comes first; the notary is not consulted if it suffices."""
        keyring = self.keyring_with_notary()
        self.successResultOf(keyring.get_verify_keys("remote.example", [key_id(self.remote_key)], NOW_MS))
        self.assertEqual(self.notary_calls, [])

    def assertNotaryRejected(self, answer):
        self.origins.docs.pop("remote.example", None)
        self.notary_answers["notary.example"] = answer
        keyring = self.keyring_with_notary()
        got = self.successResultOf(keyring.get_verify_keys("remote.example", [key_id(self.remote_key)], NOW_MS))
        self.assertEqual(got, {})
        self.assertEqual(self.store.writes, [])

    def test_notary_signature_missing_rejected(self):
        """A notary answer without the notary's signature is rejected even if self-signed."""
        doc = make_key_doc("remote.example", [self.remote_key], NOW_MS + DAY_MS)
        self.assertNotaryRejected({"server_keys": [doc]})

    def test_notary_signature_bad_rejected(self):
        """A notary answer signed by a key other than the configured notary key is rejected."""
        doc = make_key_doc("remote.example", [self.remote_key], NOW_MS + DAY_MS)
        impostor = generate_signing_key("n1")
        self.assertNotaryRejected({"server_keys": [self.notarised(doc, key=impostor)]})

    def test_notary_signature_by_unconfigured_key_rejected(self):
        """A notary signature under a key id that is not configured for that notary does not
        count."""
        doc = make_key_doc("remote.example", [self.remote_key], NOW_MS + DAY_MS)
        self.assertNotaryRejected({"server_keys": [self.notarised(doc, key=generate_signing_key("other"))]})

    def test_notary_cannot_vouch_for_unsigned_document(self):
        """A notary-signed document lacking the origin's own signature is rejected."""
        doc = make_key_doc("remote.example", [self.remote_key], NOW_MS + DAY_MS, signers=[])
        self.assertNotaryRejected({"server_keys": [self.notarised(doc)]})

    def test_notary_documents_for_unasked_servers_ignored(self):
        """Documents about servers we did not ask about are ignored, and malformed responses
        do not crash the lookup."""
        other = generate_signing_key("x")
        stray = self.notarised(make_key_doc("stray.example", [other], NOW_MS + DAY_MS))
        self.assertNotaryRejected({"server_keys": [stray, "junk", None, {"server_name": 5}]})
        self.assertNotIn(("stray.example", key_id(other)), self.store.keys)

    def test_malformed_notary_responses(self):
        """Non-object responses and server_keys of the wrong type yield no keys."""
        for answer in ([], {"server_keys": {}}, {"server_keys": "x"}, {}):
            self.store = FakeKeyStore()
            self.notary_calls = []
            self.assertNotaryRejected(answer)
            self.assertEqual(len(self.notary_calls), 1)

    def test_second_notary_asked_when_first_fails(self):
        """Notaries are tried in configured order until one provides the keys."""
        second_key = generate_signing_key("n2")
        doc = self.origins.docs.pop("remote.example")
        self.notary_answers["second.example"] = {
            "server_keys": [self.notarised(doc, key=second_key, notary="second.example")]
        }
        fetcher = NotaryKeyFetcher(
            self.post_json, [self.notary, ("second.example", {key_id(second_key): b64key(second_key)})]
        )
        keyring = self.make_keyring([fetcher])
        got = self.successResultOf(keyring.get_verify_keys("remote.example", [key_id(self.remote_key)], NOW_MS))
        self.assertEqual(len(got), 1)
        self.assertEqual([c[0] for c in self.notary_calls], ["notary.example", "second.example"])

    def test_bad_notary_config_refused(self):
        """A trusted_key_servers entry with a malformed key or no keys is a configuration error."""
        self.assertRaises(ValueError, NotaryKeyFetcher, self.post_json, [("n.example", {"ed25519:a": "!!"})])
        self.assertRaises(ValueError, NotaryKeyFetcher, self.post_json, [("n.example", {})])


class BatchVerificationTests(KeyringTestBase):
    """verify_signatures and verify_json_for_server."""

    def test_mixed_batch(self):
        """A batch over several servers returns True for good signatures and a reason for bad,
        missing, unknown-key and malformed ones, fetching each server's keys once."""
        other_key = generate_signing_key("o1")
        self.origins.docs["other.example"] = make_key_doc("other.example", [other_key], NOW_MS + DAY_MS)
        keyring = self.make_keyring()

        def req(server, sk, content, tamper=False, sig_override=None):
            obj = signed_object(server, sk, content)
            sigs = obj["signatures"][server]
            if sig_override is not None:
                sigs = sig_override
            msg = signed_bytes(obj)
            if tamper:
                msg = msg.replace(b"hello", b"HELLO")
            return (server, msg, sigs, NOW_MS)

        requests = []
        for i in range(20):
            requests.append(req("remote.example", self.remote_key, {"body": "hello", "i": i}))
            requests.append(req("other.example", other_key, {"body": "hello", "i": i}))
        requests.append(req("remote.example", self.remote_key, {"body": "hello"}, tamper=True))
        requests.append(req("remote.example", self.remote_key, {}, sig_override={}))
        requests.append(req("remote.example", self.remote_key, {}, sig_override={"ed25519:unknown": "AAAA"}))
        requests.append(req("remote.example", self.remote_key, {}, sig_override={"rsa:x": "AAAA"}))
        requests.append(req("remote.example", self.remote_key, {}, sig_override={key_id(self.remote_key): "!!notb64"}))
        requests.append(req("remote.example", self.remote_key, {}, sig_override={key_id(self.remote_key): 5}))
        requests.append(req("remote.example", self.remote_key, {}, sig_override="garbage"))
        requests.append(req("own.example", self.own_key, {"body": "hello"}))
        requests.append(req("dead.example", self.remote_key, {"body": "hello"}))
        # Signed by the wrong server's key under remote's key id.
        requests.append(req("remote.example", other_key, {"body": "hello"}, sig_override=None))
        requests[-1] = (requests[-1][0], requests[-1][1], {key_id(self.remote_key): requests[-1][2][key_id(other_key)]}, NOW_MS)

        results = self.successResultOf(keyring.verify_signatures(requests))
        self.assertEqual(results[:40], [True] * 40)
        tail = results[40:]
        self.assertIn("bad signature", tail[0])
        self.assertIn("not signed", tail[1])
        self.assertIn("no key", tail[2])
        self.assertIn("no ed25519 signature", tail[3])
        self.assertIn("bad signature", tail[4])
        self.assertIn("bad signature", tail[5])
        self.assertIn("not signed", tail[6])
        self.assertIs(tail[7], True)
        self.assertIn("no key", tail[8])
        self.assertIn("bad signature", tail[9])
        self.assertEqual(sorted(s for s, _ in self.origins.calls), ["dead.example", "other.example", "remote.example"])

    def test_cached_batch_is_synchronous(self):
        """When all keys are cached, the batch result is available immediately (no pending
        Deferred chain)."""
        keyring = self.make_keyring()
        obj = signed_object("remote.example", self.remote_key)
        self.successResultOf(keyring.verify_json_for_server("remote.example", obj, NOW_MS))
        reqs = [("remote.example", signed_bytes(obj), obj["signatures"]["remote.example"], NOW_MS)] * 50
        d = keyring.verify_signatures(reqs)
        self.assertEqual(self.successResultOf(d), [True] * 50)

    def test_every_usable_signature_must_verify(self):
        """An object with one good and one bad signature by two known keys of the server fails,
        whichever order they come in."""
        second = generate_signing_key("r2")
        self.origins.docs["remote.example"] = make_key_doc("remote.example", [self.remote_key, second], NOW_MS + DAY_MS)
        keyring = self.make_keyring()
        obj = signed_object("remote.example", self.remote_key)
        sign_json_object(obj, "remote.example", key_id(second), second)
        good = obj["signatures"]["remote.example"]
        forged = second.sign(b"something else").signature
        msg = signed_bytes(obj)
        for sigs in (
            {key_id(self.remote_key): good[key_id(self.remote_key)], key_id(second): unpadded_base64(forged)},
            {key_id(second): unpadded_base64(forged), key_id(self.remote_key): good[key_id(self.remote_key)]},
        ):
            [result] = self.successResultOf(keyring.verify_signatures([("remote.example", msg, sigs, NOW_MS)]))
            self.assertIn("bad signature", result)
        [result] = self.successResultOf(keyring.verify_signatures([("remote.example", msg, good, NOW_MS)]))
        self.assertIs(result, True)

    def test_lenient_numbers_signed_by_signedjson(self):
        """An object signed with signedjson (as Synapse signs) verifies even when it carries a
        float or an integer beyond 2**53 (request bodies may hold room v1-5 events); NaN is
        refused with KeyVerificationError, not a crash."""
        from signedjson.sign import sign_json

        keyring = self.make_keyring()
        obj = sign_json({"pdus": [{"depth": 2**60, "content": {"x": 1.5}}]}, "remote.example", self.remote_key)
        self.successResultOf(keyring.verify_json_for_server("remote.example", obj, NOW_MS))
        nan = dict(obj, extra=float("nan"))
        self.failureResultOf(keyring.verify_json_for_server("remote.example", nan, NOW_MS), KeyVerificationError)

    def test_per_request_minimum(self):
        """Each request is judged against its own minimum_valid_until_ts within one batch."""
        keyring = self.make_keyring()
        obj = signed_object("remote.example", self.remote_key)
        msg, sigs = signed_bytes(obj), obj["signatures"]["remote.example"]
        results = self.successResultOf(
            keyring.verify_signatures([("remote.example", msg, sigs, NOW_MS), ("remote.example", msg, sigs, NOW_MS + 2 * DAY_MS)])
        )
        self.assertIs(results[0], True)
        self.assertIsInstance(results[1], str)

    def test_verify_json_for_server_errors(self):
        """verify_json_for_server raises KeyVerificationError for tampered objects, objects
        without that server's signature, and non-objects; succeeds for good ones."""
        keyring = self.make_keyring()
        obj = signed_object("remote.example", self.remote_key)
        self.successResultOf(keyring.verify_json_for_server("remote.example", obj, NOW_MS))
        tampered = copy.deepcopy(obj)
        tampered["content"]["body"] = "bye"
        self.failureResultOf(keyring.verify_json_for_server("remote.example", tampered, NOW_MS), KeyVerificationError)
        self.failureResultOf(keyring.verify_json_for_server("other.example", obj, NOW_MS), KeyVerificationError)
        self.failureResultOf(keyring.verify_json_for_server("remote.example", [], NOW_MS), KeyVerificationError)
        withfloat = dict(obj, x=1.5)
        self.failureResultOf(keyring.verify_json_for_server("remote.example", withfloat, NOW_MS), KeyVerificationError)
        # The unsigned section is not covered by the signature.
        self.successResultOf(keyring.verify_json_for_server("remote.example", dict(obj, unsigned={"age": 5}), NOW_MS))


class ServerNameTests(SynchronousTestCase):
    """Server name grammar (appendix "Server Name")."""

    def test_valid_and_invalid(self):
        """Hostnames, IPv4 and bracketed IPv6 with optional ports pass; junk does not."""
        for good in ("matrix.org", "matrix.org:8888", "1.2.3.4", "1.2.3.4:1234", "[1234:5678::abcd]",
                     "[1234:5678::abcd]:5678", "localhost", "127.0.0.1:8448"):
            self.assertTrue(is_valid_server_name(good), good)
        for bad in ("", "a b", "a/b", "../etc", "a:", "a:123456", "[::g]", "[1234", "x" * 300, "a\x00b",
                    "matrix.org:80:80", 5, None, "ünïcode.org"):
            self.assertFalse(is_valid_server_name(bad), bad)

    def test_any_key_sentinel(self):
        """ANY_KEY is not a valid key id, so it cannot collide with a real one."""
        self.assertFalse(ANY_KEY.startswith("ed25519:"))
