"""Every room version we know, as frozen data whose flags the rest of the code reads.

Nothing outside this module compares version strings: code asks a :class:`RoomVersion`
for a flag (``rv.knocking``, ``rv.event_format``...).  The flags follow the changes listed
in the specification's room version pages (``content/rooms/v1.md`` ... ``v12.md``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Iterable, Mapping


class EventFormat(enum.IntEnum):
    """How events are shaped and identified.

    ``V1``: rooms v1-v2; ``event_id`` is a field of the event (``$local:server``), and
    ``prev_events`` / ``auth_events`` are ``[event_id, {hashes}]`` pairs.
    ``V2``: room v3; the event id is ``$`` + unpadded standard base64 of the reference hash.
    ``V3``: rooms v4-v11; as V2 with URL-safe base64.
    ``V4``: room v12+; as V3, and the room id is derived from the create event's id.
    """

    V1 = 1
    V2 = 2
    V3 = 3
    V4 = 4


class StateResAlgorithm(enum.Enum):
    """Which state resolution algorithm a room version uses."""

    V1 = "v1"
    V2 = "v2"
    V2_1 = "v2.1"


@dataclass(frozen=True, slots=True)
class RoomVersion:
    """One room version: an identifier plus every behaviour flag that differs between versions.

    :ivar identifier: the version string as it appears in ``m.room.create``.
    :ivar stable: whether the spec lists this version as stable.
    :ivar event_format: see :class:`EventFormat`.
    :ivar state_res: see :class:`StateResAlgorithm`.
    :ivar enforce_key_validity: v5+: a signing key must be valid at ``origin_server_ts``.
    :ivar special_case_aliases_auth: v1-5: ``m.room.aliases`` has its own auth rule (rule 4 in
        v1) and keeps ``aliases`` under redaction.
    :ivar strict_canonicaljson: v6+: floats, NaN and integers outside [-(2**53)+1, (2**53)-1]
        make an event invalid.
    :ivar limit_notifications_power_levels: v6+: ``notifications`` in power levels is checked
        like ``events`` (rules 10.2, 10.4 in v6+).
    :ivar knocking: v7+: ``knock`` membership and join rule.
    :ivar restricted_joins: v8+: ``restricted`` join rule and ``join_authorised_via_users_server``.
    :ivar knock_restricted: v10+: ``knock_restricted`` join rule.
    :ivar integer_power_levels: v10+: power level values must be integers, not strings.
    :ivar redaction_keeps_join_rule_allow: v8+: redaction keeps ``allow`` of ``m.room.join_rules``.
    :ivar redaction_keeps_authorising_user: v9+: redaction keeps
        ``join_authorised_via_users_server`` of ``m.room.member``.
    :ivar updated_redaction_rules: v11+: the v11 redaction algorithm (create keeps all content,
        ``redacts`` moves to content and is kept, power levels keep ``invite``, member keeps
        ``third_party_invite.signed``; ``origin``, ``membership``, ``prev_state`` no longer kept).
    :ivar implicit_room_creator: v11+: the creator is the create event's ``sender``; the
        ``creator`` content field is gone.
    :ivar redacts_in_content: v11+: ``m.room.redaction`` carries ``redacts`` in content.
    :ivar room_id_from_create_event: v12+: the room id is ``!`` + the create event's reference
        hash; the create event has no ``room_id`` and is never in ``auth_events``.
    :ivar privileged_creators: v12+: the create sender and ``additional_creators`` have infinite
        power and may not appear in power levels ``users``.
    """

    identifier: str
    stable: bool
    event_format: EventFormat
    state_res: StateResAlgorithm
    enforce_key_validity: bool
    special_case_aliases_auth: bool
    strict_canonicaljson: bool
    limit_notifications_power_levels: bool
    knocking: bool
    restricted_joins: bool
    knock_restricted: bool
    integer_power_levels: bool
    redaction_keeps_join_rule_allow: bool
    redaction_keeps_authorising_user: bool
    updated_redaction_rules: bool
    implicit_room_creator: bool
    redacts_in_content: bool
    room_id_from_create_event: bool
    privileged_creators: bool

    def __hash__(self) -> int:
        # Equal versions have equal identifiers, so the identifier alone is a valid hash,
        # and a cheap one (a str caches its hash): versions key lru_caches and dicts on
        # the auth path (rule_ids), where hashing every field cost more than the lookup.
        return hash(self.identifier)

    def derive(self, identifier: str, *, stable: bool = False, **changes) -> "RoomVersion":
        """A new version based on this one, e.g. for an experimental version registered by a
        plugin.

        :param identifier: the new version string (namespace unstable ones, ``org.example.x``).
        :param changes: flags to change.
        """
        return replace(self, identifier=identifier, stable=stable, **changes)


V1 = RoomVersion(
    identifier="1",
    stable=True,
    event_format=EventFormat.V1,
    state_res=StateResAlgorithm.V1,
    enforce_key_validity=False,
    special_case_aliases_auth=True,
    strict_canonicaljson=False,
    limit_notifications_power_levels=False,
    knocking=False,
    restricted_joins=False,
    knock_restricted=False,
    integer_power_levels=False,
    redaction_keeps_join_rule_allow=False,
    redaction_keeps_authorising_user=False,
    updated_redaction_rules=False,
    implicit_room_creator=False,
    redacts_in_content=False,
    room_id_from_create_event=False,
    privileged_creators=False,
)
V2 = V1.derive("2", stable=True, state_res=StateResAlgorithm.V2)
V3 = V2.derive("3", stable=True, event_format=EventFormat.V2)
V4 = V3.derive("4", stable=True, event_format=EventFormat.V3)
V5 = V4.derive("5", stable=True, enforce_key_validity=True)
V6 = V5.derive(
    "6",
    stable=True,
    special_case_aliases_auth=False,
    strict_canonicaljson=True,
    limit_notifications_power_levels=True,
)
V7 = V6.derive("7", stable=True, knocking=True)
V8 = V7.derive("8", stable=True, restricted_joins=True, redaction_keeps_join_rule_allow=True)
V9 = V8.derive("9", stable=True, redaction_keeps_authorising_user=True)
V10 = V9.derive("10", stable=True, knock_restricted=True, integer_power_levels=True)
V11 = V10.derive(
    "11",
    stable=True,
    updated_redaction_rules=True,
    implicit_room_creator=True,
    redacts_in_content=True,
)
V12 = V11.derive(
    "12",
    stable=True,
    event_format=EventFormat.V4,
    state_res=StateResAlgorithm.V2_1,
    room_id_from_create_event=True,
    privileged_creators=True,
)

#: The versions the spec defines, in order.
SPEC_ROOM_VERSIONS: tuple[RoomVersion, ...] = (V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12)

#: The version new rooms get unless asked otherwise.
DEFAULT_ROOM_VERSION: RoomVersion = V12


class UnknownRoomVersion(KeyError):
    """Raised when a room version identifier is not one this server supports."""


class RoomVersionRegistry:
    """The room versions one server supports: the spec's, plus any a plugin registers.

    Built once at start-up and passed to whatever needs it; never a module global that
    plugins mutate.
    """

    def __init__(self, extra: Iterable[RoomVersion] = ()):
        self._versions: dict[str, RoomVersion] = {v.identifier: v for v in SPEC_ROOM_VERSIONS}
        for version in extra:
            self.register(version)

    def register(self, version: RoomVersion) -> None:
        """Add an extra room version.

        :raises ValueError: if the identifier is already taken by a different version.
        """
        existing = self._versions.get(version.identifier)
        if existing is not None and existing != version:
            raise ValueError(f"room version {version.identifier!r} is already registered")
        self._versions[version.identifier] = version

    def get(self, identifier: str) -> RoomVersion:
        """The version named ``identifier``.

        :raises UnknownRoomVersion: if it is not supported here.
        """
        try:
            return self._versions[identifier]
        except (KeyError, TypeError):
            raise UnknownRoomVersion(identifier) from None

    def __contains__(self, identifier: object) -> bool:
        return isinstance(identifier, str) and identifier in self._versions

    def identifiers(self) -> list[str]:
        """Every supported identifier, spec versions first in order."""
        return list(self._versions)

    def capabilities(self) -> Mapping[str, str]:
        """``{identifier: "stable" | "unstable"}`` as the client capabilities API shows it."""
        return {k: ("stable" if v.stable else "unstable") for k, v in self._versions.items()}


def spec_version(identifier: str) -> RoomVersion:
    """The spec room version named ``identifier`` (no plugin versions).

    :raises UnknownRoomVersion: if it is not a spec version.
    """
    for version in SPEC_ROOM_VERSIONS:
        if version.identifier == identifier:
            return version
    raise UnknownRoomVersion(identifier)
