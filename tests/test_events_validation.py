"""validate_pdu / parse_pdu / check_pdu: every shape rule, positive and negative, per
room version."""

import copy

from canonicaljson import encode_canonical_json
from twisted.trial.unittest import SynchronousTestCase

from fedserver.events.model import Event
from fedserver.events.validation import (
    EventTooLarge,
    InvalidEvent,
    check_membership_content,
    check_pdu,
    is_valid_server_name,
    is_valid_user_id,
    parse_pdu,
    validate_pdu,
)
from fedserver.room_versions import SPEC_ROOM_VERSIONS, V1, V3, V4, V5, V6, V11, V12, EventFormat

STD_ID = "$" + "a+/" * 14 + "A"  # 43 chars, standard base64 alphabet (room v3)
URL_ID = "$" + "a-_" * 14 + "A"  # 43 chars, URL-safe alphabet (v4+)
V12_ROOM = "!" + "R" * 43
SPEC_MAX_PDU_BYTES = 65536  # client-server "Size limits"


def event_ref(rv, n=0):
    """A syntactically valid event reference for rv's format."""
    if rv.event_format == EventFormat.V1:
        return [f"$e{n}:hs", {"sha256": "abc"}]
    if rv.event_format == EventFormat.V2:
        return STD_ID[:-1] + "AB"[n % 2]
    return URL_ID[:-1] + "AB"[n % 2]


def base_pdu(rv, **changes):
    """A valid (unsigned-in-practice) message PDU for rv; hashes/signatures are just
    strings, as validation does not check them."""
    pdu = {
        "type": "m.room.message",
        "sender": "@alice:hs",
        "room_id": V12_ROOM if rv.room_id_from_create_event else "!room:hs",
        "content": {"body": "hello"},
        "depth": 3,
        "origin_server_ts": 1700000000000,
        "prev_events": [event_ref(rv, 0)],
        "auth_events": [event_ref(rv, 1)],
        "hashes": {"sha256": "x"},
        "signatures": {"hs": {"ed25519:a": "sig"}},
        "unsigned": {"age": 1},
    }
    if rv.event_format == EventFormat.V1:
        pdu["event_id"] = "$ev:hs"
    pdu.update(changes)
    return pdu


def without(pdu, key):
    pdu = dict(pdu)
    del pdu[key]
    return pdu


class ValidPduTests(SynchronousTestCase):
    def test_base_pdu_valid_everywhere(self):
        """The base message PDU and a state event are valid in every room version."""
        for rv in SPEC_ROOM_VERSIONS:
            validate_pdu(base_pdu(rv), rv)
            validate_pdu(base_pdu(rv, type="m.room.topic", state_key=""), rv)

    def test_optional_keys(self):
        """``unsigned``, ``state_key`` and ``redacts`` may be absent; ``origin`` and
        unknown top-level keys are tolerated."""
        for rv in SPEC_ROOM_VERSIONS:
            validate_pdu(without(base_pdu(rv), "unsigned"), rv)
            validate_pdu(base_pdu(rv, origin="hs", future_key={"x": 1}), rv)

    def test_parse_returns_event(self):
        """parse_pdu gives an Event with the PDU's fields, its id read (v1-2) or computed."""
        for rv in SPEC_ROOM_VERSIONS:
            event = parse_pdu(base_pdu(rv), rv)
            self.assertIsInstance(event, Event)
            self.assertEqual(event.sender, "@alice:hs")
            self.assertEqual(event.depth, 3)
            self.assertEqual(len(event.prev_event_ids), 1)
            if rv.event_format == EventFormat.V1:
                self.assertEqual(event.event_id, "$ev:hs")
            else:
                self.assertEqual(len(event.event_id), 44)

    def test_invalid_event_is_value_error_with_reason(self):
        """InvalidEvent is a ValueError and names the problem."""
        with self.assertRaises(ValueError) as cm:
            validate_pdu(without(base_pdu(V11), "sender"), V11)
        self.assertIsInstance(cm.exception, InvalidEvent)
        self.assertIn("sender", cm.exception.reason)


