"""Tests for fedserver.federation.xmatrix: server-name grammar, request signing, header parsing."""

from __future__ import annotations

import json

from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import SignatureVerifyException, verify_signed_json
from twisted.trial.unittest import SynchronousTestCase

from fedserver.federation.xmatrix import (
    InvalidServerName,
    XMatrixAuth,
    XMatrixParseError,
    is_valid_server_name,
    parse_server_name,
    parse_xmatrix_header,
    request_json_for_verify,
    request_signing_bytes,
    sign_request,
)


class ServerNameTests(SynchronousTestCase):
    """The appendix's "Server Name" grammar."""

    def test_spec_examples_are_valid(self):
        """Every example the appendix gives is valid and parses to its host and port."""
        cases = {
            "matrix.org": ("matrix.org", None, None),
            "matrix.org:8888": ("matrix.org", 8888, None),
            "1.2.3.4": ("1.2.3.4", None, "1.2.3.4"),
            "1.2.3.4:1234": ("1.2.3.4", 1234, "1.2.3.4"),
            "[1234:5678::abcd]": ("1234:5678::abcd", None, "1234:5678::abcd"),
            "[1234:5678::abcd]:5678": ("1234:5678::abcd", 5678, "1234:5678::abcd"),
        }
        for name, (host, port, ip) in cases.items():
            self.assertTrue(is_valid_server_name(name), name)
            parsed = parse_server_name(name)
            self.assertEqual((parsed.host, parsed.port, parsed.ip), (host, port, ip), name)

    def test_more_valid_names(self):
        """Upper case, hyphens, single labels, a trailing dot, port 65535, IPv6 with an
        embedded IPv4 part and leading-zero IPv4 octets (1*3DIGIT) are all valid."""
        for name in (
            "Example.ORG",
            "a-b.example",
            "localhost",
            "localhost:65535",
            "example.org.",
            "[::ffff:1.2.3.4]:8448",
            "[::1]",
            "010.001.2.3",
            "x" * 255,
        ):
            self.assertTrue(is_valid_server_name(name), name)
        self.assertEqual(parse_server_name("010.001.2.3").ip, "10.1.2.3")

    def test_invalid_names(self):
        """Anything off the grammar is refused: empty, bad characters, bad or out-of-range
        ports, malformed IPv4 and IPv6 literals, zone ids, over-long names, non-strings."""
        for name in (
            "",
            ":8448",
            "example.org:",
            "example.org:0",
            "example.org:65536",
            "example.org:123456",
            "example.org:80a",
            "example.org:8448:1",
            "exa mple.org",
            "example.org/path",
            "user@example.org",
            "exämple.org",
            "example_org",
            "1.2.3.256",
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.1234",
            "[1234:5678::abcd",
            "[1234:5678::abcd]x",
            "[1234:5678::abcd]:",
            "[fe80::1%eth0]",
            "[gggg::1]",
            "[1:2:3:4:5:6:7:8:9]",
            "[]",
            "1234:5678::abcd",
            "x" * 256,
            "evil.org\x00",
            None,
            123,
            b"example.org",
        ):
            self.assertFalse(is_valid_server_name(name), repr(name))
        self.assertRaises(InvalidServerName, parse_server_name, "1.2.3")


def _key(version="k1"):
    return generate_signing_key(version)


