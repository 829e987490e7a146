"""Event and JSON signatures: signing, verifying, and which servers must have signed."""

import signedjson.key
from twisted.trial.unittest import SynchronousTestCase

from fedserver.events.canonical import CanonicalJSONError
from fedserver.events.hashing import add_content_hash, unpadded_base64
from fedserver.events.signing import (
    SignatureServersError,
    optional_signature_servers,
    key_id,
    required_signature_servers,
    sign_event,
    sign_json,
    signed_bytes_for_event,
    verify_event_signature,
    verify_json,
    verify_signature_bytes,
)
from fedserver.room_versions import SPEC_ROOM_VERSIONS, V1, V2, V3, V7, V8, V10, V11, V12, EventFormat


def key(version="k1", seed=b"\x01" * 32):
    """A signedjson signing key ``ed25519:<version>`` from a fixed seed."""
    return signedjson.key.decode_signing_key_base64("ed25519", version, unpadded_base64(seed))


def verify_key_of(signing_key):
    return signedjson.key.get_verify_key(signing_key)


def member_pdu(rv, membership="join", sender="@joiner:joining.example", content=None, **top):
    pdu = {
        "type": "m.room.member",
        "sender": sender,
        "state_key": sender,
        "room_id": "!" + "R" * 43 if rv.room_id_from_create_event else "!room:resident.example",
        "content": dict(content or {}, membership=membership),
        "depth": 4,
        "origin_server_ts": 10,
        "prev_events": [],
        "auth_events": [],
    }
    if rv.event_format == EventFormat.V1:
        pdu["event_id"] = "$e:joining.example"
    pdu.update(top)
    return add_content_hash(pdu, strict=rv.strict_canonicaljson)


class RequiredSignatureServersTests(SynchronousTestCase):
    def test_sender_server(self):
        """Every room version requires the sender's server (its domain, port included)."""
        for rv in SPEC_ROOM_VERSIONS:
            pdu = member_pdu(rv, sender="@a:hs.example:8448")
            if rv.event_format == EventFormat.V1:
                pdu["event_id"] = "$x:hs.example:8448"
            self.assertEqual(required_signature_servers(pdu, rv), {"hs.example:8448"})

    def test_v1_event_id_server(self):
        """Rooms v1-2 also require the server that created the event id; later versions
        do not look at any event id."""
        for rv in (V1, V2):
            pdu = member_pdu(rv, event_id="$x:other.example")
            self.assertEqual(required_signature_servers(pdu, rv), {"joining.example", "other.example"})
        self.assertEqual(required_signature_servers(member_pdu(V3), V3), {"joining.example"})

    def test_restricted_join_authoriser(self):
        """From v8, a join with join_authorised_via_users_server needs that user's server
        too; before v8, and for other memberships, the key is ignored."""
        content = {"join_authorised_via_users_server": "@mod:resident.example"}
        for rv in SPEC_ROOM_VERSIONS:
            servers = required_signature_servers(member_pdu(rv, content=content), rv)
            if rv.restricted_joins:
                self.assertEqual(servers, {"joining.example", "resident.example"}, rv.identifier)
            else:
                self.assertEqual(servers, {"joining.example"}, rv.identifier)
            leave = member_pdu(rv, membership="leave", content=content)
            self.assertEqual(required_signature_servers(leave, rv), {"joining.example"})
        self.assertTrue(V8.restricted_joins and not V7.restricted_joins)

    def test_authoriser_on_other_memberships_is_optional(self):
        """From v8, join_authorised_via_users_server on a membership other than join names
        a server whose signature the auth rules need (rule 5.2 applies to every
        membership) but the signature check does not: it is optional, checked when present
        and left to the auth rules otherwise. Not for joins (required), not before v8, not
        for a value that is no user id, not when that server is required anyway."""
        content = {"join_authorised_via_users_server": "@mod:resident.example"}
        for rv in SPEC_ROOM_VERSIONS:
            for membership in ("leave", "invite", "ban", "knock"):
                pdu = member_pdu(rv, membership=membership, content=content)
                expected = {"resident.example"} if rv.restricted_joins else set()
                self.assertEqual(optional_signature_servers(pdu, rv), expected, (rv.identifier, membership))
            self.assertEqual(optional_signature_servers(member_pdu(rv, content=content), rv), set())
            own = member_pdu(rv, membership="leave",
                             content={"join_authorised_via_users_server": "@mod:joining.example"})
            self.assertEqual(optional_signature_servers(own, rv), set())
            for bad in (5, "mod", "@mod"):
                pdu = member_pdu(rv, membership="leave", content={"join_authorised_via_users_server": bad})
                self.assertEqual(optional_signature_servers(pdu, rv), set())

    def test_bad_authoriser_refused(self):
        """A join_authorised_via_users_server that is not a user id raises, since no
        server could sign for it."""
        for bad in ("resident.example", "@nodomain", 5, None, "#a:b"):
            pdu = member_pdu(V10, content={"join_authorised_via_users_server": bad})
            self.assertRaises(SignatureServersError, required_signature_servers, pdu, V10)

    def test_third_party_invite(self):
        """An invite made from a third-party invite does not need the sender's server
        (another server may send it); in v1-2 the event id's server is still needed."""
        content = {"third_party_invite": {"signed": {"mxid": "@x:y", "token": "t"}}}
        for rv in SPEC_ROOM_VERSIONS:
            pdu = member_pdu(rv, membership="invite", content=content)
            expected = {"joining.example"} if rv.event_format == EventFormat.V1 else set()
            self.assertEqual(required_signature_servers(pdu, rv), expected)
            # A plain invite needs the sender's server.
            plain = member_pdu(rv, membership="invite")
            self.assertIn("joining.example", required_signature_servers(plain, rv))