class RequiredKeysAndTypesTests(SynchronousTestCase):
    def assertInvalid(self, pdu, rv, msg=None):
        self.assertRaises(InvalidEvent, validate_pdu, pdu, rv)
        self.assertRaises(InvalidEvent, parse_pdu, pdu, rv)
        self.assertRaises(InvalidEvent, check_pdu, pdu, rv)

    def test_not_an_object(self):
        """A PDU that is not a JSON object is invalid."""
        for value in ([], "x", None, 3):
            self.assertInvalid(value, V11)

    def test_missing_required_keys(self):
        """Each key the PDU schemas require, when missing, makes the event invalid."""
        required = ["type", "sender", "room_id", "content", "depth", "origin_server_ts",
                    "prev_events", "auth_events", "hashes", "signatures"]
        for rv in SPEC_ROOM_VERSIONS:
            keys = required + (["event_id"] if rv.event_format == EventFormat.V1 else [])
            for key in keys:
                self.assertInvalid(without(base_pdu(rv), key), rv, key)

    def test_wrong_types(self):
        """Keys with the wrong JSON type make the event invalid (booleans and floats are
        not integers)."""
        bad = [
            ("type", 1), ("type", None), ("sender", 5), ("content", []), ("content", "x"),
            ("depth", "3"), ("depth", True), ("depth", 3.0), ("origin_server_ts", "1"),
            ("origin_server_ts", False), ("origin_server_ts", 1.5), ("prev_events", {}),
            ("auth_events", "x"), ("hashes", []), ("hashes", {}), ("hashes", {"sha256": 1}),
            ("signatures", []), ("signatures", {"hs": "sig"}), ("signatures", {"hs": {"ed25519:a": 1}}),
            ("state_key", 1), ("state_key", None), ("unsigned", []), ("room_id", 1),
        ]
        for rv in SPEC_ROOM_VERSIONS:
            for key, value in bad:
                self.assertInvalid(base_pdu(rv, **{key: value}), rv, (rv.identifier, key, value))

    def test_redacts_type(self):
        """PDU schemas v1-v10: a top-level ``redacts`` is a string.  From v11 it moved
        into content; a top-level one is not part of the format and, like any unknown
        key, does not make the event invalid."""
        for rv in SPEC_ROOM_VERSIONS:
            validate_pdu(base_pdu(rv, type="m.room.redaction", redacts="$x:hs"), rv)
            for value in (1, None, ["$x:hs"], {"a": 1}):
                pdu = base_pdu(rv, type="m.room.redaction", redacts=value)
                if rv.redacts_in_content:
                    validate_pdu(pdu, rv)
                else:
                    self.assertInvalid(pdu, rv, (rv.identifier, value))

    def test_empty_signatures_allowed_by_shape(self):
        """An empty ``signatures`` object is well-formed (the signature check fails it
        later, not validation)."""
        validate_pdu(base_pdu(V11, signatures={}), V11)


class RangeTests(SynchronousTestCase):
    def test_depth_range(self):
        """depth must be 0 <= depth <= 2**63-1, and from v6 (canonical JSON) <= 2**53-1."""
        for rv in SPEC_ROOM_VERSIONS:
            validate_pdu(base_pdu(rv, depth=0), rv)
            validate_pdu(base_pdu(rv, depth=2**53 - 1), rv)
            self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, depth=-1), rv)
            self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, depth=2**63), rv)
            if rv.strict_canonicaljson:
                self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, depth=2**53), rv)
            else:
                validate_pdu(base_pdu(rv, depth=2**63 - 1), rv)

    def test_timestamp_range(self):
        """origin_server_ts is an int64; from v6 within canonical JSON's range."""
        for rv in SPEC_ROOM_VERSIONS:
            self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, origin_server_ts=2**63), rv)
            if rv.strict_canonicaljson:
                self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, origin_server_ts=2**53), rv)
            else:
                validate_pdu(base_pdu(rv, origin_server_ts=2**53), rv)