class SigningTests(SynchronousTestCase):
    """sign_request builds what the spec's "Request Authentication" describes."""

    def test_round_trip_verifies(self):
        """A signed header parses back to its parameters, and the signature verifies over
        the request JSON rebuilt from them."""
        key = _key()
        content = {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {"x": "é"}}]}
        header = sign_request("origin.test", key, "dest.test:8448", "PUT", "/_matrix/federation/v1/send/1", content)
        self.assertTrue(header.startswith('X-Matrix origin="origin.test",destination="dest.test:8448",key="ed25519:k1",sig="'))
        auth = parse_xmatrix_header(header)
        self.assertEqual((auth.origin, auth.destination, auth.key_id), ("origin.test", "dest.test:8448", "ed25519:k1"))
        obj = request_json_for_verify("PUT", "/_matrix/federation/v1/send/1", auth.origin, auth.destination, content, auth.key_id, auth.sig)
        verify_signed_json(obj, "origin.test", get_verify_key(key))

    def test_signed_bytes_are_canonical_json_of_spec_object(self):
        """The spliced signing bytes equal the canonical JSON of the spec's step-1 object,
        with and without content."""
        from canonicaljson import encode_canonical_json

        content = {"b": 1, "a": [1, {"z": None}], "ü": "x"}
        expected = encode_canonical_json(
            {"method": "POST", "uri": "/x?y=1", "origin": "o.test", "destination": "d.test", "content": content}
        )
        got = request_signing_bytes("POST", "/x?y=1", "o.test", "d.test", encode_canonical_json(content))
        self.assertEqual(got, expected)
        self.assertEqual(
            request_signing_bytes("GET", "/x", "o.test", "d.test", None),
            encode_canonical_json({"method": "GET", "uri": "/x", "origin": "o.test", "destination": "d.test"}),
        )

    def test_tampering_breaks_verification(self):
        """Changing the method, URI, query, body, origin or destination the verifier sees
        makes the signature fail; so does presenting it under another key id."""
        key = _key()
        content = {"a": 1}
        uri = "/_matrix/federation/v1/query/profile?user_id=%40a%3Ao.test"
        auth = parse_xmatrix_header(sign_request("o.test", key, "d.test", "PUT", uri, content))
        vk = get_verify_key(key)
        good = dict(method="PUT", uri=uri, origin="o.test", destination="d.test", content=content)
        verify_signed_json(request_json_for_verify(**good, key_id=auth.key_id, sig=auth.sig), "o.test", vk)
        for change in (
            {"method": "POST"},
            {"uri": "/_matrix/federation/v1/query/profile?user_id=%40b%3Ao.test"},
            {"uri": "/_matrix/federation/v1/query/profile"},
            {"content": {"a": 2}},
            {"content": None},
            {"destination": "other.test"},
            {"destination": None},
        ):
            obj = request_json_for_verify(**{**good, **change}, key_id=auth.key_id, sig=auth.sig)
            self.assertRaises(SignatureVerifyException, verify_signed_json, obj, "o.test", vk)
        # Another key id under the same signature: a verifier finds no signature by that key.
        obj = request_json_for_verify(**good, key_id="ed25519:other", sig=auth.sig)
        self.assertRaises(SignatureVerifyException, verify_signed_json, obj, "o.test", vk)

    def test_refuses_invalid_names(self):
        """Signing for an invalid destination or as an invalid origin is refused."""
        key = _key()
        self.assertRaises(InvalidServerName, sign_request, "o.test", key, "bad name", "GET", "/x")
        self.assertRaises(InvalidServerName, sign_request, 'o"test', key, "d.test", "GET", "/x")

    def test_request_json_without_destination(self):
        """A header without destination gives an object without destination (pre-v1.3)."""
        obj = request_json_for_verify("GET", "/x", "o.test", None, None, "ed25519:a", "sig")
        self.assertEqual(obj, {"method": "GET", "uri": "/x", "origin": "o.test", "signatures": {"o.test": {"ed25519:a": "sig"}}})


