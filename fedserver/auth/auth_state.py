"""AuthState: the read-only view of the room that auth hooks judge an event against."""

from __future__ import annotations

from typing import Any, Callable, Collection, Container, Mapping

from fedserver.auth.power_levels import INFINITE_POWER, PowerLevels
from fedserver.auth.selection import (
    JOIN_RULES_KEY, MEMBER, POWER_LEVELS_KEY, THIRD_PARTY_INVITE,
)
from fedserver.events.model import Event
from fedserver.room_versions import SPEC_ROOM_VERSIONS, RoomVersion

_SPEC_IDS = frozenset(v.identifier for v in SPEC_ROOM_VERSIONS)

_UNSET = object()


class AuthState:
    """What the auth rules may consult about the room when authorising one event.

    It is built by :class:`~fedserver.auth.engine.AuthEngine` from the event's auth events
    (cited or selected from a state) and computes everything lazily, so a rule pays only
    for what it reads.  Hooks must treat it as read-only.

    :ivar room_version: the room version the event is judged under.
    :ivar event: the event being authorised.
    :ivar auth_events: ``(type, state_key)`` to :class:`Event`: exactly the auth events
        (cited, or selected from a state).  From room v12 the create event is never among
        them; use :attr:`create`.
    :ivar create: the room's ``m.room.create`` event, or ``None`` if unknown.
    :ivar verified_servers: the servers whose signatures on :attr:`event` the caller
        verified, or ``None`` if the caller did not say (see
        :meth:`signed_by_server`).
    :ivar is_spec_version: whether :attr:`room_version` is one the spec defines (rules
        beyond the spec apply only to versions that are not).
    """

    __slots__ = (
        "room_version", "event", "auth_events", "create", "verified_servers",
        "is_spec_version", "_room_versions", "_pl_cache", "_join_rule_allows", "_power_levels", "_creators",
    )

    def __init__(
        self,
        room_version: RoomVersion,
        event: Event,
        auth_events: Mapping[tuple[str, str], Event],
        create: Event | None,
        *,
        verified_servers: Collection[str] | None = None,
        is_spec_version: bool = True,
        room_versions: Container[str] | None = None,
        power_levels_cache: dict[str, tuple[Any, RoomVersion, PowerLevels]] | None = None,
        join_rule_allows: Callable[["AuthState", str], bool] | None = None,
    ):
        """
        :param room_version: the version to judge under.
        :param event: the event being authorised.
        :param auth_events: its auth events by ``(type, state_key)``.
        :param create: the room's create event.
        :param verified_servers: servers whose signatures the caller verified.
        :param is_spec_version: whether ``room_version`` is a spec version.
        :param room_versions: the room version identifiers this server recognises
            (default: the spec's).
        :param power_levels_cache: a dict shared between checks, power levels event id to
            ``(content, room version, parsed PowerLevels)``, so they are parsed once.
        :param join_rule_allows: consulted by :meth:`join_rule_allows` (the engine passes
            its call of the ``fedserver_auth_join_rule_allows`` hook).
        """
        self.room_version = room_version
        self.event = event
        self.auth_events = auth_events
        self.create = create
        self.verified_servers = verified_servers
        self.is_spec_version = is_spec_version
        self._room_versions = room_versions
        self._pl_cache = power_levels_cache if power_levels_cache is not None else {}
        self._join_rule_allows = join_rule_allows
        self._power_levels = _UNSET
        self._creators = _UNSET

    @classmethod
    def for_engine(
        cls,
        room_version: RoomVersion,
        event: Event,
        auth_events: Mapping[tuple[str, str], Event],
        create: Event | None,
        verified_servers: Collection[str] | None,
        is_spec_version: bool,
        room_versions: Container[str] | None,
        power_levels_cache: dict[str, tuple[Any, RoomVersion, PowerLevels]],
        join_rule_allows: Callable[["AuthState", str], bool] | None,
    ) -> "AuthState":
        """The same as the constructor, every argument given, positionally: what the
        engine builds for each check (the keyword-argument constructor cost several
        times more than the attributes it sets, which counts when state resolution
        checks ten thousand events).
        """
        self = cls.__new__(cls)
        self.room_version = room_version
        self.event = event
        self.auth_events = auth_events
        self.create = create
        self.verified_servers = verified_servers
        self.is_spec_version = is_spec_version
        self._room_versions = room_versions
        self._pl_cache = power_levels_cache
        self._join_rule_allows = join_rule_allows
        self._power_levels = _UNSET
        self._creators = _UNSET
        return self

    # -- power levels --------------------------------------------------------------

    @property
    def power_levels_event(self) -> Event | None:
        """The current ``m.room.power_levels`` event, if any."""
        return self.auth_events.get(POWER_LEVELS_KEY)

    @property
    def power_levels(self) -> PowerLevels:
        """The parsed power levels, defaults resolved (also when there is no event)."""
        pl = self._power_levels
        if pl is _UNSET:
            ev = self.power_levels_event
            if ev is None:
                pl = PowerLevels.from_content(None, self.room_version)
            else:
                # Cached by event id, but only for the same content in the same room
                # version: an event id hashes the *redacted* event, so two power levels
                # events can share one while differing in what redaction drops
                # (``notifications``; ``invite`` before v11).
                cached = self._pl_cache.get(ev.event_id)
                content, rv = ev.content, self.room_version
                if (
                    cached is not None
                    and (cached[1] is rv or cached[1] == rv)
                    and (cached[0] is content or cached[0] == content)
                ):
                    pl = cached[2]
                else:
                    pl = PowerLevels.from_content(content, rv)
                    if len(self._pl_cache) >= 4096:
                        self._pl_cache.clear()
                    self._pl_cache[ev.event_id] = (content, rv, pl)
            self._power_levels = pl
        return pl

    @property
    def creators(self) -> frozenset[str]:
        """The room creators: from room v12 the create event's ``sender`` plus
        ``content.additional_creators``; in v11 its ``sender``; before, its
        ``content.creator``.  Empty if the create event is unknown."""
        creators = self._creators
        if creators is _UNSET:
            creators = frozenset()
            create = self.create
            if create is not None:
                rv = self.room_version
                if rv.implicit_room_creator:
                    found = {create.sender}
                    if rv.privileged_creators:
                        extra = create.content.get("additional_creators")
                        if isinstance(extra, list):
                            found.update(u for u in extra if isinstance(u, str))
                    creators = frozenset(found)
                else:
                    creator = create.content.get("creator")
                    if isinstance(creator, str):
                        creators = frozenset((creator,))
            self._creators = creators
        return creators

    @property
    def first_join_creator(self) -> str | None:
        """The user whose join straight after the create event is allowed (rule "If the
        only previous event is an m.room.create and the state_key is the creator"): the
        create event's ``content.creator`` before v11, its ``sender`` from v11."""
        create = self.create
        if create is None:
            return None
        if self.room_version.implicit_room_creator:
            return create.sender
        creator = create.content.get("creator")
        return creator if isinstance(creator, str) else None

    def user_level(self, user_id: str) -> int | float:
        """The power level of ``user_id``: infinite for creators from room v12; else their
        entry in ``users`` or ``users_default``; with no power levels event, 100 for the
        creator and 0 for everyone else."""
        rv = self.room_version
        if rv.privileged_creators and user_id in self.creators:
            return INFINITE_POWER
        if self.power_levels_event is None:
            return 100 if user_id in self.creators else 0
        pl = self.power_levels
        return pl.users.get(user_id, pl.users_default)

    @property
    def sender_level(self) -> int | float:
        """:meth:`user_level` of the event's sender."""
        return self.user_level(self.event.sender)

    def required_level(self) -> int:
        """The *required power level* for the event being authorised."""
        ev = self.event
        return self.power_levels.required_level(ev.type, ev.state_key is not None)

    # Strict reads: what the built-in rules use.  Where the methods above fall back to a
    # default for a value that is present but not a power level of this room version
    # (possible only in a room's first power levels event before v10), these raise
    # UnreadablePowerLevel, which the engine turns into a denial by the rule being
    # applied.

    def checked_user_level(self, user_id: str) -> int | float:
        """:meth:`user_level`, raising
        :class:`~fedserver.auth.power_levels.UnreadablePowerLevel` if the value it needs
        cannot be read."""
        rv = self.room_version
        if rv.privileged_creators and user_id in self.creators:
            return INFINITE_POWER
        if self.power_levels_event is None:
            return 100 if user_id in self.creators else 0
        return self.power_levels.checked_user_level(user_id)

    def checked_level(self, name: str) -> int:
        """A named level (``"invite"``, ``"kick"``, ``"ban"``, ``"redact"``...) or its
        default, raising :class:`~fedserver.auth.power_levels.UnreadablePowerLevel` if it
        cannot be read."""
        return self.power_levels.checked(name)

    def checked_required_level(self) -> int:
        """:meth:`required_level`, raising
        :class:`~fedserver.auth.power_levels.UnreadablePowerLevel` if the value it needs
        cannot be read."""
        ev = self.event
        return self.power_levels.checked_required_level(ev.type, ev.state_key is not None)

    # -- membership ----------------------------------------------------------------

    def member_event(self, user_id: str) -> Event | None:
        """The ``m.room.member`` auth event of ``user_id``, if any."""
        return self.auth_events.get((MEMBER, user_id))

    def membership(self, user_id: str) -> str | None:
        """The current membership of ``user_id`` (``None`` if none or malformed)."""
        ev = self.auth_events.get((MEMBER, user_id))
        return None if ev is None else ev.membership

    @property
    def sender_membership(self) -> str | None:
        """The sender's current membership."""
        return self.membership(self.event.sender)

    @property
    def target_membership(self) -> str | None:
        """The *target user*'s (``state_key``'s) current membership."""
        sk = self.event.state_key
        return None if sk is None else self.membership(sk)

    # -- join rules and invites ------------------------------------------------------

    @property
    def join_rules_event(self) -> Event | None:
        """The current ``m.room.join_rules`` event, if any (only cited for membership
        events)."""
        return self.auth_events.get(JOIN_RULES_KEY)

    @property
    def join_rule(self) -> str | None:
        """The room's join rule: ``content.join_rule`` of the join rules event.

        A room without a join rules event, or whose join rules event has no
        ``join_rule``, is ``"invite"``: the spec's rules name no default, and every
        implementation we know (Synapse, ruma) reads an absent rule as ``invite``, so
        only invited (or joined) users may join and nobody may knock.  A ``join_rule``
        that is not a string is ``None``, a rule no branch admits.
        """
        ev = self.auth_events.get(JOIN_RULES_KEY)
        if ev is None or "join_rule" not in ev.content:
            return "invite"
        rule = ev.content["join_rule"]
        return rule if isinstance(rule, str) else None

    def third_party_invite(self, token: str) -> Event | None:
        """The ``m.room.third_party_invite`` auth event with ``state_key`` ``token``."""
        return self.auth_events.get((THIRD_PARTY_INVITE, token))

    def join_rule_allows(self, join_rule: str) -> bool:
        """Whether a plugin admits a join under ``join_rule``, a join rule this room
        version's spec rules do not know.  Always ``False`` for spec room versions."""
        if self.is_spec_version or self._join_rule_allows is None:
            return False
        return self._join_rule_allows(self, join_rule)

    def is_known_room_version(self, identifier: object) -> bool:
        """Whether ``identifier`` is a room version this server recognises (rule 1.3)."""
        if not isinstance(identifier, str):
            return False
        known = self._room_versions if self._room_versions is not None else _SPEC_IDS
        return identifier in known

    # -- signatures --------------------------------------------------------------------

    def signed_by_server(self, server_name: str) -> bool:
        """Whether the event is signed by ``server_name``.

        Signature *verification* needs keys, which the pure auth layer cannot fetch: the
        caller verifies signatures before auth and passes ``verified_servers``.  When it
        did, this answers from that set.  When it did not (``None``), this checks only that
        a signature from ``server_name`` is present.
        """
        if self.verified_servers is not None:
            return server_name in self.verified_servers
        sigs = self.event.signatures.get(server_name)
        return isinstance(sigs, dict) and bool(sigs)