class CanonicalValueTests(SynchronousTestCase):
    def test_floats_and_big_ints(self):
        """Floats and integers outside [-(2**53)+1, 2**53-1], anywhere in the event, are
        refused from room v6 and accepted in rooms v1-5 (which MUST NOT enforce canonical
        JSON strictly)."""
        samples = [
            {"f": 1.5}, {"f": 1.0}, {"n": {"deep": [1, 2, {"x": 0.25}]}}, {"big": 2**53},
            {"small": -(2**53)}, {"huge": 10**30},
        ]
        for rv in SPEC_ROOM_VERSIONS:
            self.assertEqual(rv.strict_canonicaljson, rv not in (V1, SPEC_ROOM_VERSIONS[1], V3, V4, V5))
            for content in samples:
                pdu = base_pdu(rv, content=content)
                if rv.strict_canonicaljson:
                    self.assertRaises(InvalidEvent, validate_pdu, pdu, rv)
                else:
                    validate_pdu(pdu, rv)
            # A float in unsigned counts too: the whole PDU is canonical JSON.
            if rv.strict_canonicaljson:
                self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, unsigned={"age": 1.5}), rv)

    def test_safe_integer_bounds_accepted(self):
        """The extreme safe integers 2**53-1 and -(2**53)+1 are valid everywhere."""
        for rv in SPEC_ROOM_VERSIONS:
            validate_pdu(base_pdu(rv, content={"a": 2**53 - 1, "b": -(2**53) + 1}), rv)

    def test_never_json(self):
        """NaN, infinities, non-string keys, non-JSON types and deep nesting are refused
        in every room version, without crashing."""
        nested = {}
        cur = nested
        for _ in range(100):
            cur["a"] = {}
            cur = cur["a"]
        for rv in SPEC_ROOM_VERSIONS:
            for content in (
                {"x": float("nan")}, {"x": float("inf")}, {"x": float("-inf")}, {1: "x"},
                {"x": {1, 2}}, {"x": b"bytes"}, {"x": object()}, nested,
            ):
                self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, content=content), rv)

    def test_lone_surrogates(self):
        """Strings that are not valid UTF-8 (lone surrogates) give InvalidEvent, not a
        crash, wherever they are."""
        for rv in (V1, V11):
            self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, content={"b": "\ud800"}), rv)
            self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, sender="@\ud800:hs"), rv)
            self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, state_key="\udfff" * 70), rv)
            self.assertRaises(InvalidEvent, check_pdu, base_pdu(rv, content={"\ud800": 1}), rv)


class SizeTests(SynchronousTestCase):
    def _pad_to(self, pdu, size, where="content"):
        """A copy of pdu whose canonical JSON is exactly ``size`` bytes, padded in
        ``where`` (for signatures: a string under the server "other")."""
        pdu = copy.deepcopy(pdu)
        target = pdu["signatures"]["other"] if where == "signatures" else pdu[where]
        target["pad"] = ""
        missing = size - len(encode_canonical_json(pdu))
        target["pad"] = "x" * missing
        self.assertEqual(len(encode_canonical_json(pdu)), size)
        return pdu

    def test_total_size_limit(self):
        """A PDU of exactly 65536 canonical bytes is valid and one byte more is not,
        whether the excess is in content, unsigned or signatures."""
        for rv in SPEC_ROOM_VERSIONS:
            base = base_pdu(rv, signatures={"hs": {"ed25519:a": "sig"}, "other": {}})
            for where in ("content", "unsigned", "signatures"):
                validate_pdu(self._pad_to(base, SPEC_MAX_PDU_BYTES, where), rv)
                self.assertRaises(
                    EventTooLarge, validate_pdu, self._pad_to(base, SPEC_MAX_PDU_BYTES + 1, where), rv
                )

    def test_size_counts_utf8_bytes(self):
        """The limit is in UTF-8 bytes of the canonical form, not characters."""
        pdu = base_pdu(V11, content={"pad": "€" * 22000})  # 66000 bytes, 22000 characters
        self.assertRaises(EventTooLarge, validate_pdu, pdu, V11)

    def test_field_limits(self):
        """type, state_key, sender, room_id and (v1-2) event_id may be 255 bytes, not 256,
        counted in UTF-8 bytes (EventTooLarge)."""
        for rv in SPEC_ROOM_VERSIONS:
            validate_pdu(base_pdu(rv, type="t" * 255), rv)
            self.assertRaises(EventTooLarge, validate_pdu, base_pdu(rv, type="t" * 256), rv)
            self.assertRaises(EventTooLarge, validate_pdu, base_pdu(rv, type="é" * 128), rv)
            validate_pdu(base_pdu(rv, state_key="k" * 255), rv)
            validate_pdu(base_pdu(rv, state_key="é" * 127), rv)
            self.assertRaises(EventTooLarge, validate_pdu, base_pdu(rv, state_key="k" * 256), rv)
            self.assertRaises(EventTooLarge, validate_pdu, base_pdu(rv, state_key="é" * 128), rv)
            sender = "@" + "u" * 251 + ":hs"  # 255 bytes
            validate_pdu(base_pdu(rv, sender=sender), rv)
            self.assertRaises(EventTooLarge, validate_pdu, base_pdu(rv, sender="@u" + sender[1:]), rv)
            self.assertRaises(EventTooLarge, validate_pdu, base_pdu(rv, sender="@" + "ü" * 126 + ":hs"), rv)
            if not rv.room_id_from_create_event:
                validate_pdu(base_pdu(rv, room_id="!" + "r" * 251 + ":hs"), rv)
                self.assertRaises(EventTooLarge, validate_pdu, base_pdu(rv, room_id="!" + "r" * 252 + ":hs"), rv)
            if rv.event_format == EventFormat.V1:
                validate_pdu(base_pdu(rv, event_id="$" + "e" * 251 + ":hs"), rv)
                self.assertRaises(EventTooLarge, validate_pdu, base_pdu(rv, event_id="$" + "e" * 252 + ":hs"), rv)


