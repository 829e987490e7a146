"""Generated authorization cases for the conformance check against Synapse.

Pure and seeded: :func:`generate` returns the same cases for the same seed.  A case is an
event to authorise plus the events it is judged against, in one room version (1-12), as
plain JSON (see ``tests/interop/synapse_auth_driver.py`` for the format), so the same case
goes to Synapse's ``event_auth`` in a child process and to our
:class:`~fedserver.auth.engine.AuthEngine` here (:func:`our_verdict`).

What is varied: the room version; the create event (``creator``, ``m.federate``,
``additional_creators``); the power levels in force (absent, integers, strings and floats
where the version accepts them, values that cannot be read, ``events`` and
``notifications``); the join rule (absent, missing ``join_rule``, every rule, unknown ones);
the memberships of sender, target and authorising user; the event (joins, invites,
third-party invites with real ed25519 signatures, leaves, kicks, unbans, bans, knocks,
restricted joins, unknown or malformed memberships, power levels changes, messages, state
events, ``@``-state keys, third-party invite events, aliases, redactions, create events);
and the auth events it cites (missing, duplicated, unexpected, rejected, from another room,
the create event in v12).  Half the power levels changes are built from the levels in
force so that they test the comparisons, not only the shapes.
"""

from __future__ import annotations

import copy
import random
from typing import Any, Callable, Iterator

from nacl.signing import SigningKey

from fedserver.auth.engine import AuthEngine
from fedserver.auth.verdict import AuthResult
from fedserver.events.canonical import encode_canonical_json
from fedserver.events.hashing import compute_event_id, unpadded_base64, urlsafe_unpadded_base64
from fedserver.events.model import Event
from fedserver.events.validation import InvalidEvent, validate_pdu
from fedserver.room_versions import SPEC_ROOM_VERSIONS, EventFormat, RoomVersion

ALICE = "@alice:a.example"  # the room's creator
DAN = "@dan:a.example"      # same server as the creator
BOB = "@bob:b.example"
ERIN = "@erin:b.example"
CAROL = "@carol:c.example"
USERS = (ALICE, DAN, BOB, ERIN, CAROL)

CREATE, MEMBER, PL, JR, TPI = (
    "m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules",
    "m.room.third_party_invite",
)
SCALARS = ("users_default", "events_default", "state_default", "ban", "kick", "redact", "invite")
RULES = ("public", "invite", "knock", "restricted", "knock_restricted", "private", "xyz")

# The identity server's key that signs third-party invites (fixed, so cases are stable).
_ID_KEY = SigningKey(bytes(range(32)))
_OTHER_KEY = SigningKey(bytes(range(1, 33)))
ID_SERVER = "id.example"


def _b64(data: bytes, urlsafe: bool = False) -> str:
    return urlsafe_unpadded_base64(data) if urlsafe else unpadded_base64(data)


def _sign_object(obj: dict[str, Any], key: SigningKey) -> str:
    payload = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    return _b64(key.sign(encode_canonical_json(payload, strict=False)).signature)