class EventSignatureTests(SynchronousTestCase):
    def test_sign_and_verify_every_version(self):
        """An event signed by us verifies with our key in every room version, and fails
        with another key or another server name."""
        ours, other = key(), key("k2", b"\x02" * 32)
        for rv in SPEC_ROOM_VERSIONS:
            pdu = sign_event(member_pdu(rv), rv, "joining.example", ours)
            self.assertEqual(list(pdu["signatures"]["joining.example"]), ["ed25519:k1"])
            self.assertTrue(verify_event_signature(pdu, rv, "joining.example", verify_key_of(ours)))
            self.assertFalse(verify_event_signature(pdu, rv, "joining.example", verify_key_of(other)))
            self.assertFalse(verify_event_signature(pdu, rv, "elsewhere.example", verify_key_of(ours)))

    def test_co_signing(self):
        """A second server (e.g. the resident authorising a restricted join) adds its
        signature next to the first; both verify over the same signed bytes."""
        joiner, resident = key("j"), key("r", b"\x03" * 32)
        content = {"join_authorised_via_users_server": "@mod:resident.example"}
        pdu = sign_event(member_pdu(V10, content=content), V10, "joining.example", joiner)
        sign_event(pdu, V10, "resident.example", resident)
        for server, signing_key in (("joining.example", joiner), ("resident.example", resident)):
            self.assertTrue(verify_event_signature(pdu, V10, server, verify_key_of(signing_key)))
        data = signed_bytes_for_event(pdu, V10)
        sig = pdu["signatures"]["resident.example"]["ed25519:r"]
        self.assertTrue(verify_signature_bytes(data, sig, verify_key_of(resident)))

    def test_sign_requires_content_hash(self):
        """Signing an event without its content hash is refused."""
        pdu = member_pdu(V11)
        del pdu["hashes"]
        self.assertRaises(ValueError, sign_event, pdu, V11, "joining.example", key())

    def test_signature_survives_redaction_not_tampering(self):
        """The signature covers the redacted event: removing a display name keeps it
        valid; changing the membership breaks it."""
        signing_key = key()
        for rv in (V1, V11, V12):
            pdu = sign_event(member_pdu(rv, content={"displayname": "D"}), rv, "joining.example", signing_key)
            stripped = dict(pdu, content={"membership": "join"})
            self.assertTrue(verify_event_signature(stripped, rv, "joining.example", verify_key_of(signing_key)))
            changed = dict(pdu, content={"membership": "leave", "displayname": "D"})
            self.assertFalse(verify_event_signature(changed, rv, "joining.example", verify_key_of(signing_key)))

    def test_bad_signatures_never_raise(self):
        """Missing or malformed signatures, bad base64, wrong lengths and unencodable
        events all verify as False without raising."""
        signing_key = key()
        vk = verify_key_of(signing_key)
        pdu = sign_event(member_pdu(V11), V11, "joining.example", signing_key)
        good = pdu["signatures"]["joining.example"]["ed25519:k1"]
        for signatures in (
            None, [], {}, {"joining.example": "x"}, {"joining.example": {}},
            {"joining.example": {"ed25519:k1": 5}}, {"joining.example": {"ed25519:k1": "!!!"}},
            {"joining.example": {"ed25519:k1": good[:-4]}}, {"joining.example": {"ed25519:k1": "AAAA"}},
        ):
            self.assertFalse(verify_event_signature(dict(pdu, signatures=signatures), V11, "joining.example", vk))
        self.assertFalse(verify_event_signature(dict(pdu, content={"membership": "\ud800"}), V11, "joining.example", vk))
        self.assertFalse(verify_event_signature(dict(pdu, depth=1.5), V11, "joining.example", vk))
        self.assertFalse(verify_event_signature("not a dict", V11, "joining.example", vk))
        self.assertFalse(verify_signature_bytes(b"x", None, vk))

    def test_key_id(self):
        """Key ids are '<algorithm>:<version>'."""
        self.assertEqual(key_id(key("a_EjeJ")), "ed25519:a_EjeJ")
        self.assertEqual(key_id(verify_key_of(key("abc"))), "ed25519:abc")