class EdgeTests(SynchronousTestCase):
    def test_edge_count_limits(self):
        """Up to 20 prev_events and 10 auth_events; one more is invalid."""
        for rv in SPEC_ROOM_VERSIONS:
            validate_pdu(base_pdu(rv, prev_events=[event_ref(rv, i) for i in range(20)]), rv)
            self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, prev_events=[event_ref(rv, i) for i in range(21)]), rv)
            validate_pdu(base_pdu(rv, auth_events=[event_ref(rv, i) for i in range(10)]), rv)
            self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, auth_events=[event_ref(rv, i) for i in range(11)]), rv)
            validate_pdu(base_pdu(rv, prev_events=[], auth_events=[]), rv)

    def test_v1_edge_shapes(self):
        """Rooms v1-2: edges are [event_id, hash object] pairs; the hash object may be
        empty (Synapse sends {}), but a non-string sha256, a non-object, a bare id, a
        triple or an id without a server name is invalid."""
        for rv in SPEC_ROOM_VERSIONS[:2]:
            validate_pdu(base_pdu(rv, prev_events=[["$a:hs", {}]]), rv)
            for edge in (["$a:hs"], "$a:hs", ["$a:hs", {}, 1], ["$a:hs", "h"],
                         ["$a:hs", {"sha256": 1}], ["$a", {}], ["a:hs", {}], [1, {}], URL_ID):
                self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, prev_events=[edge]), rv)
                self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, auth_events=[edge]), rv)

    def test_hash_id_edges(self):
        """Room v3 edges are '$' + 43 standard base64 characters, v4+ '$' + 43 URL-safe
        ones; other shapes (v1 pairs, wrong alphabet or length, no sigil) are invalid."""
        for rv in SPEC_ROOM_VERSIONS[2:]:
            good = STD_ID if rv.event_format == EventFormat.V2 else URL_ID
            other_alphabet = URL_ID if rv.event_format == EventFormat.V2 else STD_ID
            validate_pdu(base_pdu(rv, prev_events=[good]), rv)
            for edge in (other_alphabet, good[:-1], good + "A", good[1:] + "A", "$e:hs",
                         ["$e:hs", {}], 5, None):
                self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, prev_events=[edge]), rv)
                self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, auth_events=[edge]), rv)


