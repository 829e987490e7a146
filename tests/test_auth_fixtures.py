"""Test helpers for the auth tests: build rooms of plain Events without signing."""

from __future__ import annotations

from typing import Any

from fedserver.auth.engine import AuthEngine
from fedserver.auth.plugins import make_plugin_manager
from fedserver.auth.selection import select_auth_events
from fedserver.auth.verdict import AuthResult
from fedserver.events.model import Event
from fedserver.room_versions import EventFormat, RoomVersion

ALICE = "@alice:a.example"
BOB = "@bob:b.example"
CAROL = "@carol:c.example"
DAVE = "@dave:d.example"


def make_event(
    rv: RoomVersion,
    event_id: str,
    type: str,
    sender: str,
    *,
    room_id: str | None,
    content: dict[str, Any] | None = None,
    state_key: str | None = None,
    prev: list[str] = (),
    auth: list[str] = (),
    depth: int = 1,
    extra: dict[str, Any] | None = None,
) -> Event:
    """An Event straight from a dict, with an explicit event id (no hashes or signing)."""
    if rv.event_format == EventFormat.V1:
        prev_edges: list[Any] = [[p, {"sha256": "x"}] for p in prev]
        auth_edges: list[Any] = [[a, {"sha256": "x"}] for a in auth]
    else:
        prev_edges, auth_edges = list(prev), list(auth)
    pdu: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "content": {} if content is None else content,
        "prev_events": prev_edges,
        "auth_events": auth_edges,
        "depth": depth,
        "origin_server_ts": 1000 + depth,
        "hashes": {"sha256": "x"},
        "signatures": {sender.split(":", 1)[1]: {"ed25519:k": "sig"}},
    }
    if room_id is not None:
        pdu["room_id"] = room_id
    if rv.event_format == EventFormat.V1:
        pdu["event_id"] = event_id
    if state_key is not None:
        pdu["state_key"] = state_key
    if extra:
        pdu.update(extra)
    return Event.from_pdu(pdu, rv, event_id=event_id)


