"""Record Synapse's verdicts on crafted PDUs and on events fedserver builds (test oracle).

Not a test and not imported by one. Run it from the repository root with the Synapse venv
(it imports Synapse, and fedserver from the working tree)::

    /tmp/synpeer/venv/bin/python tests/data/synapse_events/record_oracle.py

It writes next to itself:

- ``redaction_cases.json``: for every crafted PDU and room version 1-12, the redacted form
  Synapse computes (without ``signatures`` / ``unsigned``) and its reference hash
  (unpadded standard base64);
- ``redacts_cases.json``: which event Synapse takes a redaction to target when ``redacts``
  is at top level, in content, or both, in every room version;
- ``built_by_fedserver.json``: events built by ``fedserver.events.builder`` with the spec's
  test key, and the event id, content hash verdict and signature verdict Synapse gives them.
"""

import base64
import copy
import json
import os
import sys

import signedjson.key
import signedjson.sign

from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import check_event_content_hash, compute_event_reference_hash
from synapse.events import make_event_from_dict
from synapse.events.utils import prune_event

VERSIONS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"]

BASE = {
    "room_id": "!r:example.org",
    "sender": "@u:example.org",
    "origin": "example.org",
    "origin_server_ts": 1000,
    "depth": 5,
    "prev_events": [],
    "auth_events": [],
    "hashes": {"sha256": "AAAA"},
    "signatures": {"example.org": {"ed25519:1": "sig"}},
    "unsigned": {"age_ts": 1000, "other": 1},
    "membership": "join",
    "prev_state": [],
    "extra_top_level": {"x": 1},
}


def case(name, type_, content, state_key=None, **top):
    pdu = copy.deepcopy(BASE)
    pdu["type"] = type_
    pdu["content"] = content
    if state_key is not None:
        pdu["state_key"] = state_key
    pdu.update(top)
    return name, pdu


CASES = [
    case("message", "m.room.message", {"body": "hi", "msgtype": "m.text"}),
    case("member_basic", "m.room.member",
         {"membership": "join", "displayname": "U", "avatar_url": "mxc://a/b"},
         state_key="@u:example.org"),
    case("member_authorising", "m.room.member",
         {"membership": "join", "join_authorised_via_users_server": "@a:example.org",
          "displayname": "U"}, state_key="@u:example.org"),
    case("member_3pid_signed", "m.room.member",
         {"membership": "invite", "third_party_invite": {
             "display_name": "x", "signed": {"mxid": "@v:example.org", "token": "t",
                                             "signatures": {"id": {"ed25519:0": "s"}}}}},
         state_key="@v:example.org"),
    case("member_3pid_unsigned", "m.room.member",
         {"membership": "invite", "third_party_invite": {"display_name": "x"}},
         state_key="@v:example.org"),
    case("member_3pid_not_object", "m.room.member",
         {"membership": "invite", "third_party_invite": "nope"}, state_key="@v:example.org"),
    case("create_v1_style", "m.room.create",
         {"creator": "@u:example.org", "room_version": "1", "m.federate": True,
          "predecessor": {"room_id": "!old:example.org"}}, state_key=""),
    case("join_rules", "m.room.join_rules",
         {"join_rule": "restricted", "allow": [{"type": "m.room_membership",
                                                 "room_id": "!s:example.org"}], "x": 1},
         state_key=""),
    case("power_levels", "m.room.power_levels",
         {"ban": 50, "events": {"m.room.name": 100}, "events_default": 0, "invite": 0,
          "kick": 50, "redact": 50, "state_default": 50, "users": {"@u:example.org": 100},
          "users_default": 0, "notifications": {"room": 50}, "historical": 100},
         state_key=""),
    case("aliases", "m.room.aliases", {"aliases": ["#a:example.org"], "x": 1},
         state_key="example.org"),
    case("history_visibility", "m.room.history_visibility",
         {"history_visibility": "shared", "x": 1}, state_key=""),
    case("redaction_both", "m.room.redaction", {"redacts": "$c:example.org", "reason": "r"},
         redacts="$t:example.org"),
    case("topic", "m.room.topic", {"topic": "t"}, state_key=""),
    case("encryption", "m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"},
         state_key=""),
    case("custom_state", "org.example.state", {"a": [1, 2, {"b": None}]}, state_key="k"),
]


HERE = os.path.dirname(os.path.abspath(__file__))
SPEC_TEST_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"


def record_redactions():
    out = []
    for v in VERSIONS:
        rv = KNOWN_ROOM_VERSIONS[v]
        for name, pdu in CASES:
            pdu = copy.deepcopy(pdu)
            if rv.event_format == 1:
                pdu["event_id"] = "$" + name + ":example.org"
            if v == "12":
                # v12 room ids are hashes; the create event has none.
                if pdu["type"] == "m.room.create":
                    del pdu["room_id"]
                else:
                    pdu["room_id"] = "!" + "A" * 43
            ev = make_event_from_dict(copy.deepcopy(pdu), rv)
            pruned = prune_event(ev).get_pdu_json()
            pruned.pop("signatures", None)
            pruned.pop("unsigned", None)
            _, digest = compute_event_reference_hash(ev)
            out.append({
                "room_version": v,
                "name": name,
                "pdu": pdu,
                "redacted": pruned,
                "reference_hash": base64.b64encode(digest).decode().rstrip("="),
            })
    _write("redaction_cases.json", out)


def record_redacts():
    out = []
    for v in VERSIONS:
        rv = KNOWN_ROOM_VERSIONS[v]
        for placement in ("top", "content", "both"):
            _, pdu = case("redaction", "m.room.redaction", {"reason": "r"})
            if placement in ("top", "both"):
                pdu["redacts"] = "$top:example.org"
            if placement in ("content", "both"):
                pdu["content"]["redacts"] = "$content:example.org"
            if rv.event_format == 1:
                pdu["event_id"] = "$redaction:example.org"
            if v == "12":
                pdu["room_id"] = "!" + "A" * 43
            ev = make_event_from_dict(copy.deepcopy(pdu), rv)
            out.append({"room_version": v, "placement": placement, "pdu": pdu, "synapse_redacts": ev.redacts})
    _write("redacts_cases.json", out)


def record_built_events():
    sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..", "..")))
    from tests.test_events_builder import build_sample_events

    signing_key = signedjson.key.decode_signing_key_base64("ed25519", "1", SPEC_TEST_SEED)
    verify_key = signedjson.key.get_verify_key(signing_key)
    out = []
    for rv, event in build_sample_events(signing_key):
        srv = KNOWN_ROOM_VERSIONS[rv.identifier]
        ev = make_event_from_dict(copy.deepcopy(event.pdu), srv)
        try:
            signedjson.sign.verify_signed_json(prune_event(ev).get_pdu_json(), "domain", verify_key)
            signature_ok = True
        except signedjson.sign.SignatureVerifyException:
            signature_ok = False
        out.append({
            "room_version": rv.identifier,
            "pdu": event.pdu,
            "synapse_event_id": ev.event_id,
            "synapse_content_hash_ok": check_event_content_hash(ev),
            "synapse_signature_ok": signature_ok,
        })
    _write("built_by_fedserver.json", out)


def _write(name, data):
    path = os.path.join(HERE, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    print(f"{len(data)} entries -> {path}")


if __name__ == "__main__":
    record_redactions()
    record_redacts()
    record_built_events()
