"""The specification's own test vectors (content/appendices.md), byte for byte."""

import json

import signedjson.key
from twisted.trial.unittest import SynchronousTestCase

from fedserver.events.canonical import CanonicalJSONError, encode_canonical_json, parse_json
from fedserver.events.hashing import add_content_hash, decode_unpadded_base64, unpadded_base64
from fedserver.events.signing import (
    sign_event,
    sign_json,
    signed_bytes_for_event,
    verify_event_signature,
    verify_json,
)
from fedserver.room_versions import V1

#: Appendix "Cryptographic Test Vectors": seed, server name and key id.
SPEC_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"


def spec_signing_key():
    return signedjson.key.decode_signing_key_base64("ed25519", "1", SPEC_SEED)


# Appendix "Canonical JSON" / "Examples": (input JSON text, canonical output).
CANONICAL_EXAMPLES = [
    ("{}", "{}"),
    ('{\n    "one": 1,\n    "two": "Two"\n}', '{"one":1,"two":"Two"}'),
    ('{\n    "b": "2",\n    "a": "1"\n}', '{"a":"1","b":"2"}'),
    ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
    (
        """{
    "auth": {
        "success": true,
        "mxid": "@john.doe:example.com",
        "profile": {
            "display_name": "John Doe",
            "three_pids": [
                {
                    "medium": "email",
                    "address": "john.doe@example.org"
                },
                {
                    "medium": "msisdn",
                    "address": "123456789"
                }
            ]
        }
    }
}""",
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
        '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
        '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
    ),
    ('{\n    "a": "日本語"\n}', '{"a":"日本語"}'),
    ('{\n    "本": 2,\n    "日": 1\n}', '{"日":1,"本":2}'),
    ('{\n    "a": "\\u65E5"\n}', '{"a":"日"}'),
    ('{\n    "a": null\n}', '{"a":null}'),
]


class CanonicalJSONVectorTests(SynchronousTestCase):
    def test_examples(self):
        """Every canonical JSON example of the appendix, parsed and re-encoded, gives the
        expected bytes exactly."""
        for text, expected in CANONICAL_EXAMPLES:
            self.assertEqual(
                encode_canonical_json(parse_json(text.encode("utf-8"))),
                expected.encode("utf-8"),
                text,
            )

    def test_negative_zero_and_exponent_values(self):
        """The appendix example ``{"a": -0, "b": 1e10}`` encodes as
        ``{"a":0,"b":10000000000}``: the values 0 and 10**10 are emitted as plain
        integers."""
        self.assertEqual(
            encode_canonical_json({"a": -0, "b": 10**10}), b'{"a":0,"b":10000000000}'
        )

    def test_exponent_text_is_refused_strictly(self):
        """The JSON text ``1e10`` parses to a float, which strict canonical JSON refuses
        (as Synapse does for v6+ events) instead of guessing that it meant an integer.
        This is a deliberate, documented deviation from reading the appendix example as
        text: see the report of the events layer."""
        value = parse_json(b'{"a": -0, "b": 1e10}')
        self.assertEqual(value["a"], 0)
        self.assertRaises(CanonicalJSONError, encode_canonical_json, value)


class UnpaddedBase64VectorTests(SynchronousTestCase):
    def test_examples(self):
        """The appendix "Unpadded Base64" examples encode exactly and decode back."""
        for raw, encoded in [
            (b"", ""), (b"f", "Zg"), (b"fo", "Zm8"), (b"foo", "Zm9v"), (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"), (b"foobar", "Zm9vYmFy"),
        ]:
            self.assertEqual(unpadded_base64(raw), encoded)
            self.assertEqual(decode_unpadded_base64(encoded), raw)


class JSONSigningVectorTests(SynchronousTestCase):
    def test_empty_object(self):
        """Signing ``{}`` with the spec's test key gives the appendix's signature."""
        signed = sign_json({}, "domain", spec_signing_key())
        self.assertEqual(
            signed,
            {
                "signatures": {
                    "domain": {
                        "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
                    }
                }
            },
        )

    def test_object_with_values(self):
        """Signing ``{"one": 1, "two": "Two"}`` gives the appendix's signed JSON, which
        verifies with the matching verify key."""
        signed = sign_json({"one": 1, "two": "Two"}, "domain", spec_signing_key())
        self.assertEqual(
            signed,
            {
                "one": 1,
                "signatures": {
                    "domain": {
                        "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
                    }
                },
                "two": "Two",
            },
        )
        verify_key = signedjson.key.get_verify_key(spec_signing_key())
        self.assertTrue(verify_json(signed, "domain", verify_key))
        signed["two"] = "Three"
        self.assertFalse(verify_json(signed, "domain", verify_key))


class EventSigningVectorTests(SynchronousTestCase):
    """Appendix "Event Signing". The examples carry ``origin`` and no room version; they
    follow the v1 redaction algorithm, which keeps ``origin``."""

    def _sign(self, event):
        event = add_content_hash(event, strict=False)
        return sign_event(event, V1, "domain", spec_signing_key())

    def test_minimal_event(self):
        """The minimally-sized event gets the appendix's content hash and signature; its
        ``unsigned`` is kept and not signed."""
        event = {
            "room_id": "!x:domain",
            "sender": "@a:domain",
            "origin": "domain",
            "origin_server_ts": 1000000,
            "signatures": {},
            "hashes": {},
            "type": "X",
            "content": {},
            "prev_events": [],
            "auth_events": [],
            "depth": 3,
            "unsigned": {"age_ts": 1000000},
        }
        expected = json.loads(
            """{
    "auth_events": [],
    "content": {},
    "depth": 3,
    "hashes": {
        "sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    },
    "origin": "domain",
    "origin_server_ts": 1000000,
    "prev_events": [],
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        }
    },
    "type": "X",
    "unsigned": {
        "age_ts": 1000000
    }
}"""
        )
        signed = self._sign(event)
        self.assertEqual(encode_canonical_json(signed), encode_canonical_json(expected))
        verify_key = signedjson.key.get_verify_key(spec_signing_key())
        self.assertTrue(verify_event_signature(signed, V1, "domain", verify_key))

    def test_event_with_redactable_content(self):
        """The message event gets the appendix's hash and signature: the signature covers
        the redacted event (no ``body``), the hash covers the body."""
        event = {
            "content": {"body": "Here is the message content"},
            "event_id": "$0:domain",
            "origin": "domain",
            "origin_server_ts": 1000000,
            "type": "m.room.message",
            "room_id": "!r:domain",
            "sender": "@u:domain",
            "signatures": {},
            "unsigned": {"age_ts": 1000000},
        }
        signed = self._sign(event)
        self.assertEqual(signed["hashes"], {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"})
        self.assertEqual(
            signed["signatures"],
            {
                "domain": {
                    "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
                }
            },
        )
        self.assertNotIn(b"Here is the message content", signed_bytes_for_event(signed, V1))
        verify_key = signedjson.key.get_verify_key(spec_signing_key())
        # The signature still verifies once the body is redacted away.
        redacted = dict(signed, content={})
        self.assertTrue(verify_event_signature(redacted, V1, "domain", verify_key))
