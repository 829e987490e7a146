"""Our event ids, hashes, signatures, validation and redaction against a real Synapse.

The data in ``tests/data/synapse_events`` was made by Synapse 1.163.2 (see its README.md):
events read from Synapse's ``event_json`` table, its key document, and its redaction /
reference hash of crafted PDUs.
"""

import json
import os

import signedjson.key
from twisted.trial.unittest import SynchronousTestCase

from fedserver.events.hashing import check_content_hash, compute_event_id, unpadded_base64, compute_reference_hash
from fedserver.events.model import Event
from fedserver.events.redaction import redact
from fedserver.events.signing import (
    required_signature_servers,
    signed_bytes_for_event,
    verify_event_signature,
    verify_json,
    verify_signature_bytes,
)
from fedserver.events.validation import InvalidEvent, check_pdu, parse_pdu, validate_pdu
from fedserver.room_versions import EventFormat, spec_version

DATA = os.path.join(os.path.dirname(__file__), "data", "synapse_events")
ROOM_FILES = ["room_v1.json", "room_v3.json", "room_v4.json", "room_v10.json", "room_v11.json", "room_v12.json"]
SYNAPSE = "127.0.0.1:18448"


def load(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return json.load(f)


def synapse_verify_key():
    doc = load("server_keys.json")
    (key_id, entry), = doc["verify_keys"].items()
    algorithm, version = key_id.split(":", 1)
    return signedjson.key.decode_verify_key_base64(algorithm, version, entry["key"])


class RecordedEventTests(SynchronousTestCase):
    def test_key_document_self_signed(self):
        """Synapse's recorded key document carries a valid self-signature by the key it
        publishes, and a tampered copy does not."""
        doc = load("server_keys.json")
        key = synapse_verify_key()
        self.assertTrue(verify_json(doc, SYNAPSE, key))
        self.assertFalse(verify_json(dict(doc, valid_until_ts=doc["valid_until_ts"] + 1), SYNAPSE, key))

    def test_rooms_cover_every_event_format(self):
        """The recordings cover rooms v1, v3, v4, v10, v11 and v12: formats V1 to V4."""
        formats = {spec_version(load(n)["room_version"]).event_format for n in ROOM_FILES}
        self.assertEqual(formats, set(EventFormat))

    def test_ids_hashes_signatures_validation(self):
        """For every recorded event: validation passes, our event id equals Synapse's,
        the content hash matches, Synapse's signature verifies with its published key
        (also through the precomputed signed bytes), and the sender's server is the only
        required signer."""
        key = synapse_verify_key()
        count = 0
        for name in ROOM_FILES:
            room = load(name)
            rv = spec_version(room["room_version"])
            for rec in room["events"]:
                pdu, event_id = rec["pdu"], rec["event_id"]
                validate_pdu(pdu, rv)
                event = parse_pdu(pdu, rv)
                self.assertEqual(event.event_id, event_id, name)
                self.assertEqual(event.room_id, room["room_id"])
                if rv.event_format != EventFormat.V1:
                    self.assertEqual(compute_event_id(pdu, rv), event_id)
                checked = check_pdu(pdu, rv)
                self.assertEqual(checked.event.event_id, event_id)
                self.assertTrue(checked.content_hash_ok)
                self.assertTrue(check_content_hash(pdu, rv))
                self.assertTrue(verify_event_signature(pdu, rv, SYNAPSE, key))
                self.assertEqual(checked.signed_bytes, signed_bytes_for_event(pdu, rv))
                sig = pdu["signatures"][SYNAPSE]["ed25519:" + key.version]
                self.assertTrue(verify_signature_bytes(checked.signed_bytes, sig, key))
                self.assertEqual(required_signature_servers(pdu, rv), {SYNAPSE})
                count += 1
        self.assertEqual(count, 83)

    def test_floats_and_big_integers_in_rooms_v1_to_v5(self):
        """Synapse let a client put floats and integers beyond 2**53 into events of
        rooms v1 and v3, which do not enforce canonical JSON: we accept those events with
        matching ids and hashes, and the same PDU would be invalid in a v6+ room."""
        key = synapse_verify_key()
        for name in ("room_v1.json", "room_v3.json"):
            room = load(name)
            rv = spec_version(room["room_version"])
            (rec,) = [r for r in room["events"] if "f" in r["pdu"]["content"]]
            pdu = rec["pdu"]
            self.assertEqual(pdu["content"]["f"], 1.5)
            self.assertEqual(pdu["content"]["big"], 2**60)
            checked = check_pdu(pdu, rv)
            self.assertEqual(checked.event.event_id, rec["event_id"])
            self.assertTrue(checked.content_hash_ok)
            self.assertTrue(verify_event_signature(pdu, rv, SYNAPSE, key))
            strict_rv = rv.derive("strict-test", strict_canonicaljson=True)
            self.assertRaises(InvalidEvent, validate_pdu, pdu, strict_rv)

    def test_tampering_detected(self):
        """Changing a signed field breaks Synapse's signature; changing only the message
        body keeps the signature (it covers the redacted event) but breaks the content
        hash."""
        key = synapse_verify_key()
        for name in ROOM_FILES:
            room = load(name)
            rv = spec_version(room["room_version"])
            message = next(r["pdu"] for r in room["events"] if r["pdu"]["type"] == "m.room.message")
            moved = dict(message, origin_server_ts=message["origin_server_ts"] + 1)
            self.assertFalse(verify_event_signature(moved, rv, SYNAPSE, key))
            edited = dict(message, content=dict(message["content"], body="edited"))
            self.assertTrue(verify_event_signature(edited, rv, SYNAPSE, key))
            self.assertFalse(check_content_hash(edited, rv))
            self.assertFalse(check_pdu(edited, rv).content_hash_ok)

    def test_redacted_events_keep_id_and_signature(self):
        """Each event Synapse redacted, put through our redaction algorithm, keeps its
        event id (its reference hash is unchanged) and Synapse's signature, loses its
        body, and fails the content hash check, as a redacted copy must."""
        key = synapse_verify_key()
        for name in ROOM_FILES:
            room = load(name)
            rv = spec_version(room["room_version"])
            by_id = {r["event_id"]: r["pdu"] for r in room["events"]}
            self.assertEqual(len(room["redacted_event_ids"]), 1)
            for event_id in room["redacted_event_ids"]:
                full = by_id[event_id]
                redacted = redact(full, rv)
                self.assertEqual(redacted["content"], {})
                self.assertEqual(parse_pdu(redacted, rv).event_id, event_id)
                self.assertEqual(compute_reference_hash(redacted, rv), compute_reference_hash(full, rv))
                self.assertTrue(verify_event_signature(redacted, rv, SYNAPSE, key))
                self.assertFalse(check_content_hash(redacted, rv))

    def test_redaction_events_point_at_their_target(self):
        """Synapse's redaction events carry ``redacts`` at top level before v11 and in
        content from v11; ``Event.redacts`` finds it either way."""
        for name in ROOM_FILES:
            room = load(name)
            rv = spec_version(room["room_version"])
            (rec,) = [r for r in room["events"] if r["pdu"]["type"] == "m.room.redaction"]
            event = Event.from_pdu(rec["pdu"], rv)
            self.assertEqual(event.redacts, room["redacted_event_ids"][0])
            if rv.redacts_in_content:
                self.assertIn("redacts", rec["pdu"]["content"])
            else:
                self.assertIn("redacts", rec["pdu"])


class RedactionOracleTests(SynchronousTestCase):
    def test_crafted_redactions_match_synapse(self):
        """For 15 crafted events (every event type with special redaction rules, extra
        top-level keys, third-party invites with and without ``signed``) in each room
        version 1-12, our redacted form and reference hash equal Synapse's."""
        cases = load("redaction_cases.json")
        self.assertEqual(len(cases), 180)
        for case in cases:
            rv = spec_version(case["room_version"])
            ours = redact(case["pdu"], rv)
            ours.pop("signatures", None)
            ours.pop("unsigned", None)
            self.assertEqual(ours, case["redacted"], (case["room_version"], case["name"]))
            self.assertEqual(
                unpadded_base64(compute_reference_hash(case["pdu"], rv)),
                case["reference_hash"],
                (case["room_version"], case["name"]),
            )


class RedactsOracleTests(SynchronousTestCase):
    def test_redaction_target_matches_synapse(self):
        """With ``redacts`` at top level, in content, or both, ``Event.redacts`` names the
        same target as Synapse in every room version: top level before v11, content from
        v11 (a top-level key is then ignored)."""
        cases = load("redacts_cases.json")
        self.assertEqual(len(cases), 36)
        for case in cases:
            rv = spec_version(case["room_version"])
            event = Event.from_pdu(case["pdu"], rv, event_id="$x")
            self.assertEqual(event.redacts, case["synapse_redacts"], (case["room_version"], case["placement"]))
