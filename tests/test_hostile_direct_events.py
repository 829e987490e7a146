"""Events given to us directly (send_join, send_leave, send_knock, invite v1 and v2)
against a whole running fedserver over real TLS: an event malformed for its room version
is answered 400 M_BAD_JSON (413 M_TOO_LARGE for the size limits) and never stored; 403
M_FORBIDDEN only for authorization failures (the auth rules, a sender of another
server)."""

from __future__ import annotations

import copy
from typing import Any, Callable
from urllib.parse import quote

from fedserver.events.canonical import CanonicalJSONError
from fedserver.events.hashing import add_content_hash, compute_event_id
from fedserver.events.signing import sign_event
from fedserver.room_versions import V1, V10, RoomVersion
from tests.test_federation_support import FED
from tests.test_hostile_federation import ALICE, RunningServerCase

V2_FED = "/_matrix/federation/v2"
GOOD_ID = "$" + "A" * 43


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation setting ``a.b.c`` of a PDU to ``value``."""
    keys = path.split(".")

    def mutate(pdu: dict) -> None:
        target = pdu
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return mutate


def _drop(key: str) -> Callable[[dict], None]:
    return lambda pdu: pdu.pop(key, None)


def _long_sender(pdu: dict) -> None:
    sender = pdu["sender"]
    long = "@" + "u" * (256 - len(sender.split(":", 1)[1]) - 2) + ":" + sender.split(":", 1)[1]
    if pdu.get("state_key") == sender:
        pdu["state_key"] = long
    pdu["sender"] = long


#: Shapes that no room version 10 event may have (PDU schema, identifier grammars,
#: canonical JSON), and parts of a membership event's content the auth rules read with
#: the wrong type.  Each is applied to a good event, which is then hashed and signed
#: again where that is possible, so that only the shape is wrong.
MALFORMED_V10: list[tuple[str, Callable[[dict], None]]] = [
    ("depth is a string", _set("depth", "5")),
    ("depth beyond 2**53-1", _set("depth", 2**53)),
    ("origin_server_ts is a float", _set("origin_server_ts", 1.5)),
    ("no hashes", _drop("hashes")),
    ("sha256 is not a string", _set("hashes", {"sha256": 5})),
    ("signatures of a server is a string", _set("signatures", {"peer": "sig"})),
    ("an event_id field (v3+ ids are hashes)", _set("event_id", GOOD_ID)),
    ("prev_events holds a v1 pair", _set("prev_events", [["$e:peer.test", {"sha256": "x"}]])),
    ("auth_events holds a standard-base64 id", _set("auth_events", ["$" + "a+/" * 14 + "A"])),
    ("21 prev_events", _set("prev_events", [GOOD_ID[:-2] + f"{i:02d}" for i in range(21)])),
    ("no auth_events", _drop("auth_events")),
    ("unsigned is a list", _set("unsigned", [])),
    ("a float in content", _set("content.weight", 0.5)),
    ("an integer beyond 2**53-1 in content", _set("content.big", 2**53)),
    ("a sender of 256 bytes", lambda pdu: _long_sender(pdu)),
    ("an event over 65536 bytes", _set("content.displayname", "x" * 70_000)),
    ("content is a list", _set("content", [])),
    ("membership is not a string", _set("content.membership", ["join"])),
    ("join_authorised_via_users_server is not a user id", _set("content.join_authorised_via_users_server", "mod")),
    ("join_authorised_via_users_server is a number", _set("content.join_authorised_via_users_server", 5)),
]


def resign(pdu: dict, rv: RoomVersion, server: str, key: Any) -> dict:
    """Hash and sign ``pdu`` again as ``server`` (as far as its shape allows)."""
    pdu["signatures"] = {}
    try:
        add_content_hash(pdu, strict=rv.strict_canonicaljson)
        sign_event(pdu, rv, server, key)
    except (CanonicalJSONError, ValueError, TypeError, KeyError, AttributeError):
        pdu["signatures"] = {server: {"ed25519:p1": "c2ln"}}
    return pdu


def event_id_of(pdu: dict, rv: RoomVersion) -> str:
    try:
        return compute_event_id(pdu, rv)
    except Exception:
        return GOOD_ID


class DirectEventShapeTests(RunningServerCase):
    """Malformed events on the direct endpoints: 400, nothing stored; authorization
    failures: 403."""

    async def make_room(self):
        await super().make_room()
        # A knock room of ours (v10), for send_knock.
        creator = self.service.creator
        create, _ = await creator.create_room_event(V10, sender=ALICE, content={"creator": ALICE, "room_version": "10"})
        self.knock_room = create.room_id
        for type_, content, key in (
            ("m.room.member", {"membership": "join"}, ALICE),
            ("m.room.power_levels", {"users": {ALICE: 100}}, ""),
            ("m.room.join_rules", {"join_rule": "knock"}, ""),
        ):
            await creator.send(self.knock_room, V10, type=type_, sender=ALICE, content=content, state_key=key)

    def user(self, name: str) -> str:
        return f"@{name}:{self.peer.name}"

    async def template(self, kind: str, room: str, user: str) -> dict:
        query = "?ver=10" if kind in ("make_join", "make_knock") else ""
        code, body, raw = await self.request("GET", FED + f"/{kind}/{quote(room, safe='')}/{quote(user, safe='')}{query}")
        self.assertEqual(code, 200, raw)
        return body["event"]

    def finish(self, template: dict, mutate: Callable[[dict], None] | None = None) -> dict:
        """The peer's event from a template: its fields, our timestamp, hashed, signed,
        then (optionally) mutated and hashed and signed again."""
        pdu = {k: copy.deepcopy(v) for k, v in template.items() if k not in ("origin", "hashes", "signatures", "unsigned")}
        resign(pdu, V10, self.peer.name, self.peer.key)
        if mutate is not None:
            mutate(pdu)
            resign(pdu, V10, self.peer.name, self.peer.key)
        return pdu

    async def invitee(self) -> str:
        """A user of ours who may be invited."""
        user = "@bob:" + US_NAME
        if await self.service.store.accounts.get_user(user) is None:
            await self.service.store.accounts.create_user(user, None, displayname="bob")
        return user

    async def put(self, path: str, body: Any):
        return await self.request("PUT", path, body)

    async def assertMalformed(self, path_of: Callable[[dict], str], good: dict, body_of=lambda p: p):
        """Every mutation of MALFORMED_V10 applied to ``good`` is answered 400 M_BAD_JSON
        (413 M_TOO_LARGE for a field over its size limit) and nothing is stored."""
        for name, mutate in MALFORMED_V10:
            pdu = copy.deepcopy(good)
            mutate(pdu)
            resign(pdu, V10, self.peer.name, self.peer.key)
            mutate(pdu)  # again, for what signing rewrites (hashes, signatures)
            code, body, raw = await self.put(path_of(pdu), body_of(pdu))
            expected = (413, "M_TOO_LARGE") if "bytes" in name else (400, "M_BAD_JSON")
            if name.startswith("a sender"):
                self.assertEqual(len(pdu["sender"].encode()), 256)
            errcode = body.get("errcode") if isinstance(body, dict) else None
            self.assertEqual((code, errcode), expected, f"{name}: {raw[:300]!r}")
            eid = event_id_of(pdu, V10)
            self.assertEqual(await self.service.store.have_events([eid]), set(), name)

    def path(self, endpoint: str, room: str, version: str = "v2") -> Callable[[dict], str]:
        base = V2_FED if version == "v2" else FED
        return lambda pdu: f"{base}/{endpoint}/{quote(room, safe='')}/{quote(event_id_of(pdu, V10), safe='')}"

    async def test_send_join_malformed_is_400(self):
        """send_join (v1 and v2): each malformed join is 400 M_BAD_JSON and not stored;
        the well-formed one is then accepted (200)."""
        good = self.finish(await self.template("make_join", self.room, self.user("joiner")))
        for version in ("v1", "v2"):
            await self.assertMalformed(self.path("send_join", self.room, version), good)
        code, _, raw = await self.put(self.path("send_join", self.room)(good), good)
        self.assertEqual(code, 200, raw)

    async def test_send_leave_malformed_is_400(self):
        """send_leave (v1 and v2): each malformed leave of a joined user is 400
        M_BAD_JSON; the well-formed one is accepted."""
        good = self.finish(await self.template("make_leave", self.room, self.user("u")))
        for version in ("v1", "v2"):
            await self.assertMalformed(self.path("send_leave", self.room, version), good)
        code, _, raw = await self.put(self.path("send_leave", self.room)(good), good)
        self.assertEqual(code, 200, raw)

    async def test_send_knock_malformed_is_400(self):
        """send_knock: each malformed knock is 400 M_BAD_JSON; the well-formed one is
        accepted."""
        good = self.finish(await self.template("make_knock", self.knock_room, self.user("knocker")))
        await self.assertMalformed(self.path("send_knock", self.knock_room, "v1"), good)
        code, _, raw = await self.put(self.path("send_knock", self.knock_room, "v1")(good), good)
        self.assertEqual(code, 200, raw)

    def invite_pdu(self, content: dict | None = None, target: str = "@bob:" + "us.test:8448") -> dict:
        state = self.msg_fields
        template = {
            "room_id": self.room, "type": "m.room.member", "sender": self.user("u"), "state_key": target,
            "content": content or {"membership": "invite"}, "depth": 7, "origin_server_ts": 1_700_000_000_000,
            "prev_events": state["prev_event_ids"], "auth_events": state["auth_event_ids"],
        }
        return self.finish(template)

    async def test_invite_v2_malformed_is_400(self):
        """invite v2: each malformed invite, and an invite whose third_party_invite is not
        the schema's object, is 400 M_BAD_JSON; the well-formed one is countersigned."""
        await self.invitee()
        good = self.invite_pdu()
        wrap = lambda pdu: {"event": pdu, "room_version": "10", "invite_room_state": []}  # noqa: E731
        await self.assertMalformed(self.path("invite", self.room), good, body_of=wrap)
        for tpi in ("x", {"display_name": "x"}, {"display_name": "x", "signed": {"mxid": ALICE, "token": 5}}):
            pdu = self.invite_pdu({"membership": "invite", "third_party_invite": tpi})
            code, body, raw = await self.put(self.path("invite", self.room)(pdu), wrap(pdu))
            self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"), raw)
        code, body, raw = await self.put(self.path("invite", self.room)(good), wrap(good))
        self.assertEqual(code, 200, raw)
        self.assertIn(US_NAME, body["event"]["signatures"])

    async def test_invite_v1_takes_room_version_1_shapes(self):
        """invite v1 (the bare event, room versions 1-2): a room v10 event is malformed
        for room version 1 (no event_id, hash ids as edges) and answered 400 M_BAD_JSON."""
        await self.invitee()
        pdu = self.invite_pdu()
        code, body, raw = await self.put(
            f"{FED}/invite/{quote(self.room, safe='')}/{quote('$x:' + self.peer.name, safe='')}", pdu)
        self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"), raw)
        self.assertEqual(await self.service.store.have_events([event_id_of(pdu, V1)]), set())

    async def test_authorization_failures_are_403(self):
        """Well-formed events that the rules refuse are 403 M_FORBIDDEN: a knock on a
        public room (knock rule), a leave of a user who never joined (leave rule), a join
        whose join_authorised_via_users_server is a well-formed user id whose server did
        not sign it (rule 4.2), a join sent by another server than the sender's.  (Whether
        a refused event is kept as rejected is the private-rooms rule's business.)"""
        leave_template = await self.template("make_leave", self.room, self.user("u"))
        # A knock on the public room, on its current state (make_knock would refuse it).
        knock = self.finish(dict(leave_template, sender=self.user("k2"), state_key=self.user("k2"),
                                 content={"membership": "knock"}))
        stranger = dict(leave_template, sender=self.user("stranger"), state_key=self.user("stranger"))
        leave = self.finish(stranger)
        join_template = await self.template("make_join", self.room, self.user("joiner2"))
        via = self.finish(join_template, _set("content.join_authorised_via_users_server", "@mod:else.test"))
        cases = [
            (self.path("send_knock", self.room, "v1"), knock),
            (self.path("send_leave", self.room), leave),
        ]
        for path_of, pdu in cases:
            code, body, raw = await self.put(path_of(pdu), pdu)
            self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"), raw)
        code, body, raw = await self.put(self.path("send_join", self.room)(via), via)
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"), raw)
        # A knock citing the other room's events as prev_events: not taken in (403, never
        # a 500), the other room untouched.
        other_room = self.finish(await self.template("make_knock", self.knock_room, self.user("k3")))
        other_room["room_id"] = self.room
        resign(other_room, V10, self.peer.name, self.peer.key)
        code, body, raw = await self.put(self.path("send_knock", self.room, "v1")(other_room), other_room)
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"), raw)
        self.assertEqual(await self.service.store.have_events([event_id_of(other_room, V10)]), set())
        # Sent by another server than the sender's: 403 (who may send it), not 400.
        other = self.finish(dict(join_template, sender="@x:else.test", state_key="@x:else.test"))
        code, body, raw = await self.put(self.path("send_join", self.room)(other), other)
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"), raw)


US_NAME = "us.test:8448"