class JSONSignatureTests(SynchronousTestCase):
    def test_round_trip_keeps_unsigned_and_other_signatures(self):
        """sign_json keeps ``unsigned`` and existing signatures and does not sign them;
        verify_json checks the named server's signature."""
        signing_key = key()
        obj = {"a": 1, "unsigned": {"age": 3}, "signatures": {"x.example": {"ed25519:z": "s"}}}
        signed = sign_json(obj, "me.example", signing_key)
        self.assertEqual(signed["unsigned"], {"age": 3})
        self.assertEqual(signed["signatures"]["x.example"], {"ed25519:z": "s"})
        self.assertTrue(verify_json(signed, "me.example", verify_key_of(signing_key)))
        self.assertTrue(verify_json(dict(signed, unsigned={"age": 99}), "me.example", verify_key_of(signing_key)))
        self.assertFalse(verify_json(dict(signed, a=2), "me.example", verify_key_of(signing_key)))
        self.assertFalse(verify_json(signed, "x.example", verify_key_of(signing_key)))

    def test_floats_in_request_json(self):
        """Request JSON may carry v1-5 events with floats: it can be signed and verified."""
        signing_key = key()
        signed = sign_json({"pdus": [{"content": {"f": 1.5}}]}, "me.example", signing_key)
        self.assertTrue(verify_json(signed, "me.example", verify_key_of(signing_key)))

    def test_bad_input(self):
        """Unencodable objects cannot be signed (CanonicalJSONError) and never verify."""
        signing_key = key()
        self.assertRaises(CanonicalJSONError, sign_json, {"x": float("nan")}, "me.example", signing_key)
        self.assertRaises(CanonicalJSONError, sign_json, {"x": "\ud800"}, "me.example", signing_key)
        vk = verify_key_of(signing_key)
        signed = sign_json({"x": 1}, "me.example", signing_key)
        for obj in (None, [], "x", dict(signed, x=float("nan")), dict(signed, x="\ud800"),
                    dict(signed, signatures="x"), {"x": 1}):
            self.assertFalse(verify_json(obj, "me.example", vk))
