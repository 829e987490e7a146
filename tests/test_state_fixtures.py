"""Builders shared by the state tests: rooms of hand-made events, and auth checks."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from fedserver.events.model import Event
from fedserver.room_versions import EventFormat, RoomVersion

CREATE = "m.room.create"
MEMBER = "m.room.member"
PL = "m.room.power_levels"
JR = "m.room.join_rules"
TOPIC = "m.room.topic"

ALICE = "@alice:a.test"
BOB = "@bob:b.test"
CHARLIE = "@charlie:c.test"
DAVE = "@dave:d.test"
EVE = "@eve:e.test"


class RoomBuilder:
    """Builds a room's events by hand, with readable event ids, and the state after each.

    Events are made with :meth:`Event.from_pdu` and an explicit id (no hashing, no
    signing). Auth events are selected from the state before the event unless given.
    For room v12 the create event has no ``room_id`` and is never cited; the room id is
    derived from its id.
    """

    def __init__(self, rv: RoomVersion, ts: int = 1000):
        self.rv = rv
        self.events: dict[str, Event] = {}
        self.after: dict[str, dict[tuple[str, str], str]] = {}
        #: event id -> auth order: the order events were added in, as storage's
        #: persistence order would be
        self.auth_orders: dict[str, int] = {}
        self.ts = ts
        self.room_id = "!room:a.test"

    def id(self, name: str) -> str:
        if self.rv.event_format == EventFormat.V1:
            return f"${name}:a.test"
        return "$" + name

    def get_event(self, event_id: str) -> Event:
        return self.events[event_id]

    def auth_order(self, event_id: str) -> int:
        return self.auth_orders[event_id]

    def ev(self, name: str) -> Event:
        return self.events[self.id(name)]

    def state(self, name: str) -> dict[tuple[str, str], str]:
        """The state after the event ``name``."""
        return dict(self.after[self.id(name)])

    def _edges(self, ids: Iterable[str]) -> list[Any]:
        if self.rv.event_format == EventFormat.V1:
            return [[i, {"sha256": "x"}] for i in ids]
        return list(ids)

    def create(self, name: str = "create", sender: str = ALICE, content: dict | None = None) -> Event:
        content = dict(content or {})
        content.setdefault("room_version", self.rv.identifier)
        if not self.rv.implicit_room_creator:
            content.setdefault("creator", sender)
        eid = self.id(name)
        if self.rv.room_id_from_create_event:
            self.room_id = "!" + eid[1:]
        pdu: dict[str, Any] = {
            "type": CREATE, "state_key": "", "sender": sender, "content": content,
            "prev_events": [], "auth_events": [], "depth": 1, "origin_server_ts": self.ts,
        }
        if not self.rv.room_id_from_create_event:
            pdu["room_id"] = self.room_id
        return self._add(name, pdu, {})

    def send(
        self,
        name: str,
        type: str,
        sender: str,
        content: dict,
        state_key: str | None = None,
        *,
        after: str | list[str],
        state: Mapping[tuple[str, str], str] | None = None,
        auth: list[str] | None = None,
        ts: int | None = None,
    ) -> Event:
        """Add an event whose prev events are ``after``.

        :param state: the state before it; by default the state after ``after`` (which must
            then be one event).
        :param auth: names of its auth events; by default selected from ``state``.
        """
        prevs = [after] if isinstance(after, str) else list(after)
        if state is None:
            assert len(prevs) == 1, "give the state before an event with several prevs"
            state = self.after[self.id(prevs[0])]
        if auth is None:
            auth_ids = self.select(type, sender, content, state_key, state)
        else:
            auth_ids = [self.id(a) for a in auth]
        depth = max(self.events[self.id(p)].depth for p in prevs) + 1
        self.ts += 1
        pdu: dict[str, Any] = {
            "type": type, "sender": sender, "content": content, "room_id": self.room_id,
            "prev_events": self._edges(self.id(p) for p in prevs),
            "auth_events": self._edges(auth_ids), "depth": depth,
            "origin_server_ts": self.ts if ts is None else ts,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        return self._add(name, pdu, state)

    def select(self, type, sender, content, state_key, state) -> list[str]:
        keys = [(PL, ""), (MEMBER, sender)]
        if not self.rv.room_id_from_create_event:
            keys.insert(0, (CREATE, ""))
        if type == MEMBER:
            keys.append((MEMBER, state_key))
            if content.get("membership") in ("join", "invite", "knock"):
                keys.append((JR, ""))
        out = []
        for k in keys:
            eid = state.get(k)
            if eid is not None and eid not in out:
                out.append(eid)
        return out

    def _add(self, name: str, pdu: dict, state_before: Mapping) -> Event:
        eid = self.id(name)
        if self.rv.event_format == EventFormat.V1:
            pdu["event_id"] = eid
        assert eid not in self.events, name
        ev = Event.from_pdu(pdu, self.rv, event_id=eid)
        self.events[eid] = ev
        self.auth_orders[eid] = len(self.auth_orders)
        after = dict(state_before)
        if ev.state_key is not None:
            after[(ev.type, ev.state_key)] = eid
        self.after[eid] = after
        return ev

    # -- common openings -------------------------------------------------------------

    def standard_room(self, *, join_rule: str = "public", users: dict | None = None) -> str:
        """create, Alice joins, power levels (Alice 100 + ``users``), join rules.

        :returns: the name of the last event.
        """
        self.create()
        self.send("alice_join", MEMBER, ALICE, {"membership": "join"}, ALICE, after="create")
        levels = {ALICE: 100}
        levels.update(users or {})
        self.send("pl0", PL, ALICE, self.power_levels(levels), "", after="alice_join")
        self.send("jr0", JR, ALICE, {"join_rule": join_rule}, "", after="pl0")
        return "jr0"

    def power_levels(self, users: dict[str, int], **extra: Any) -> dict[str, Any]:
        """:func:`power_levels` content; from room v12 the creator (Alice) is left out of
        ``users``, since creators may not be listed there."""
        if self.rv.privileged_creators:
            users = {u: v for u, v in users.items() if u != ALICE}
        return power_levels(users, **extra)

    def join(self, name: str, user: str, after: str) -> Event:
        return self.send(name, MEMBER, user, {"membership": "join"}, user, after=after)


def power_levels(users: dict[str, int], **extra: Any) -> dict[str, Any]:
    content: dict[str, Any] = {
        "users": dict(users), "users_default": 0, "events_default": 0, "state_default": 50,
        "ban": 50, "kick": 50, "redact": 50, "invite": 0, "events": {},
    }
    content.update(extra)
    return content


# -- auth checks ---------------------------------------------------------------------

def _level(v: Any, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def simple_auth_check(event: Event, state: Mapping[tuple[str, str], Event]) -> bool:
    """A small subset of the auth rules, enough for the unit tests of the algorithm (the
    race tests use the real engine): membership join/invite/leave/ban, sender in room,
    required power levels, and power level changes."""
    rv = event.room_version
    if event.type == CREATE:
        return True
    create = state.get((CREATE, ""))
    if create is None:
        return False
    pl_ev = state.get((PL, ""))
    if rv.implicit_room_creator:
        creators = {create.sender}
    else:
        creators = {create.content.get("creator")}
    if rv.privileged_creators:
        creators.update(create.content.get("additional_creators", []))

    def level(user: str) -> float:
        if rv.privileged_creators and user in creators:
            return float("inf")
        if pl_ev is None:
            return 100 if user in creators else 0
        users = pl_ev.content.get("users", {})
        return _level(users.get(user, pl_ev.content.get("users_default", 0)), 0)

    def setting(name: str, default: int) -> int:
        if pl_ev is None:
            return default
        return _level(pl_ev.content.get(name, default), default)

    def membership(user: str) -> str:
        m = state.get((MEMBER, user))
        return m.content.get("membership", "leave") if m is not None else "leave"

    sender = event.sender
    if event.type == MEMBER:
        target = event.state_key
        m = event.content.get("membership")
        if m == "join":
            if (len(event.prev_event_ids) == 1 and event.prev_event_ids[0] == create.event_id
                    and target in creators):
                return True
            if sender != target or membership(sender) == "ban":
                return False
            jr_ev = state.get((JR, ""))
            rule = jr_ev.content.get("join_rule") if jr_ev else "invite"
            if rule == "public":
                return True
            return rule in ("invite", "knock") and membership(sender) in ("invite", "join")
        if m == "invite":
            return (membership(sender) == "join" and membership(target) not in ("join", "ban")
                    and level(sender) >= setting("invite", 0))
        if m == "leave":
            if sender == target:
                return membership(sender) in ("invite", "join", "knock")
            if membership(sender) != "join":
                return False
            if membership(target) == "ban" and level(sender) < setting("ban", 50):
                return False
            return level(sender) >= setting("kick", 50) and level(target) < level(sender)
        if m == "ban":
            return (membership(sender) == "join" and level(sender) >= setting("ban", 50)
                    and level(target) < level(sender))
        return False
    if membership(sender) != "join":
        return False
    events = pl_ev.content.get("events", {}) if pl_ev else {}
    if event.type in events:
        required = _level(events[event.type], 0)
    elif event.state_key is not None:
        required = setting("state_default", 50 if pl_ev else 0)
    else:
        required = setting("events_default", 0)
    if level(sender) < required:
        return False
    if event.state_key and event.state_key.startswith("@") and event.state_key != sender:
        return False
    if event.type == PL and pl_ev is not None:
        mine = level(sender)
        old, new = pl_ev.content, event.content
        for name in ("users_default", "events_default", "state_default", "ban", "kick",
                     "redact", "invite"):
            if old.get(name) != new.get(name):
                if _level(old.get(name), 0) > mine or _level(new.get(name), 0) > mine:
                    return False
        ou, nu = old.get("users", {}), new.get("users", {})
        for user in set(ou) | set(nu):
            if ou.get(user) == nu.get(user):
                continue
            if user != sender and user in ou and _level(ou[user], 0) >= mine:
                return False
            if user in nu and _level(nu[user], 0) > mine:
                return False
    return True


def real_auth_check():
    """``auth_check`` backed by the real :class:`~fedserver.auth.engine.AuthEngine`, or
    ``None`` if the engine is not importable."""
    try:
        from fedserver.auth.engine import AuthEngine
        from fedserver.auth.plugins import make_plugin_manager
    except ImportError:
        return None
    engine = AuthEngine(make_plugin_manager(load_entrypoints=False))

    def auth_check(event: Event, state: Mapping[tuple[str, str], Event]) -> bool:
        return engine.check_against_state(event, state).allowed

    return auth_check