class _Room:
    """One case under construction: the room's events, all known to both sides."""

    def __init__(self, rng: random.Random, rv: RoomVersion, index: int):
        self.rng = rng
        self.index = index
        self.rv = rv
        self.known: list[dict[str, Any]] = []
        self.by_id: dict[str, dict[str, Any]] = {}
        self.state: dict[tuple[str, str], str] = {}
        self.n = 0
        self.room_id = "!room:a.example"
        self.create_id: str | None = None

    # -- events ------------------------------------------------------------------------

    def pdu(self, type: str, sender: str, content: Any, state_key: str | None = None, *,
            prev: list[str] | None = None, auth: list[str] | None = None,
            room_id: Any = "default", sign_for: tuple[str, ...] = (), id_domain: str | None = None,
            extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
        """A PDU and our id for it (not yet known to the room)."""
        self.n += 1
        rv = self.rv
        sender_domain = sender.split(":", 1)[1] if ":" in sender else "a.example"
        pdu: dict[str, Any] = {
            "type": type, "sender": sender, "content": content, "depth": self.n,
            "origin_server_ts": 1_000_000 + self.n, "hashes": {"sha256": "A" * 43},
        }
        if room_id == "default":
            room_id = self.room_id
        if room_id is not None:
            pdu["room_id"] = room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        prev = list(prev if prev is not None else ([self.create_id] if self.create_id else []))
        auth = list(auth if auth is not None else [])
        servers = {sender_domain, *sign_for}
        if rv.event_format == EventFormat.V1:
            domain = id_domain or sender_domain
            pdu["event_id"] = f"${self.index}_{self.n}:{domain}"
            servers.add(domain)
            pdu["prev_events"] = [[e, {"sha256": "A" * 43}] for e in prev]
            pdu["auth_events"] = [[e, {"sha256": "A" * 43}] for e in auth]
        else:
            pdu["prev_events"] = prev
            pdu["auth_events"] = auth
        if extra:
            pdu.update(extra)
        pdu["signatures"] = {s: {"ed25519:k": "c2ln"} for s in sorted(servers)}
        event_id = pdu["event_id"] if rv.event_format == EventFormat.V1 else compute_event_id(pdu, rv)
        return pdu, event_id

    def add(self, pdu: dict[str, Any], event_id: str, *, rejected: bool = False,
            in_state: bool = True) -> str:
        entry = {"pdu": pdu, "event_id": event_id, "rejected": rejected}
        self.known.append(entry)
        self.by_id[event_id] = entry
        if in_state and "state_key" in pdu and not rejected:
            self.state[(pdu["type"], pdu["state_key"])] = event_id
        return event_id

    def state_event(self, type: str, sender: str, content: Any, state_key: str = "", **kw: Any) -> str:
        auth = [self.create_id] if self.create_id and not self.rv.room_id_from_create_event else []
        pdu, eid = self.pdu(type, sender, content, state_key, auth=auth, **kw)
        return self.add(pdu, eid)

    def create(self, content: dict[str, Any], sender: str = ALICE) -> str:
        rv = self.rv
        room_id = None if rv.room_id_from_create_event else "!room:" + sender.split(":", 1)[1]
        pdu, eid = self.pdu(CREATE, sender, content, "", prev=[], auth=[], room_id=room_id)
        self.create_id = eid
        if rv.room_id_from_create_event:
            self.room_id = "!" + eid[1:]
        else:
            self.room_id = room_id
        return self.add(pdu, eid)

    def selected(self, type: str, sender: str, content: Any, state_key: str | None) -> list[str]:
        """The auth events the selection algorithm picks from the state, in a stable order."""
        keys: list[tuple[str, str]] = []
        if not self.rv.room_id_from_create_event:
            keys.append((CREATE, ""))
        keys += [(PL, ""), (MEMBER, sender)]
        content = content if isinstance(content, dict) else {}
        if type == MEMBER and isinstance(state_key, str):
            keys.append((MEMBER, state_key))
            membership = content.get("membership")
            if membership in ("join", "invite", "knock"):
                keys.append((JR, ""))
            if membership == "invite":
                tpi = content.get("third_party_invite")
                signed = tpi.get("signed") if isinstance(tpi, dict) else None
                token = signed.get("token") if isinstance(signed, dict) else None
                if isinstance(token, str):
                    keys.append((TPI, token))
            if membership == "join" and self.rv.restricted_joins:
                via = content.get("join_authorised_via_users_server")
                if isinstance(via, str):
                    keys.append((MEMBER, via))
        out = []
        for k in keys:
            if k in self.state and self.state[k] not in out:
                out.append(self.state[k])
        return out


# -- values ------------------------------------------------------------------------------


def _level(rng: random.Random, rv: RoomVersion, *, junk: float = 0.0) -> Any:
    """A power level value, in the forms ``rv`` accepts (and, with probability ``junk``,
    one it may not)."""
    n = rng.choice([-10, 0, 0, 1, 10, 25, 49, 50, 50, 51, 75, 99, 100, 100, 101])
    if rng.random() < junk:
        pool: list[Any] = [True, False, None, "5_0", "abc", "", "1.5", [50], {"a": 1}, "\u0665\u0660",
                           "\u00a050", "0x10", "1e2"]
        if not rv.integer_power_levels:
            pool += [str(n), f" {n} "]
            if not rv.strict_canonicaljson:
                pool += [n + 0.5, float(n)]
        else:
            pool += [str(n)]
        return rng.choice(pool)
    if not rv.integer_power_levels and rng.random() < 0.2:
        form = rng.choice(["plain", "spaces", "plus", "zeros", "float"])
        if form == "plain":
            return str(n)
        if form == "spaces":
            return f"  {n}\t"
        if form == "plus":
            return f"+{n}" if n >= 0 else str(n)
        if form == "zeros":
            return ("-" if n < 0 else "") + "00" + str(abs(n))
        if not rv.strict_canonicaljson:
            return n + rng.choice([0.0, 0.25, 0.9])
    return n


def _pl_content(rng: random.Random, rv: RoomVersion, creators: set[str], *,
                for_state: bool) -> dict[str, Any]:
    """Power levels content.  ``for_state``: one the rules accept as the room's first
    (v10+: every value an integer; users always valid; never a creator in v12)."""
    junk = 0.0 if (for_state and rv.integer_power_levels) else (0.03 if for_state else 0.08)
    content: dict[str, Any] = {}
    users: dict[str, Any] = {}
    for u in USERS:
        if rv.privileged_creators and u in creators and (for_state or rng.random() < 0.9):
            continue
        if rng.random() < 0.6:
            v = _level(rng, rv, junk=0.0 if for_state else junk)
            users[u] = v
    if ALICE not in creators or not rv.privileged_creators:
        if rng.random() < 0.7:
            users[ALICE] = 100
    if not for_state and rng.random() < 0.1:
        users[rng.choice(["alice", "@bad", "@x:bad domain!", "@:a.example", "@a:b:c", "@x:[::1]",
                          "@x:a.example:99999999"])] = 50
    if rng.random() < 0.9:
        content["users"] = users
    elif not for_state and rng.random() < 0.3:
        content["users"] = rng.choice([[], "x", None])
    for key in SCALARS:
        if rng.random() < 0.45:
            content[key] = _level(rng, rv, junk=junk)
    for key, types in (("events", [PL, "m.room.message", "m.room.topic", "m.room.redaction",
                                   TPI, "m.room.aliases", "m.room.name", JR]),
                       ("notifications", ["room", "other"])):
        if rng.random() < 0.6:
            content[key] = {t: _level(rng, rv, junk=junk) for t in types if rng.random() < 0.5}
        elif rng.random() < junk:
            content[key] = rng.choice([[], "x", 5])
    return content


def _mutate_pl(rng: random.Random, rv: RoomVersion, old: dict[str, Any], sender: str) -> dict[str, Any]:
    """A new power levels content that changes ``old`` a little."""
    new = copy.deepcopy(old)
    for _ in range(rng.randint(1, 3)):
        what = rng.choice(["scalar", "events", "notifications", "users", "own", "remove"])
        if what == "scalar":
            new[rng.choice(SCALARS)] = _level(rng, rv, junk=0.03)
        elif what in ("events", "notifications"):
            m = new.get(what)
            if not isinstance(m, dict):
                m = new[what] = {}
            m[rng.choice([PL, "m.room.message", "m.room.topic", "room", "x.y"])] = _level(rng, rv)
        elif what in ("users", "own"):
            u = new.get("users")
            if not isinstance(u, dict):
                u = new["users"] = {}
            u[sender if what == "own" else rng.choice(USERS)] = _level(rng, rv)
        else:
            key = rng.choice(SCALARS + ("events", "notifications", "users"))
            if key in new:
                if isinstance(new[key], dict) and new[key] and rng.random() < 0.7:
                    del new[key][rng.choice(sorted(new[key]))]
                else:
                    del new[key]
    return new


def _membership(rng: random.Random, rv: RoomVersion) -> str | None:
    pool = ["join", "join", "invite", "leave", "ban", None, None]
    if rv.knocking:
        pool.append("knock")
    return rng.choice(pool)


# -- the generator -----------------------------------------------------------------------


def _one(rng: random.Random, rv: RoomVersion, index: int) -> dict[str, Any]:
    room = _Room(rng, rv, index)
    # The create event.
    create_content: dict[str, Any] = {}
    if rng.random() < 0.95 or rv.identifier != "1":
        create_content["room_version"] = rv.identifier
    if not rv.implicit_room_creator:
        create_content["creator"] = ALICE if rng.random() < 0.9 else DAN
    creators = {ALICE}
    if rv.implicit_room_creator is False:
        creators = {create_content["creator"]}
    if rv.privileged_creators and rng.random() < 0.3:
        extra = rng.sample([BOB, CAROL, DAN], rng.randint(1, 2))
        create_content["additional_creators"] = extra
        creators |= set(extra)
    r = rng.random()
    if r < 0.08:
        create_content["m.federate"] = False
    elif r < 0.11:
        create_content["m.federate"] = rng.choice([True, "false", 0, None, "no"])

    kind = rng.choices(
        ["create", "join", "invite", "tpi_invite", "leave", "ban", "knock", "restricted",
         "weird_member", "power_levels", "message", "state", "tpi_event", "aliases",
         "redaction", "creator_join", "levels", "pl_change"],
        weights=[6, 12, 7, 9, 8, 5, 7, 8, 5, 10, 4, 6, 3, 4, 5, 3, 14, 12],
    )[0]
    if kind == "create":
        return _create_case(rng, room, create_content, index)

    room.create(create_content)
    if kind == "creator_join":
        return _creator_join_case(rng, room, creators, index)
    if kind == "levels":
        return _levels_case(rng, room, creators, index)
    if kind == "pl_change":
        return _pl_change_case(rng, room, creators, index)

    # The state: the creator joined (usually), power levels, join rules, memberships.
    if rng.random() < 0.9:
        room.state_event(MEMBER, ALICE, {"membership": "join"}, ALICE)
    if rng.random() < 0.85:
        room.state_event(PL, ALICE, _pl_content(rng, rv, creators, for_state=True))
    r = rng.random()
    if r < 0.12:
        pass  # no join rules: treated as invite
    elif r < 0.17:
        room.state_event(JR, ALICE, rng.choice([{}, {"join_rule": 5}, {"join_rule": None}]))
    else:
        rule = rng.choice(RULES)
        content: dict[str, Any] = {"join_rule": rule}
        if rule in ("restricted", "knock_restricted"):
            content["allow"] = [{"type": "m.room_membership", "room_id": "!other:a.example"}]
        room.state_event(JR, ALICE, content)
    for user in (DAN, BOB, ERIN, CAROL):
        m = _membership(rng, rv)
        if m is not None:
            sender = user if m in ("join", "leave", "knock") else ALICE
            room.state_event(MEMBER, sender, {"membership": m}, user)
    if rng.random() < 0.1 and (MEMBER, ALICE) in room.state:
        room.state_event(MEMBER, ALICE, {"membership": rng.choice(["leave", "ban"])}, ALICE)

    builder: Callable[..., dict[str, Any]] = {
        "join": _join_case, "invite": _invite_case, "tpi_invite": _tpi_invite_case,
        "leave": _leave_case, "ban": _ban_case, "knock": _knock_case,
        "restricted": _restricted_case, "weird_member": _weird_member_case,
        "power_levels": _pl_case, "message": _message_case, "state": _state_case,
        "tpi_event": _tpi_event_case, "aliases": _aliases_case, "redaction": _redaction_case,
    }[kind]
    return builder(rng, room, creators, index)


def _finish(room: _Room, index: int, kind: str, type: str, sender: str, content: Any,
            state_key: str | None = None, *, sign_for: tuple[str, ...] = (),
            id_domain: str | None = None, extra: dict[str, Any] | None = None,
            prev: list[str] | None = None) -> dict[str, Any]:
    """Build the event under test, pick the mode and perturb its auth events."""
    rng, rv = room.rng, room.rv
    cited = room.selected(type, sender, content, state_key)
    mode = "receipt" if rng.random() < 0.7 else "state"
    note = ""
    if mode == "receipt" and rng.random() < 0.3:
        cited, note = _perturb(room, cited, type, sender)
    pdu, eid = room.pdu(type, sender, content, state_key, auth=cited, prev=prev,
                        sign_for=sign_for, id_domain=id_domain, extra=extra)
    case = {
        "id": f"{index}-{kind}-v{rv.identifier}", "room_version": rv.identifier, "mode": mode,
        "event": pdu, "event_id": eid, "known": room.known, "note": note,
    }
    if mode == "state":
        case["state"] = sorted(room.state.values())
    return case


def _perturb(room: _Room, cited: list[str], type: str, sender: str) -> tuple[list[str], str]:
    rng, rv = room.rng, room.rv
    choice = rng.choice(["duplicate", "unexpected", "drop_create", "rejected", "other_room",
                         "cite_create", "drop_one"])
    cited = list(cited)
    if choice == "duplicate":
        key = rng.choice([(PL, ""), (MEMBER, sender)])
        content: Any = {"users": {ALICE: 100}} if key[0] == PL else {"membership": "join"}
        eid = room.state_event(key[0], ALICE if key[0] == PL else sender, content, key[1])
        room.state.pop(key, None)
        cited.append(eid)
    elif choice == "unexpected":
        if rng.random() < 0.5:
            eid = room.state_event("m.room.topic", ALICE, {"topic": "t"})
        else:
            eid = room.state_event(MEMBER, CAROL, {"membership": "join"}, "@zed:c.example")
        cited.append(eid)
    elif choice == "drop_create" and room.create_id in cited:
        cited.remove(room.create_id)
    elif choice == "rejected" and cited:
        victim = rng.choice(cited + [room.create_id])
        entry = room.by_id[victim]
        entry["rejected"] = True
    elif choice == "other_room":
        if rv.room_id_from_create_event:
            other = "!" + "B" * 43
        else:
            other = "!elsewhere:a.example"
        if rng.random() < 0.5 and (PL, "") in room.state:
            pdu, eid = room.pdu(PL, ALICE, {"users": {ALICE: 100}, "events_default": 0}, "", room_id=other)
            cited = [c for c in cited if room.by_id[c]["pdu"]["type"] != PL]
        else:
            pdu, eid = room.pdu(MEMBER, sender, {"membership": "join"}, sender, room_id=other)
            cited = [c for c in cited if not (room.by_id[c]["pdu"]["type"] == MEMBER
                                              and room.by_id[c]["pdu"].get("state_key") == sender)]
        room.add(pdu, eid, in_state=False)
        cited.append(eid)
    elif choice == "cite_create" and rv.room_id_from_create_event:
        cited.insert(0, room.create_id)
    elif choice == "drop_one" and cited:
        cited.remove(rng.choice(cited))
    else:
        return cited, ""
    return cited, choice


def _create_case(rng: random.Random, room: _Room, content: dict[str, Any], index: int) -> dict[str, Any]:
    rv = room.rv
    content = dict(content)
    r = rng.random()
    prev: list[str] = []
    room_id: Any = None if rv.room_id_from_create_event else "!room:a.example"
    sender = ALICE
    if r < 0.1:
        prev = ["$" + "C" * 43] if rv.event_format != EventFormat.V1 else ["$p:a.example"]
    elif r < 0.2:
        room_id = "!room:b.example" if not rv.room_id_from_create_event else "!" + "D" * 43
    elif r < 0.35:
        content["room_version"] = rng.choice(["999", "", 12, None, "org.example.x", "1", "12"])
    elif r < 0.45 and not rv.implicit_room_creator:
        content.pop("creator", None)
    elif r < 0.6 and rv.privileged_creators:
        content["additional_creators"] = rng.choice([
            "x", [5], ["@ok:b.example", "nope"], ["@a:b.example"], [], ["@x:bad domain"],
            ["@" + "l" * 250 + ":b.example"], [None],
        ])
    elif r < 0.65:
        sender = BOB
        if not rv.room_id_from_create_event and rng.random() < 0.5:
            room_id = "!room:b.example"
    pdu, eid = room.pdu(CREATE, sender, content, "", prev=prev, auth=[], room_id=room_id)
    case = {
        "id": f"{index}-create-v{rv.identifier}", "room_version": rv.identifier,
        "mode": "receipt", "event": pdu, "event_id": eid, "known": [], "note": "",
    }
    # Only in mode "receipt": the create event's rules do not depend on state, and
    # Synapse runs them once, at check 4, not again against the state.
    return case


def _creator_join_case(rng: random.Random, room: _Room, creators: set[str], index: int) -> dict[str, Any]:
    rv = room.rv
    create = room.by_id[room.create_id]["pdu"]
    creator = create["content"].get("creator", create["sender"]) if not rv.implicit_room_creator else create["sender"]
    r = rng.random()
    sender = target = creator
    prev = [room.create_id]
    if r < 0.2:
        target = sender = rng.choice([BOB, DAN])
    elif r < 0.3:
        sender = BOB  # someone else joins the creator
    elif r < 0.4:
        other = room.state_event("m.room.topic", ALICE, {"topic": "x"})
        prev = [room.create_id, other]
    elif r < 0.5:
        prev = [room.state_event("m.room.topic", ALICE, {"topic": "x"})]
    membership = "join" if rng.random() < 0.9 else rng.choice(["invite", "leave"])
    return _finish(room, index, "creator_join", MEMBER, sender, {"membership": membership}, target, prev=prev)


def _pick_sender(rng: random.Random) -> str:
    return rng.choice([ALICE, ALICE, DAN, BOB, ERIN, CAROL])


def _join_case(rng, room, creators, index):
    sender = _pick_sender(rng)
    target = sender if rng.random() < 0.9 else rng.choice(USERS)
    content: dict[str, Any] = {"membership": "join"}
    if rng.random() < 0.2:
        content["displayname"] = "x"
    return _finish(room, index, "join", MEMBER, sender, content, target)


def _invite_case(rng, room, creators, index):
    sender = _pick_sender(rng)
    target = rng.choice(USERS + ("@new:c.example", "@new:a.example"))
    return _finish(room, index, "invite", MEMBER, sender, {"membership": "invite"}, target)


def _leave_case(rng, room, creators, index):
    sender = _pick_sender(rng)
    target = sender if rng.random() < 0.4 else rng.choice(USERS)
    content: dict[str, Any] = {"membership": "leave"}
    if room.rv.restricted_joins and rng.random() < 0.08:
        content["join_authorised_via_users_server"] = rng.choice([ALICE, BOB])
    return _finish(room, index, "leave", MEMBER, sender, content, target)


def _ban_case(rng, room, creators, index):
    sender = _pick_sender(rng)
    target = rng.choice(USERS + ("@new:c.example",))
    return _finish(room, index, "ban", MEMBER, sender, {"membership": "ban"}, target)


def _knock_case(rng, room, creators, index):
    if room.rv.knocking and rng.random() < 0.5:
        rule = "knock_restricted" if room.rv.knock_restricted and rng.random() < 0.3 else "knock"
        room.state_event(JR, ALICE, {"join_rule": rule})
    sender = _pick_sender(rng)
    target = sender if rng.random() < 0.75 else rng.choice(USERS)
    return _finish(room, index, "knock", MEMBER, sender, {"membership": "knock"}, target)


def _restricted_case(rng, room, creators, index):
    rv = room.rv
    sender = rng.choice([BOB, ERIN, CAROL, DAN])
    content: dict[str, Any] = {"membership": "join"}
    via = rng.choice([ALICE, ALICE, DAN, BOB, CAROL, "@nobody:c.example", "no-colon", 5, None])
    if via is not None:
        content["join_authorised_via_users_server"] = via
    sign_for: tuple[str, ...] = ()
    if isinstance(via, str) and ":" in via and rng.random() < 0.85:
        sign_for = (via.split(":", 1)[1],)
    if rng.random() < 0.6:
        rule = rng.choice(["restricted", "knock_restricted"])
        room.state_event(JR, ALICE, {"join_rule": rule, "allow": [
            {"type": "m.room_membership", "room_id": "!other:a.example"}]})
    if rng.random() < 0.15 and rv.restricted_joins:
        content["membership"] = rng.choice(["invite", "leave", "ban", "knock"])
    return _finish(room, index, "restricted", MEMBER, sender, content, sender, sign_for=sign_for)


def _weird_member_case(rng, room, creators, index):
    sender = _pick_sender(rng)
    r = rng.random()
    state_key: str | None = sender
    if r < 0.25:
        content: Any = {"displayname": "no membership"}
    elif r < 0.5:
        content = {"membership": rng.choice(["dance", "JOIN", "", "knock"])}
    elif r < 0.7:
        content = {"membership": rng.choice([5, None, ["join"], {"a": 1}, True])}
    elif r < 0.85:
        content = {"membership": "join"}
        state_key = None
    else:
        content = {"membership": rng.choice(["leave", "invite", "join"])}
        state_key = rng.choice(["", "not-a-user", "@x:c.example", "x:c.example", "@x:bad domain",
                                "@:c.example", "@a:b:c.example"])
    return _finish(room, index, "weird_member", MEMBER, sender, content, state_key)


def _pl_case(rng, room, creators, index):
    rv = room.rv
    sender = _pick_sender(rng)
    old_id = room.state.get((PL, ""))
    if old_id is not None and rng.random() < 0.6:
        old = room.by_id[old_id]["pdu"]["content"]
        content = _mutate_pl(rng, rv, old, sender)
    else:
        content = _pl_content(rng, rv, creators, for_state=False)
    return _finish(room, index, "power_levels", PL, sender, content, "")


def _message_case(rng, room, creators, index):
    sender = _pick_sender(rng)
    etype = rng.choice(["m.room.message", "m.room.message", "m.reaction", "x.custom"])
    return _finish(room, index, "message", etype, sender, {"body": "hi"})


def _state_case(rng, room, creators, index):
    sender = _pick_sender(rng)
    etype = rng.choice(["m.room.topic", "m.room.name", JR, "x.state", "m.room.history_visibility"])
    state_key = rng.choice(["", "", "x", sender, rng.choice(USERS), "@", "@notauser",
                            sender + "_suffix"])
    content: dict[str, Any] = {"join_rule": "public"} if etype == JR else {"v": 1}
    return _finish(room, index, "state", etype, sender, content, state_key)


def _tpi_event_case(rng, room, creators, index):
    sender = _pick_sender(rng)
    content = {"display_name": "x", "public_key": _b64(bytes(_ID_KEY.verify_key)),
               "key_validity_url": "https://id.example/v"}
    state_key = rng.choice(["tok", "", "@x:a.example"])
    if rng.random() < 0.2:
        return _finish(room, index, "tpi_event", TPI, sender, content, None)
    return _finish(room, index, "tpi_event", TPI, sender, content, state_key)


def _aliases_case(rng, room, creators, index):
    sender = _pick_sender(rng)
    domain = sender.split(":", 1)[1]
    state_key = rng.choice([domain, domain, "other.example", "", None])
    return _finish(room, index, "aliases", "m.room.aliases", sender, {"aliases": ["#a:" + domain]}, state_key)


def _redaction_case(rng, room, creators, index):
    rv = room.rv
    sender = _pick_sender(rng)
    domain = sender.split(":", 1)[1]
    target_domain = rng.choice([domain, domain, "c.example", "a.example"])
    if rv.event_format == EventFormat.V1:
        target: Any = f"$target:{target_domain}"
    else:
        target = "$" + "T" * 43
    r = rng.random()
    if r < 0.08:
        target = None
    elif r < 0.12:
        target = rng.choice([5, "$nodomain", ""])
    id_domain = rng.choice([domain, domain, "c.example"]) if rv.event_format == EventFormat.V1 else None
    content: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if target is not None:
        if rv.redacts_in_content:
            content["redacts"] = target
        else:
            extra["redacts"] = target
    return _finish(room, index, "redaction", "m.room.redaction", sender, content, None,
                   id_domain=id_domain, extra=extra)


def _standard_room(rng: random.Random, room: _Room, creators: set[str],
                   levels: dict[str, Any]) -> None:
    """Alice (creator) joined with 100, power levels ``levels`` (plus her entry), join
    rules, and Dan, Bob, Erin and Carol with the memberships the caller adds."""
    rv = room.rv
    room.state_event(MEMBER, ALICE, {"membership": "join"}, ALICE)
    content = copy.deepcopy(levels)
    users = content.setdefault("users", {})
    if not (rv.privileged_creators and ALICE in creators):
        users[ALICE] = 100
    if rv.privileged_creators:
        for u in creators:
            users.pop(u, None)
    room.state_event(PL, ALICE, content)
    room.state_event(JR, ALICE, {"join_rule": rng.choice(["public", "invite", "knock"])})


def _levels_case(rng, room, creators, index):
    """The rules that compare levels (invite, kick, unban, ban, third-party invite
    events, required levels, v1-v2 redactions), with levels chosen around each other."""
    rv = room.rv
    pick = lambda: rng.choice([0, 49, 50, 51, 100])  # noqa: E731
    levels: dict[str, Any] = {"users": {BOB: pick(), DAN: pick(), ERIN: pick()}}
    for key in ("invite", "kick", "ban", "redact", "events_default", "state_default"):
        if rng.random() < 0.6:
            levels[key] = pick()
    if rng.random() < 0.4:
        levels["events"] = {"m.room.message": pick(), "m.room.redaction": pick(), TPI: pick()}
    if rng.random() < 0.3:
        levels["users_default"] = pick()
    _standard_room(rng, room, creators, levels)
    for user in (BOB, DAN, ERIN):
        room.state_event(MEMBER, user, {"membership": rng.choice(["join", "join", "join", "invite"])}, user)
    target = rng.choice([CAROL, DAN, ERIN, "@new:c.example"])
    what = rng.choice(["invite", "kick", "kick", "ban", "tpi_event", "message", "state", "redaction"])
    m = rng.choice(["ban", "ban", "join", "invite", "leave", None])
    if m is not None:
        room.state_event(MEMBER, ALICE if m != "join" else target, {"membership": m}, target)
    sender = rng.choice([BOB, BOB, DAN, ERIN, ALICE])
    if what in ("invite", "kick", "ban"):
        membership = {"kick": "leave"}.get(what, what)
        return _finish(room, index, "levels", MEMBER, sender, {"membership": membership}, target)
    if what == "tpi_event":
        content = {"display_name": "x", "public_key": _b64(bytes(_ID_KEY.verify_key))}
        return _finish(room, index, "levels", TPI, sender, content, "tok")
    if what == "message":
        return _finish(room, index, "levels", "m.room.message", sender, {"body": "x"})
    if what == "state":
        return _finish(room, index, "levels", "m.room.topic", sender, {"topic": "x"}, "")
    domain = sender.split(":", 1)[1]
    extra: dict[str, Any] = {}
    content: dict[str, Any] = {}
    target_id = (f"$t:{rng.choice([domain, 'c.example'])}" if rv.event_format == EventFormat.V1
                 else "$" + "T" * 43)
    if rv.redacts_in_content:
        content["redacts"] = target_id
    else:
        extra["redacts"] = target_id
    id_domain = rng.choice([domain, "c.example"]) if rv.event_format == EventFormat.V1 else None
    return _finish(room, index, "levels", "m.room.redaction", sender, content, None,
                   id_domain=id_domain, extra=extra)


def _pl_change_case(rng, room, creators, index):
    """A power levels change by Bob (level 50, sometimes 75) against levels above,
    at and below his: each of the rule's comparisons."""
    rv = room.rv
    bob = rng.choice([50, 50, 75])
    old: dict[str, Any] = {
        "users": {BOB: bob, DAN: rng.choice([25, 50, 75]), ERIN: rng.choice([0, 50, 100])},
        "events": {"m.room.message": rng.choice([25, 50, 75]), "m.room.topic": rng.choice([0, 100])},
        "state_default": rng.choice([0, 50]),
        "ban": rng.choice([25, 50, 75, 100]),
    }
    if rv.limit_notifications_power_levels or rng.random() < 0.5:
        old["notifications"] = {"room": rng.choice([25, 50, 75])}
    if not rv.integer_power_levels and rng.random() < 0.3:
        old["events"]["m.room.message"] = str(old["events"]["m.room.message"])
    _standard_room(rng, room, creators, old)
    room.state_event(MEMBER, BOB, {"membership": "join"}, BOB)
    new = copy.deepcopy(room.by_id[room.state[(PL, "")]]["pdu"]["content"])
    target_level = rng.choice([0, 25, 50, 51, 75, 100])
    what = rng.choice(["scalar", "scalar_remove", "event_add", "event_change", "event_remove",
                       "notif", "user_add", "user_change", "user_remove", "own", "creator"])
    if what == "scalar":
        new[rng.choice(SCALARS)] = target_level
    elif what == "scalar_remove":
        new.pop("ban", None)
    elif what == "event_add":
        new["events"]["x.new"] = target_level
    elif what == "event_change":
        new["events"][rng.choice(["m.room.message", "m.room.topic"])] = target_level
    elif what == "event_remove":
        new["events"].pop(rng.choice(["m.room.message", "m.room.topic"]))
    elif what == "notif":
        new.setdefault("notifications", {})["room"] = target_level
    elif what == "user_add":
        new["users"][CAROL] = target_level
    elif what == "user_change":
        new["users"][rng.choice([DAN, ERIN])] = target_level
    elif what == "user_remove":
        new["users"].pop(rng.choice([DAN, ERIN]), None)
    elif what == "own":
        new["users"][BOB] = target_level
    else:
        new["users"][rng.choice(sorted(creators))] = target_level
    if rv.integer_power_levels and rng.random() < 0.1:
        new[rng.choice(["ban", "events", "notifications", "kick"])] = rng.choice(["50", {"a": "1"}, [], 1.5 if not rv.strict_canonicaljson else "x"])
    sender = BOB if rng.random() < 0.85 else ALICE
    return _finish(room, index, "pl_change", PL, sender, new, "")


def _tpi_invite_case(rng, room, creators, index):
    """An invite carrying ``third_party_invite`` with a real signature (usually)."""
    rv = room.rv
    inviter = _pick_sender(rng)
    target = rng.choice([BOB, CAROL, "@new:c.example"])
    token = rng.choice(["tok1", "tok2"])
    # The m.room.third_party_invite event in the state.
    tpi_sender = inviter if rng.random() < 0.75 else rng.choice([ALICE, DAN])
    pub = bytes(_ID_KEY.verify_key)
    tpi_content: dict[str, Any] = {"display_name": "x", "key_validity_url": "https://id.example/v"}
    r = rng.random()
    if r < 0.5:
        tpi_content["public_key"] = _b64(pub)
    elif r < 0.7:
        tpi_content["public_keys"] = [{"public_key": _b64(pub, urlsafe=rng.random() < 0.5)}]
    elif r < 0.85:
        tpi_content["public_key"] = _b64(bytes(_OTHER_KEY.verify_key))
        tpi_content["public_keys"] = [{"public_key": _b64(pub)}]
    else:
        tpi_content["public_key"] = _b64(bytes(_OTHER_KEY.verify_key))
    if rng.random() < 0.9:
        room.state_event(TPI, tpi_sender, tpi_content, token)
    signed: dict[str, Any] = {"mxid": target, "token": token}
    r = rng.random()
    key_id = "ed25519:0"
    signer = _ID_KEY
    if r < 0.1:
        signer = _OTHER_KEY
    elif r < 0.15:
        key_id = "curve25519:0"
    sig = _sign_object(signed, signer)
    signatures: dict[str, Any] = {ID_SERVER: {key_id: sig}}
    r = rng.random()
    if r < 0.1:
        # A bad signature listed before the good one, under another server name.
        signatures = {"aaa.example": {"ed25519:x": _sign_object({"x": 1}, _ID_KEY)}, ID_SERVER: {key_id: sig}}
    elif r < 0.15:
        signatures = {ID_SERVER: {"ed25519:a": _sign_object({"x": 1}, _ID_KEY), key_id: sig}}
    signed["signatures"] = signatures
    r = rng.random()
    if r < 0.06:
        signed["mxid"] = "@someone:else.example"
    elif r < 0.1:
        del signed["token"]
    elif r < 0.13:
        del signed["mxid"]
    tpi: Any = {"display_name": "x", "signed": signed}
    r = rng.random()
    if r < 0.04:
        tpi = {"display_name": "x"}
    elif r < 0.07:
        tpi = {"signed": "nope"}
    if (MEMBER, target) in room.state and rng.random() < 0.5:
        pass
    elif rng.random() < 0.15:
        room.state_event(MEMBER, ALICE, {"membership": "ban"}, target)
    return _finish(room, index, "tpi_invite", MEMBER, inviter,
                   {"membership": "invite", "third_party_invite": tpi}, target)


def generate(seed: int, count: int) -> list[dict[str, Any]]:
    """``count`` cases from ``seed``, spread over every spec room version."""
    rng = random.Random(seed)
    return [_one(rng, SPEC_ROOM_VERSIONS[i % len(SPEC_ROOM_VERSIONS)], i) for i in range(count)]


def more_cases(seed: int, start: int, versions: list[RoomVersion]) -> Iterator[dict[str, Any]]:
    """An endless stream of cases in ``versions`` (in turn), from ``seed``, with indexes
    from ``start`` (ids stay unique next to :func:`generate`'s)."""
    rng = random.Random(seed * 7919 + 1)
    i = start
    while True:
        yield _one(rng, versions[i % len(versions)], i)
        i += 1


# -- our side ----------------------------------------------------------------------------


def our_verdict(case: dict[str, Any], engine: AuthEngine) -> tuple[str, str]:
    """Our verdict on ``case``: ``("allow", "")``, ``("reject", rule)`` or
    ``("invalid", reason)`` (the event fails the format checks before auth)."""
    rv = next(v for v in SPEC_ROOM_VERSIONS if v.identifier == case["room_version"])
    known: dict[str, Event] = {}
    for entry in case["known"]:
        ev = Event.from_pdu(entry["pdu"], rv, entry["event_id"])
        if entry.get("rejected"):
            ev.rejected_reason = "auth_error"
        known[entry["event_id"]] = ev
    try:
        validate_pdu(case["event"], rv)
    except InvalidEvent as e:
        return "invalid", e.reason
    event = Event.from_pdu(case["event"], rv, case["event_id"])
    create = None
    if rv.room_id_from_create_event and isinstance(event.room_id, str):
        create = known.get("$" + event.room_id[1:])
    if case["mode"] == "receipt":
        result: AuthResult = engine.check(
            event, [known[e] for e in event.auth_event_ids], rv, create_event=create
        )
    else:
        state = {known[e].state_tuple: known[e] for e in case["state"]}
        result = engine.check_against_state(event, state, rv, create_event=create)
    return ("allow", "") if result.allowed else ("reject", f"{result.rule}: {result.reason}")


# -- one case per documented divergence -----------------------------------------------------


def _spec_room(rv: RoomVersion, index: int, create_extra: dict[str, Any] | None = None,
               levels: dict[str, Any] | None = None, join_rule: str = "public") -> _Room:
    room = _Room(random.Random(index), rv, index)
    content: dict[str, Any] = {"room_version": rv.identifier}
    if not rv.implicit_room_creator:
        content["creator"] = ALICE
    content.update(create_extra or {})
    room.create(content)
    room.state_event(MEMBER, ALICE, {"membership": "join"}, ALICE)
    pl = {"users": {} if rv.privileged_creators else {ALICE: 100}} if levels is None else levels
    room.state_event(PL, ALICE, pl)
    room.state_event(JR, ALICE, {"join_rule": join_rule})
    return room


def _plain(room: _Room, name: str, type: str, sender: str, content: Any,
           state_key: str | None = None, **kw: Any) -> dict[str, Any]:
    """The event on top of ``room``, citing exactly the selected auth events."""
    cited = room.selected(type, sender, content, state_key)
    pdu, eid = room.pdu(type, sender, content, state_key, auth=cited, **kw)
    return {"id": f"{room.index}-{name}-v{room.rv.identifier}", "room_version": room.rv.identifier,
            "mode": "receipt", "event": pdu, "event_id": eid, "known": room.known, "note": ""}


def divergence_cases() -> list[tuple[str, dict[str, Any]]]:
    """One hand-made case per documented divergence (``docs/auth-conformance.md``), with
    the divergence id it must show: the CI test checks that Synapse still decides them
    otherwise than we do, so the document stays true."""
    from fedserver.room_versions import V1, V9, V10

    out: list[tuple[str, dict[str, Any]]] = []
    n = iter(range(900_000, 901_000))

    room = _spec_room(V10, next(n), {"m.federate": "false"})
    out.append(("federate-not-boolean", _plain(room, "federate", MEMBER, BOB, {"membership": "join"}, BOB)))

    room = _spec_room(V10, next(n), {"m.federate": False})
    out.append(("federate-target", _plain(room, "federate", MEMBER, ALICE, {"membership": "invite"}, BOB)))

    room = _spec_room(V10, next(n))
    room.state_event(MEMBER, BOB, {"membership": "join"}, BOB)
    out.append(("authorised-via-other-memberships", _plain(
        room, "via", MEMBER, BOB,
        {"membership": "leave", "join_authorised_via_users_server": ALICE}, BOB)))

    room = _spec_room(V10, next(n))
    room.state_event(TPI, ALICE, {"display_name": "x", "public_key": _b64(bytes(_ID_KEY.verify_key))}, "tok")
    signed: dict[str, Any] = {"mxid": BOB, "token": "tok"}
    signed["signatures"] = {"aaa.example": {"ed25519:x": _sign_object({"other": 1}, _ID_KEY)},
                            ID_SERVER: {"ed25519:0": _sign_object(signed, _ID_KEY)}}
    out.append(("third-party-invite-signatures", _plain(
        room, "tpi", MEMBER, ALICE,
        {"membership": "invite", "third_party_invite": {"display_name": "x", "signed": signed}}, BOB)))

    room = _spec_room(V9, next(n))
    out.append(("power-level-forms", _plain(
        room, "forms", PL, ALICE, {"users": {ALICE: 100, BOB: "1_0"}}, "")))

    room = _spec_room(V10, next(n))
    out.append(("power-levels-user-ids", _plain(
        room, "user-ids", PL, ALICE, {"users": {ALICE: 100, "@x:bad domain!": 50}}, "")))

    room = _spec_room(V10, next(n))
    out.append(("member-state-key", _plain(
        room, "state-key", MEMBER, ALICE, {"membership": "invite"}, "@a:b:c.example")))

    room = _spec_room(V10, next(n))
    out.append(("redacts-not-string", _plain(
        room, "redacts", "m.room.redaction", ALICE, {}, extra={"redacts": 5})))

    room = _spec_room(V1, next(n))
    room.state_event(MEMBER, BOB, {"membership": "join"}, BOB)
    out.append(("v1-redaction-without-target", _plain(room, "redaction", "m.room.redaction", BOB, {})))

    room = _spec_room(V9, next(n), levels={"users": {ALICE: 100}, "ban": "abc"})
    out.append(("synapse-int-error", _plain(room, "int", MEMBER, ALICE, {"membership": "invite"}, BOB)))
    return out
