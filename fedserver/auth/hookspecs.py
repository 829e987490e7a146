"""The fedserver plugin surface: one pluggy hookspec per section of the spec's auth rules,
plus the policy (soft-fail), room-version registration, local-event signing and start-up
hooks.

Conventions for every ``fedserver_auth_*`` hook:

- Return ``None`` to raise no objection, or a :class:`~fedserver.auth.verdict.Deny` to
  reject the event.  Every implementation of the hook runs and every ``Deny`` is kept;
  any ``Deny`` rejects.  Returning ``None`` never *allows* anything the spec rules deny:
  a plugin can only add objections.
- The engine calls a hook only where the spec's control flow reaches that section (e.g.
  ``fedserver_auth_member_join`` only for ``m.room.member`` events with membership
  ``join`` that passed the earlier sections); after a section in which anything denied,
  the engine stops.
- ``auth_state`` is an :class:`~fedserver.auth.auth_state.AuthState`; ``event`` an
  :class:`~fedserver.events.model.Event`; ``room_version`` a
  :class:`~fedserver.room_versions.RoomVersion`.  Hooks must not mutate them and must not
  do I/O: they run per PDU and thousands of times in state resolution, and must give the
  same answer on every server.
- A rule beyond the spec changes what servers agree on, so it may only apply to a room
  version of the plugin's own (registered with ``fedserver_register_room_versions``):
  check ``room_version.identifier`` and return ``None`` for every other version.

Implement a hook with ``@hookimpl`` from this module; a hook name that does not exist here
makes start-up fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.defer import Deferred

    from fedserver.auth.auth_state import AuthState
    from fedserver.auth.verdict import Deny, SoftFail
    from fedserver.events.model import Event
    from fedserver.room_versions import RoomVersion
    from fedserver.storage.plugin_view import PluginStoreView

#: The project name shared by the markers, the plugin manager and the entry-point group.
PROJECT = "fedserver"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def fedserver_auth_create(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge an ``m.room.create`` event (spec rule 1).

    Called for every ``m.room.create`` event; nothing else is checked for it.  The
    built-in rule rejects ``prev_events`` (1.1), a ``room_id`` domain other than the
    sender's (1.2; from v12: any ``room_id``), an unknown ``content.room_version`` (1.3), a
    missing ``creator`` (1.4, v1-v10) and invalid ``additional_creators`` (1.4, v12+).

    :param event: the create event.
    :param auth_state: its :class:`AuthState`; ``auth_state.create`` is ``event`` itself
        and there are no auth events.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_room_create_event(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge whether the room's create event is known and governs ``event``.

    Room v12 rule 2 ("If the event's ``room_id`` is not an event ID for an accepted (not
    rejected) ``m.room.create`` event, with the sigil ``!`` instead of ``$``, reject") and
    v1-v11 rule 2.4 ("If there is no ``m.room.create`` event among the entries, reject").
    Called for every event that is not a create event, before the federation rule.

    :param event: the event being authorised.
    :param auth_state: ``auth_state.create`` is the create event found (or ``None``).
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_auth_events(
    event: Event, auth_events: Sequence[Event], room_version: RoomVersion
) -> Deny | None:
    """Judge the auth events an event cites (rule 2.1-2.3 and 2.5 before v12, 3.1-3.5 in
    v12).

    Called only when an event is checked against the auth events it cites
    (:meth:`AuthEngine.check`), not when it is checked against a state.  The built-in
    rule rejects duplicate ``(type, state_key)`` pairs, pairs the auth events selection
    does not call for, auth events that were themselves rejected
    (``Event.rejected_reason`` set) and auth events of another room (in every room
    version since MSC4307).

    :param event: the event being authorised (not a create event).
    :param auth_events: the cited auth events, as given, in order.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_federate(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge ``m.federate`` (rule 3; v12 rule 4): if the create event's content has
    ``m.federate: false``, only users of the create event sender's server may act.

    :param event: the event being authorised (not a create event).
    :param auth_state: its auth state (``auth_state.create`` is set).
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_aliases(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge an ``m.room.aliases`` event in room v1-v5 (rule 4), where it has its own
    rule: a ``state_key`` equal to the sender's domain; nothing else is checked.

    Called only when ``room_version.special_case_aliases_auth`` is set.

    :param event: the aliases event.
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_member(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge what every ``m.room.member`` event must satisfy, whatever its membership.

    Rule 5.1 (a ``state_key`` and a ``content.membership``; the built-in rule also wants
    the ``state_key`` to be a user ID, the *target user*), 5.2 from v8 (a
    ``join_authorised_via_users_server``, on any membership, needs a valid signature of
    that user's server) and the last sub-rule ("Otherwise, the membership is unknown.
    Reject.").  The engine
    then calls the hook for the membership: ``_member_join``, ``_member_invite`` or
    ``_member_third_party_invite``, ``_member_leave``, ``_member_ban``, ``_member_knock``.

    :param event: the membership event.
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_member_join(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge a membership ``join`` (rule 5.3 in v12 numbering): the creator's first join,
    sender is target, bans, and the join rules ``invite``, ``knock`` (v7+), ``restricted``
    (v8+), ``knock_restricted`` (v10+) and ``public``.

    For a join rule the room version's spec rules do not know, the built-in rule asks
    ``fedserver_auth_join_rule_allows`` (only in versions that are not spec versions).

    :param event: the join.
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_member_invite(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge a membership ``invite`` without ``content.third_party_invite`` (rule
    5.4.2-5.4.5 in v12 numbering): the sender is joined, the target is neither joined nor
    banned, and the sender has the *invite level*.

    :param event: the invite.
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_member_third_party_invite(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge a membership ``invite`` whose content has ``third_party_invite`` (rule 5.4.1
    in v12 numbering): target not banned, ``signed`` with ``mxid`` equal to the
    ``state_key`` and a ``token`` naming an ``m.room.third_party_invite`` sent by the same
    sender, and an ed25519 signature in ``signed`` by one of that event's public keys.

    :param event: the invite.
    :param auth_state: its auth state (``auth_state.third_party_invite(token)``).
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_member_leave(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge a membership ``leave``: leaving (sender is target: only from ``invite``,
    ``join`` or, v7+, ``knock``), and kicking or unbanning another user (rule 5.5 in v12
    numbering: sender joined, *ban level* to lift a ban, *kick level* and more power than
    the target).

    :param event: the leave.
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_member_ban(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge a membership ``ban`` (rule 5.6 in v12 numbering): sender joined, with the
    *ban level* and more power than the target.

    :param event: the ban.
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_member_knock(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge a membership ``knock`` (v7+; rule 5.7 in v12 numbering): join rule ``knock``
    (or ``knock_restricted`` from v10), sender is target, and the sender is not banned,
    invited or joined.

    :param event: the knock.
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_sender_in_room(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge the sender's membership for every event that is not a create, membership (or
    v1-v5 aliases) event (rule 6: "If the sender's current membership state is not
    join, reject").

    :param event: the event being authorised.
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_third_party_invite_event(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge an ``m.room.third_party_invite`` event (rule 7: allowed if and only if the
    sender has the *invite level*); nothing after rule 7 applies to it.

    :param event: the third-party invite event.
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_event_power(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge the sender's power against the event type's *required power level* (rule
    8), for every event reaching rule 8 (not create, membership, third-party invite or
    v1-v5 aliases events).

    :param event: the event being authorised.
    :param auth_state: its auth state (``auth_state.required_level()``,
        ``auth_state.sender_level``).
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_state_key_ownership(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge who may use a ``state_key`` (rule 9: "If the event has a state_key that
    starts with an @ and does not match the sender, reject").

    :param event: the event being authorised.
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_power_levels(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge an ``m.room.power_levels`` event (rule 10): well-formed levels (integers from
    v10, or integer strings before), valid user ids, no creators in ``users`` (v12), and
    no change to a level above the sender's own.

    :param event: the new power levels event.
    :param auth_state: its auth state; ``auth_state.power_levels_event`` is the previous
        one (``None`` if there is none).
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_redaction(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge an ``m.room.redaction`` in room v1-v2 (rule 11: the *redact level*, or the
    same domain as the redacted event's id).  From v3 redactions have no auth rule of
    their own and this hook is not called.

    :param event: the redaction.
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_event(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Judge any event the spec's rules allowed.  The built-in rules do not implement it:
    it is where a plugin adds a rule for its own room version that does not fit one
    section (e.g. about its own event types).

    :param event: the event being authorised (any type, including create events).
    :param auth_state: its auth state.
    :param room_version: the version the event is judged under.
    :returns: ``None`` for no objection, a ``Deny`` to reject.
    """


@hookspec
def fedserver_auth_join_rule_allows(
    event: Event, auth_state: AuthState, room_version: RoomVersion, join_rule: str
) -> bool | None:
    """Admit a join under a join rule the spec does not define, in a plugin's own room
    version.

    Asked by the built-in join rule only when the room version is not a spec version,
    the join passed the spec's checks up to the join rule (sender is target, not banned),
    and ``join_rule`` is not one the version's flags define.  Return ``True`` to admit
    the join, ``None`` to abstain; the join is admitted if any implementation returns
    ``True``.  It can never admit a join in a spec room version, nor undo a denial.

    :param event: the join.
    :param auth_state: its auth state (``auth_state.join_rules_event`` holds the content).
    :param room_version: the (non-spec) version the event is judged under.
    :param join_rule: ``content.join_rule`` of the join rules event.
    :returns: ``True`` to admit, ``None`` to abstain.
    """


@hookspec
def fedserver_check_event_policy(
    event: Event, room_version: RoomVersion, state: Mapping[tuple[str, str], Event]
) -> SoftFail | None | Deferred:
    """Apply a local policy (spam checking, a policy server...) to an event that passed
    the auth rules.

    The verdict can only soft-fail the event (not relayed to local clients, not used as
    a prev event), never reject it: local judgement must not change what servers agree
    on.  Called through :func:`fedserver.auth.policy.check_event_policy`, never by the
    auth engine.  May return a ``Deferred`` (e.g. to ask a policy server) firing with
    ``None`` or a ``SoftFail``.

    :param event: the event.
    :param room_version: its room version.
    :param state: the current state of the room, ``(type, state_key)`` to event.
    :returns: ``None`` to abstain, a ``SoftFail``, or a ``Deferred`` firing with either.
    """


@hookspec
def fedserver_sign_local_event(
    event: Event, room_version: RoomVersion, state: Mapping[tuple[str, str], str]
) -> Mapping[str, Mapping[str, str]] | None | Deferred:
    """Add other servers' signatures to an event this server is about to send (e.g. the
    signature of the room's policy server, MSC4284 / spec "Policy Servers").

    Called by :class:`~fedserver.handlers.rooms.creator.EventCreator` for each event it builds
    for a local user, once the event is hashed and signed with our key and before the
    pipeline checks and persists it; what is added is persisted and sent with the event.
    Signatures are not covered by the event id, the content hash or other signatures, so
    adding one changes nothing else.  Not called when no plugin implements it.  Runs
    while the room's new events wait for this one: answer quickly (use a timeout).

    :param event: the new event (do not mutate it: return what to add).
    :param room_version: its room version.
    :param state: the room's current state the event was built on,
        ``(type, state_key)`` to event id.
    :returns: ``None`` to add nothing, or ``{server_name: {key_id: signature}}`` (unpadded
        base64), or a ``Deferred`` firing with either.  Signatures of our own server
        name are ignored, as are malformed entries; an implementation that raises or
        fails is logged and adds nothing.
    """


@hookspec
def fedserver_on_start(
    reactor: Any,
    server_name: str,
    federation_client: Any,
    store: PluginStoreView,
    plugin_manager: pluggy.PluginManager,
    plugin_config: Mapping[str, Mapping[str, Any]],
) -> None:
    """The server has built its components and is about to serve requests: set up what a
    plugin needs from the running server.

    A plugin that makes requests or reads storage keeps what it needs here.  Hooks of
    this module receive no server, so a plugin that needs one registers its own per-server
    implementations into ``plugin_manager`` (one server's plugin manager is never shared
    with another server, even in one process).  Called once per start; an implementation
    that raises stops the start.

    :param reactor: the server's reactor (``seconds``, ``callLater``).
    :param server_name: our server name.
    :param federation_client: the
        :class:`~fedserver.federation.client.FederationClient` (requests signed with
        X-Matrix as our server).
    :param store: a :class:`~fedserver.storage.plugin_view.PluginStoreView`: read-only
        access to rooms' events, current state and members (never the whole store).
    :param plugin_manager: this server's plugin manager.
    :param plugin_config: each plugin's options from the configuration, by plugin name
        (``{}`` for a plugin without any).
    """


@hookspec
def fedserver_register_room_versions() -> Iterable[RoomVersion]:
    """Contribute extra room versions (e.g. an experimental version made with
    ``RoomVersion.derive``, identifier namespaced like ``org.example.v12-may-join``).

    This is the only safe home for a rule beyond the spec: every server in a room must
    run the same rules, and a room of a version only servers with the plugin know can
    only be joined by those servers.

    :returns: an iterable of :class:`RoomVersion`.
    """


def hookspec_names() -> list[str]:
    """The names of every hookspec declared here, in order."""
    return [name for name, value in globals().items()
            if name.startswith(PROJECT + "_") and callable(value)]