class Room:
    """A room being built event by event, with its current state.

    ``Room(rv)`` holds only the create event (sender ``ALICE``); :meth:`standard` adds
    Alice's join, power levels (Alice 100) and join rules.
    """

    def __init__(
        self,
        rv: RoomVersion,
        creator: str = ALICE,
        *,
        create_content: dict[str, Any] | None = None,
        engine: AuthEngine | None = None,
    ):
        self.rv = rv
        self.engine = engine if engine is not None else AuthEngine(make_plugin_manager(load_entrypoints=False))
        self.count = 0
        self.depth = 0
        self.state: dict[tuple[str, str], Event] = {}
        self.last: str | None = None
        content = {} if create_content is None else dict(create_content)
        if not rv.implicit_room_creator:
            content.setdefault("creator", creator)
        content.setdefault("room_version", rv.identifier)
        domain = creator.split(":", 1)[1]
        if rv.room_id_from_create_event:
            self.room_id = "!create0"
            create_id, room_id = "$create0", None
        else:
            self.room_id = "!room:" + domain
            create_id, room_id = f"$create0:{domain}", self.room_id
        self.create = make_event(
            rv, create_id, "m.room.create", creator, room_id=room_id, content=content,
            state_key="",
        )
        self.add(self.create)

    def standard(self, join_rule: str = "public", pl_users: dict[str, Any] | None = None,
                 pl_extra: dict[str, Any] | None = None) -> "Room":
        """Alice joins, sets power levels and join rules."""
        creator = self.create.sender
        self.add(self.member(creator, "join"))
        users = {creator: 100} if pl_users is None else pl_users
        if self.rv.privileged_creators:
            users = {u: v for u, v in users.items() if u != creator}
        self.add(self.power_levels({"users": users, **(pl_extra or {})}))
        self.add(self.join_rules(join_rule))
        return self

    # -- building ------------------------------------------------------------------

    def event(
        self,
        type: str,
        sender: str,
        content: dict[str, Any] | None = None,
        state_key: str | None = None,
        *,
        prev: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> Event:
        """A new event on top of the room (not added to the state); its auth events are
        selected from the current state."""
        self.count += 1
        domain = sender.split(":", 1)[1] if ":" in sender else "x.example"
        eid = event_id or f"${self.count}:{domain}"
        fields = {"type": type, "sender": sender, "content": content or {}}
        if state_key is not None:
            fields["state_key"] = state_key
        auth = select_auth_events(self.rv, fields, self.state)
        return make_event(
            self.rv, eid, type, sender, room_id=self.room_id, content=content,
            state_key=state_key, prev=[self.last] if prev is None else prev, auth=auth,
            depth=self.depth + 1, extra=extra,
        )

    def member(self, user: str, membership: str, sender: str | None = None, **content: Any) -> Event:
        return self.event(
            "m.room.member", sender or user, {"membership": membership, **content}, user
        )

    def power_levels(self, content: dict[str, Any], sender: str | None = None) -> Event:
        return self.event("m.room.power_levels", sender or self.create.sender, content, "")

    def join_rules(self, rule: str, sender: str | None = None, **content: Any) -> Event:
        return self.event(
            "m.room.join_rules", sender or self.create.sender, {"join_rule": rule, **content}, ""
        )

    def message(self, sender: str, body: str = "hi") -> Event:
        return self.event("m.room.message", sender, {"msgtype": "m.text", "body": body})

    def add(self, event: Event) -> Event:
        """Accept ``event`` into the room without checking it."""
        if event.state_key is not None:
            self.state[(event.type, event.state_key)] = event
        self.last = event.event_id
        self.depth += 1
        return event

    def join(self, user: str) -> Event:
        """Add ``user``'s join (unchecked)."""
        return self.add(self.member(user, "join"))

    # -- checking ------------------------------------------------------------------

    def auth_events_of(self, event: Event) -> list[Event]:
        by_id = {e.event_id: e for e in self.state.values()}
        return [by_id[i] for i in event.auth_event_ids if i in by_id]

    def check(self, event: Event, **kwargs: Any) -> AuthResult:
        """Check ``event`` both ways (cited auth events, and the current state) and insist
        the two agree; return the cited-auth-events result."""
        cited = self.engine.check(
            event, self.auth_events_of(event), create_event=self.create, **kwargs
        )
        against = self.engine.check_against_state(event, self.state, **kwargs)
        if cited.allowed != against.allowed or cited.rule != against.rule:
            raise AssertionError(f"check {cited} != check_against_state {against}")
        return cited

    def send(self, event: Event) -> AuthResult:
        """Check ``event`` and add it if allowed."""
        result = self.check(event)
        if result.allowed:
            self.add(event)
        return result


def pick(rv: RoomVersion, table: dict[str, str]) -> str:
    """The expected rule label for ``rv`` from ``{"1-5": "5.2.3", "6-11": ..., "12": ...}``."""
    n = int(rv.identifier)
    for span, number in table.items():
        lo, _, hi = span.partition("-")
        if int(lo) <= n <= int(hi or lo):
            return f"v{n} {number}"
    raise KeyError(f"no expectation for room version {n}")


class AuthAssertions:
    """Assertions on :class:`AuthResult` for trial test cases."""

    def assertAllowed(self, result: AuthResult) -> None:
        if not result.allowed:
            self.fail(f"expected the event to be allowed, got {result.denials}")  # type: ignore[attr-defined]

    def assertDenied(self, result: AuthResult, rule: str | None = None) -> None:
        if result.allowed:
            self.fail(f"expected a denial under {rule}, the event was allowed")  # type: ignore[attr-defined]
        if rule is not None and result.rule != rule:
            self.fail(f"expected a denial under {rule}, got {result.denials}")  # type: ignore[attr-defined]