class IdentifierTests(SynchronousTestCase):
    def test_user_ids(self):
        """Sender user ids follow the appendix grammar, with historical localparts (any
        code point but ':' and NUL, even empty) allowed."""
        good = ["@alice:hs", "@:hs", "@Ünïcode user!:example.org", "@a:hs:8448",
                "@a:1.2.3.4", "@a:1.2.3.4:5", "@a:[::1]", "@a:[1234:5678::abcd]:5678",
                "@a=b/c+d:matrix.org"]
        bad = ["alice:hs", "@alice", "@alice:", "@a:bad_domain", "@a:hs:123456", "@a:hs:",
               "@a\x00b:hs", "@\ud800:hs", "@a:h s", "@a:[::1", "#a:hs", "", None, 5]
        for user_id in good:
            self.assertTrue(is_valid_user_id(user_id), user_id)
            validate_pdu(base_pdu(V11, sender=user_id), V11)
        for user_id in bad:
            self.assertFalse(is_valid_user_id(user_id), user_id)
            self.assertRaises(InvalidEvent, validate_pdu, base_pdu(V11, sender=user_id), V11)

    def test_server_names(self):
        """Server names: DNS names, IPv4 and bracketed IPv6 literals, optional 1-5 digit
        port."""
        for name in ("matrix.org", "matrix.org:8888", "1.2.3.4", "[1234:5678::abcd]:5678", "localhost"):
            self.assertTrue(is_valid_server_name(name), name)
        for name in ("", "a b", "under_score.org", "a:", "a:123456", "[zz]", "a/b", 1):
            self.assertFalse(is_valid_server_name(name), name)

    def test_room_ids_before_v12(self):
        """Before v12 a room id is '!opaque:server_name'."""
        for rv in SPEC_ROOM_VERSIONS[:-1]:
            validate_pdu(base_pdu(rv, room_id="!any thing:hs"), rv)
            for room_id in ("room:hs", "!room", "!room:", "!r\x00:hs", V12_ROOM, "$r:hs"):
                self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, room_id=room_id), rv)

    def test_room_ids_v12(self):
        """In v12 a room id is '!' + 43 URL-safe base64 characters; the create event
        carries none, and one with a room id is invalid."""
        validate_pdu(base_pdu(V12, room_id="!" + "a-_" * 14 + "Z"), V12)
        for room_id in ("!room:hs", "!" + "R" * 42, "!" + "R" * 44, "!" + "R+" * 21 + "R", "$" + "R" * 43):
            self.assertRaises(InvalidEvent, validate_pdu, base_pdu(V12, room_id=room_id), V12)
        create = without(base_pdu(V12, type="m.room.create", state_key="", prev_events=[], auth_events=[]), "room_id")
        event = parse_pdu(create, V12)
        self.assertEqual(event.room_id, "!" + event.event_id[1:])
        self.assertRaises(InvalidEvent, validate_pdu, dict(create, room_id=V12_ROOM), V12)
        # Before v12 a create event needs its room_id like any other.
        v11_create = without(base_pdu(V11, type="m.room.create", state_key=""), "room_id")
        self.assertRaises(InvalidEvent, validate_pdu, v11_create, V11)

    def test_event_id_field(self):
        """Rooms v1-2 carry '$opaque:server_name' in event_id; later versions must not
        carry an event_id at all (it would change the reference hash)."""
        for rv in SPEC_ROOM_VERSIONS:
            if rv.event_format == EventFormat.V1:
                for event_id in ("ev:hs", "$ev", "$ev:", 5, URL_ID):
                    self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, event_id=event_id), rv)
            else:
                self.assertRaises(InvalidEvent, validate_pdu, base_pdu(rv, event_id=URL_ID), rv)


class CheckPduTests(SynchronousTestCase):
    def test_content_hash_verdict(self):
        """check_pdu reports a wrong or undecodable content hash as not OK (the event is
        still valid: it will be processed redacted)."""
        for rv in (V1, V6, V12):
            self.assertFalse(check_pdu(base_pdu(rv, hashes={"sha256": "AAAA"}), rv).content_hash_ok)
            self.assertFalse(check_pdu(base_pdu(rv, hashes={"sha256": "not base64!"}), rv).content_hash_ok)

    def test_signed_bytes_exclude_unsigned_and_signatures(self):
        """The signed bytes cover the redacted event: no unsigned, no signatures, no
        message body."""
        checked = check_pdu(base_pdu(V11, content={"body": "secret-body"}), V11)
        self.assertNotIn(b"secret-body", checked.signed_bytes)
        self.assertNotIn(b"signatures", checked.signed_bytes)
        self.assertNotIn(b"unsigned", checked.signed_bytes)
        self.assertIn(b'"hashes"', checked.signed_bytes)