class HeaderParsingTests(SynchronousTestCase):
    """parse_xmatrix_header follows RFC 7235 auth-params as the spec summarises them."""

    def test_quoted_and_unquoted_forms(self):
        """Values may be quoted or bare tokens (with colons); names are case-insensitive,
        order is free, whitespace around commas and '=' is allowed, the scheme is
        case-insensitive and may be followed by several spaces, and unknown parameters are
        ignored."""
        expected = XMatrixAuth("o.test:8448", "d.test", "ed25519:k1", "c2lnbmF0dXJl")
        for header in (
            'X-Matrix origin="o.test:8448",destination="d.test",key="ed25519:k1",sig="c2lnbmF0dXJl"',
            "X-Matrix origin=o.test:8448,destination=d.test,key=ed25519:k1,sig=c2lnbmF0dXJl",
            'x-matrix   SIG="c2lnbmF0dXJl" , Key = "ed25519:k1",\tDestination=d.test, ORIGIN="o.test:8448"',
            'X-MATRIX origin="o.test:8448",extra="a,b=\\"c\\"",destination="d.test",key="ed25519:k1",sig=c2lnbmF0dXJl,',
            'X-Matrix ,origin="o.test:8448",,destination="d.test",key="ed25519:k1",sig="c2lnbmF0dXJl"',
            b'X-Matrix origin="o.test:8448",destination="d.test",key="ed25519:k1",sig="c2lnbmF0dXJl"',
        ):
            self.assertEqual(parse_xmatrix_header(header), expected, header)

    def test_escapes_are_unescaped(self):
        """A backslash-character pair inside quotes becomes the character."""
        auth = parse_xmatrix_header('X-Matrix origin="o\\.te\\st",key="ed25519:k\\1",sig="a\\+b"')
        self.assertEqual((auth.origin, auth.key_id, auth.sig), ("o.test", "ed25519:k1", "a+b"))

    def test_destination_optional(self):
        """Headers from servers before v1.3 have no destination; that parses as None."""
        auth = parse_xmatrix_header('X-Matrix origin="o.test",key="ed25519:k1",sig="abc"')
        self.assertIsNone(auth.destination)

    def test_malformed_headers(self):
        """Every malformed form raises XMatrixParseError."""
        for header in (
            "",
            "X-Matrix",
            "X-Matrix ",
            "Bearer abc",
            "X-Matrixorigin=o.test",
            'X-Matrix origin="o.test",key="ed25519:k1"',  # no sig
            'X-Matrix origin="o.test",sig="abc"',  # no key
            'X-Matrix key="ed25519:k1",sig="abc"',  # no origin
            'X-Matrix origin="o.test",origin="p.test",key="ed25519:k1",sig="abc"',  # repeated
            'X-Matrix origin="o.test",ORIGIN="o.test",key="ed25519:k1",sig="abc"',  # repeated, other case
            'X-Matrix origin="o.test,key="ed25519:k1",sig="abc"',  # unterminated quote
            'X-Matrix origin="o.test",key="ed25519:k1",sig="abc\\',  # dangling backslash
            'X-Matrix origin="o.test"x,key="ed25519:k1",sig="abc"',  # junk after value
            'X-Matrix origin "o.test",key="ed25519:k1",sig="abc"',  # no '='
            'X-Matrix ="o.test",key="ed25519:k1",sig="abc"',  # no name
            'X-Matrix origin=,key="ed25519:k1",sig="abc"',  # empty bare value
            'X-Matrix origin="o.test",key="ed25519:k1",sig=ab/cd',  # '/' needs quotes
            'X-Matrix origin="o.test",key="ed25519:k1",sig=""',  # empty sig
            'X-Matrix origin="o.test",key="k1",sig="abc"',  # key without algorithm
            'X-Matrix origin="o.test",key="ed25519:",sig="abc"',
            'X-Matrix origin="",key="ed25519:k1",sig="abc"',
            'X-Matrix origin="evil test",key="ed25519:k1",sig="abc"',  # invalid origin
            'X-Matrix origin="o.test/../x",key="ed25519:k1",sig="abc"',
            'X-Matrix origin="[::1",key="ed25519:k1",sig="abc"',
            'X-Matrix origin="o.test",destination="d test",key="ed25519:k1",sig="abc"',  # invalid destination
            'X-Matrix origin="o.test\x01",key="ed25519:k1",sig="abc"',  # control character
            'X-Matrix origin="o.tést",key="ed25519:k1",sig="abc"',  # not ASCII
            b'X-Matrix origin="o.t\xffst",key="ed25519:k1",sig="abc"',
            'X-Matrix origin="o.test",key="ed25519:k1",sig="' + "a" * 5000 + '"',  # too long
        ):
            self.assertRaises(XMatrixParseError, parse_xmatrix_header, header)

    def test_signature_from_spec_python_example_shape(self):
        """A header built the way the spec's example code builds it parses."""
        sig = "s76RUgajp8w172am0zQb/iPTHsRnb4SkrzGoeCOSFfcBY2V/1c8QfrmdXHpvnc2jK5BD1WiJIxiMW95fMjK7Bw"
        header = 'X-Matrix origin="%s",destination="%s",key="%s",sig="%s"' % ("origin.hs.example.com", "destination.hs.example.com", "ed25519:key1", sig)
        auth = parse_xmatrix_header(header)
        self.assertEqual(auth.sig, sig)
        self.assertEqual(json.loads(json.dumps(auth.origin)), "origin.hs.example.com")