def member_pdu(rv, content=None, **changes):
    """A valid membership event for rv (join of @alice:hs)."""
    pdu = base_pdu(rv, type="m.room.member", state_key="@alice:hs",
                   content={"membership": "join"} if content is None else content)
    pdu.update(changes)
    return pdu


class MembershipContentTests(SynchronousTestCase):
    """check_membership_content: what the auth rules read of a membership event, checked
    where one event is given to us directly (send_join, send_leave, send_knock, invite)."""

    def assertBad(self, pdu, rv, msg=None):
        validate_pdu(pdu, rv)  # well-formed for the room version's event format...
        self.assertRaises(InvalidEvent, check_membership_content, pdu, rv)  # ...but not this

    def test_valid_memberships(self):
        """Each membership, with the optional keys well-formed, passes in every version."""
        tpi = {"display_name": "x", "signed": {"mxid": "@bob:hs", "token": "t",
                                                "signatures": {"id.hs": {"ed25519:0": "sig"}}}}
        for rv in SPEC_ROOM_VERSIONS:
            for membership in ("join", "invite", "leave", "ban", "knock"):
                check_membership_content(member_pdu(rv, {"membership": membership, "reason": "r"}), rv)
            check_membership_content(member_pdu(rv, {"membership": "join",
                                                     "join_authorised_via_users_server": "@mod:hs"}), rv)
            check_membership_content(member_pdu(rv, {"membership": "invite", "third_party_invite": tpi}), rv)

    def test_state_key_is_a_user_id(self):
        """The state_key names the target user: it must be a user id."""
        for rv in SPEC_ROOM_VERSIONS:
            for sk in ("", "alice", "alice:hs", "@alice", "@a:bad domain", "@a:b:c"):
                self.assertBad(member_pdu(rv, state_key=sk), rv, (rv.identifier, sk))
            self.assertRaises(InvalidEvent, check_membership_content,
                              without(member_pdu(rv), "state_key"), rv)

    def test_membership_is_a_string(self):
        """content.membership must be present and a string."""
        for rv in SPEC_ROOM_VERSIONS:
            for content in ({}, {"membership": 5}, {"membership": None}, {"membership": ["join"]},
                            {"membership": True}):
                self.assertBad(member_pdu(rv, content), rv, (rv.identifier, content))

    def test_join_authorised_via_users_server(self):
        """From v8 (restricted joins) join_authorised_via_users_server must be a user id,
        whatever the membership; before v8 the key means nothing to the rules."""
        for rv in SPEC_ROOM_VERSIONS:
            for value in (5, None, "mod", "mod:hs", "@mod", ["@mod:hs"], "#room:hs"):
                for membership in ("join", "leave", "invite"):
                    pdu = member_pdu(rv, {"membership": membership,
                                          "join_authorised_via_users_server": value})
                    if rv.restricted_joins:
                        self.assertBad(pdu, rv, (rv.identifier, value))
                    else:
                        check_membership_content(pdu, rv)

    def test_third_party_invite(self):
        """third_party_invite must be an object whose signed object has a user id mxid,
        a string token and signatures mapping servers to key ids to strings (the
        m.room.member schema), in every version."""
        good_signed = {"mxid": "@bob:hs", "token": "t", "signatures": {"id.hs": {"ed25519:0": "sig"}}}
        bad = [
            "x", 5, [], {"display_name": "x"}, {"signed": "s"}, {"signed": []},
            {"signed": {**good_signed, "mxid": 5}}, {"signed": {**good_signed, "mxid": "bob"}},
            {"signed": {k: v for k, v in good_signed.items() if k != "mxid"}},
            {"signed": {**good_signed, "token": 5}},
            {"signed": {k: v for k, v in good_signed.items() if k != "token"}},
            {"signed": {k: v for k, v in good_signed.items() if k != "signatures"}},
            {"signed": {**good_signed, "signatures": []}},
            {"signed": {**good_signed, "signatures": {"id.hs": "sig"}}},
            {"signed": {**good_signed, "signatures": {"id.hs": {"ed25519:0": 5}}}},
        ]
        for rv in SPEC_ROOM_VERSIONS:
            for tpi in bad:
                self.assertBad(member_pdu(rv, {"membership": "invite", "third_party_invite": tpi}), rv,
                               (rv.identifier, tpi))
