"""AuthEngine: the spec's authorization control flow, calling the auth hooks in spec order."""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Sequence

import pluggy

from fedserver.auth import plugins
from fedserver.auth.auth_state import AuthState
from fedserver.auth.power_levels import PowerLevels, UnreadablePowerLevel
from fedserver.auth.rule_ids import redaction_is_auth_rule, rule_id
from fedserver.auth.selection import CREATE, CREATE_KEY, MEMBER, select_from_state
from fedserver.auth.verdict import ALLOWED, AuthResult, Deny
from fedserver.events.model import Event
from fedserver.room_versions import SPEC_ROOM_VERSIONS, RoomVersion, RoomVersionRegistry

#: Every hook the engine calls, by the role it plays.
AUTH_HOOKS = (
    "fedserver_auth_create",
    "fedserver_auth_room_create_event",
    "fedserver_auth_auth_events",
    "fedserver_auth_federate",
    "fedserver_auth_aliases",
    "fedserver_auth_member",
    "fedserver_auth_member_join",
    "fedserver_auth_member_invite",
    "fedserver_auth_member_third_party_invite",
    "fedserver_auth_member_leave",
    "fedserver_auth_member_ban",
    "fedserver_auth_member_knock",
    "fedserver_auth_sender_in_room",
    "fedserver_auth_third_party_invite_event",
    "fedserver_auth_event_power",
    "fedserver_auth_state_key_ownership",
    "fedserver_auth_power_levels",
    "fedserver_auth_redaction",
    "fedserver_auth_event",
    "fedserver_auth_join_rule_allows",
)

_MEMBERSHIP_HOOKS = {
    "join": "fedserver_auth_member_join",
    "invite": "fedserver_auth_member_invite",
    "leave": "fedserver_auth_member_leave",
    "ban": "fedserver_auth_member_ban",
    "knock": "fedserver_auth_member_knock",
}

# The spec section each hook applies, for denials the engine words itself (a power level
# the rule needs cannot be read).
_SECTIONS = {
    "fedserver_auth_member_join": ("member", "join"),
    "fedserver_auth_member_invite": ("member", "invite"),
    "fedserver_auth_member_leave": ("member", "leave"),
    "fedserver_auth_member_ban": ("member", "ban"),
    "fedserver_auth_third_party_invite_event": ("third_party_invite",),
    "fedserver_auth_event_power": ("event_power",),
    "fedserver_auth_power_levels": ("power_levels",),
    "fedserver_auth_redaction": ("redaction",),
}

_THIRD_PARTY_INVITE = "m.room.third_party_invite"
_POWER_LEVELS = "m.room.power_levels"
_REDACTION = "m.room.redaction"
_ALIASES = "m.room.aliases"

# The arguments most implementations take, in this order: called without a lookup per
# argument.
_STANDARD_ARGS = ("event", "auth_state", "room_version")

# (plugin name, function, argument names) for one hook implementation.
_Impl = tuple[str, Callable[..., Any], tuple[str, ...]]


# Runs every implementation of one hook: (event, auth_state, room_version) -> denials.
_Runner = Callable[[Event, AuthState, RoomVersion], tuple[Deny, ...]]


def _no_denials(event: Event, auth_state: AuthState, rv: RoomVersion) -> tuple[Deny, ...]:
    return ()


def _raised(hook: str, plugin_name: str, e: Exception) -> Deny:
    """The denial for an implementation that raised: a plugin bug must not crash
    ingestion, so it fails closed."""
    return Deny(f"{hook} raised {type(e).__name__}: {e}", f"{plugin_name} error", plugin_name)


def _own_denial(hook: str, plugin_name: str, result: Any) -> Deny:
    """An implementation's non-``None`` result as a denial in the name of the plugin it
    was registered under (a result that is not a :class:`Deny` is itself a denial)."""
    if type(result) is not Deny:
        return Deny(
            f"{hook} returned {type(result).__name__}, not None or Deny",
            f"{plugin_name} error", plugin_name,
        )
    return Deny(result.reason, result.rule, plugin_name)


class AuthHookError(Exception):
    """A plugin implements an auth hook in a way the engine cannot call (e.g. as a
    wrapper)."""


class AuthEngine:
    """Authorises events: the spec's rules and every plugin's, as pluggy hooks.

    Build it once, after every plugin is registered (see
    :func:`fedserver.auth.plugins.make_plugin_manager`), and share it: it keeps a small
    cache of parsed power levels.  Pure and synchronous: no I/O, no Deferreds.

    Two entry points:

    - :meth:`check` judges an event against the auth events it cites (check 4 of the
      spec's "Checks performed on receipt of a PDU"), including rule 3 (v12 numbering) on
      those auth events;
    - :meth:`check_against_state` judges it against a state (checks 5 and 6, soft failure,
      and the iterative auth checks of state resolution), selecting the auth events from
      that state per the auth events selection algorithm.
    """

    def __init__(
        self,
        plugin_manager: pluggy.PluginManager,
        room_versions: RoomVersionRegistry | None = None,
        *,
        essential_plugins: Collection[str] | None = None,
    ):
        """
        :param plugin_manager: a plugin manager holding the hookspecs and the built-in
            rules (from :func:`~fedserver.auth.plugins.make_plugin_manager`).
        :param room_versions: the versions this server knows (rule 1.3: a create event
            naming another version is rejected); by default the spec's plus those the
            plugins register.
        :param essential_plugins: names of the built-in rule plugins, whose results are
            listed first; by default :data:`fedserver.auth.plugins.ESSENTIAL_PLUGINS`.
        :raises AuthHookError: if an auth hook is implemented as a wrapper.
        """
        self._pm = plugin_manager
        if room_versions is None:
            room_versions = RoomVersionRegistry(plugins.registered_room_versions(plugin_manager))
        self.room_versions = room_versions
        self._essential = frozenset(
            plugins.ESSENTIAL_PLUGINS if essential_plugins is None else essential_plugins
        )
        self._spec_by_identifier = {v.identifier: v for v in SPEC_ROOM_VERSIONS}
        self._pl_cache: dict[str, tuple[Any, RoomVersion, PowerLevels]] = {}
        self._impls: dict[str, tuple[_Impl, ...]] = {}
        self._join_rule_allows_hook = self._join_rule_allows  # bound once, used per check
        self.reload_hooks()

    # -- hook plumbing -----------------------------------------------------------------

    def reload_hooks(self) -> None:
        """Re-read the hook implementations from the plugin manager (call after
        registering or unregistering a plugin on a live engine).

        :raises AuthHookError: if an auth hook is implemented as a wrapper.
        """
        impls = {}
        for name in AUTH_HOOKS:
            caller = getattr(self._pm.hook, name, None)
            if caller is None:
                impls[name] = ()
                continue
            found = []
            # pluggy lists implementations in reverse call order; keep call order, but
            # put the built-in (essential) rules first so spec denials are listed first.
            for impl in reversed(caller.get_hookimpls()):
                if impl.hookwrapper or impl.wrapper:
                    raise AuthHookError(
                        f"plugin {impl.plugin_name!r} implements {name} as a wrapper; "
                        "auth hooks must return None or a Deny"
                    )
                found.append((impl.plugin_name, impl.function, tuple(impl.argnames)))
            found.sort(key=lambda i: i[0] not in self._essential)
            impls[name] = tuple(found)
        self._impls = impls
        self._runners = {name: self._make_runner(name, found) for name, found in impls.items()}
        self._has_event_hook = bool(impls.get("fedserver_auth_event"))

    def _make_runner(self, name: str, found: tuple[_Impl, ...]) -> _Runner:
        """The function that runs every implementation of hook ``name`` for ``(event,
        auth_state, room_version)`` and returns the denials (``()`` if none), as
        :meth:`_call` does.

        Built once per :meth:`reload_hooks`, not per check: a state resolution checks
        thousands of events, each through four or five hooks. The usual case, one
        implementation taking the standard arguments (the built-in rule alone), gets a
        direct call; anything else goes through :meth:`_call`.
        """
        if not found:
            return _no_denials
        if len(found) > 1 or found[0][2] != _STANDARD_ARGS:
            call = self._call

            def run_all(event: Event, auth_state: AuthState, rv: RoomVersion) -> tuple[Deny, ...]:
                return tuple(call(name, {"event": event, "auth_state": auth_state, "room_version": rv}))

            return run_all
        plugin_name, func, _ = found[0]
        section_rule = self._section_rule

        def run_one(event: Event, auth_state: AuthState, rv: RoomVersion) -> tuple[Deny, ...]:
            try:
                result = func(event, auth_state, rv)
            except UnreadablePowerLevel as e:
                return (Deny(str(e), section_rule(name, rv), plugin_name),)
            except Exception as e:  # as in _call: fail closed
                return (_raised(name, plugin_name, e),)
            if result is None:
                return ()
            return (_own_denial(name, plugin_name, result),)

        return run_one

    def _call(self, name: str, args: dict[str, Any]) -> list[Deny]:
        """Run every implementation of ``name``; the denials, plugin names filled in."""
        denials: list[Deny] = []
        for plugin_name, func, argnames in self._impls[name]:
            try:
                if argnames == _STANDARD_ARGS:
                    result = func(args["event"], args["auth_state"], args["room_version"])
                else:
                    result = func(*[args[a] for a in argnames])
            except UnreadablePowerLevel as e:
                # The rule needs a level that is not a power level of this room version:
                # it cannot be shown to pass, so it denies.
                denials.append(Deny(str(e), self._section_rule(name, args["room_version"]),
                                    plugin_name))
                continue
            except Exception as e:  # a plugin bug must not crash ingestion: fail closed
                denials.append(_raised(name, plugin_name, e))
                continue
            if result is None:
                continue
            denials.append(_own_denial(name, plugin_name, result))
        return denials

    @staticmethod
    def _section_rule(hook: str, rv: RoomVersion) -> str:
        path = _SECTIONS.get(hook)
        if path is not None:
            try:
                return rule_id(rv, *path)
            except KeyError:
                pass
        return hook

    def _join_rule_allows(self, auth_state: AuthState, join_rule: str) -> bool:
        args = {
            "event": auth_state.event, "auth_state": auth_state,
            "room_version": auth_state.room_version, "join_rule": join_rule,
        }
        for _plugin, func, argnames in self._impls["fedserver_auth_join_rule_allows"]:
            try:
                if func(*[args[a] for a in argnames]) is True:
                    return True
            except Exception:  # an admission hook that fails admits nothing
                continue
        return False

    def _is_spec_version(self, rv: RoomVersion) -> bool:
        spec = self._spec_by_identifier.get(rv.identifier)
        return spec is rv or (spec is not None and spec == rv)

    def _auth_state(
        self,
        event: Event,
        rv: RoomVersion,
        auth_map: Mapping[tuple[str, str], Event],
        create: Event | None,
        verified_servers: Collection[str] | None,
    ) -> AuthState:
        return AuthState.for_engine(
            rv, event, auth_map, create, verified_servers, self._is_spec_version(rv),
            self.room_versions, self._pl_cache, self._join_rule_allows_hook,
        )

    # -- entry points ------------------------------------------------------------------

    def check(
        self,
        event: Event,
        auth_events: Sequence[Event] | Mapping[Any, Event],
        room_version: RoomVersion | None = None,
        *,
        create_event: Event | None = None,
        verified_servers: Collection[str] | None = None,
    ) -> AuthResult:
        """Authorise ``event`` against the auth events it cites.

        :param event: the event.
        :param auth_events: the events its ``auth_events`` name, as a list (a mapping's
            values are used).  Missing ones are the caller's to fetch first; an event
            whose auth events cannot be found must not be accepted.
        :param room_version: the version to judge under (default: the event's).
        :param create_event: from room v12 (where the create event is never an auth
            event), the create event whose id the ``room_id`` names; the caller looks it
            up as ``"$" + room_id[1:]``.  Ignored before v12.
        :param verified_servers: servers whose signatures on ``event`` the caller has
            verified (for the ``join_authorised_via_users_server`` rule); ``None`` means
            only the presence of a signature is checked.
        :returns: an :class:`AuthResult`.
        """
        rv = room_version or event.room_version
        if event.type == CREATE:
            return self._check_create(event, rv, verified_servers)
        if type(auth_events) is not list and isinstance(auth_events, Mapping):
            auth_events = list(auth_events.values())
        auth_map: dict[tuple[str, str], Event] = {}
        for ae in auth_events:
            key = ae.state_tuple
            if key is not None and key not in auth_map:
                auth_map[key] = ae
        if rv.room_id_from_create_event:
            create = create_event
        else:
            create = auth_map.get(CREATE_KEY)
        state = self._auth_state(event, rv, auth_map, create, verified_servers)
        return self._run(event, rv, state, auth_events)

    def check_against_state(
        self,
        event: Event,
        state: Mapping[tuple[str, str], Event],
        room_version: RoomVersion | None = None,
        *,
        create_event: Event | None = None,
        verified_servers: Collection[str] | None = None,
    ) -> AuthResult:
        """Authorise ``event`` against a state: the state before it, the current state
        (soft failure), or a partial state during state resolution.

        The auth events are selected from ``state`` per the auth events selection
        algorithm (the event's own ``auth_events`` are not consulted, and rule 3 on cited
        auth events does not apply).

        :param event: the event.
        :param state: ``(type, state_key)`` to :class:`Event`.
        :param room_version: the version to judge under (default: the event's).
        :param create_event: the create event, used when ``state`` has none (e.g. the
            empty starting state of v12 state resolution); ``state``'s wins otherwise.
        :param verified_servers: as for :meth:`check`.
        :returns: an :class:`AuthResult`.
        """
        rv = room_version or event.room_version
        if event.type == CREATE:
            return self._check_create(event, rv, verified_servers)
        # The auth events selection (the keys of auth_types_for_event), from the state.
        auth_map = select_from_state(rv, event, state)
        if rv.room_id_from_create_event:
            create = state.get(CREATE_KEY) or create_event
        else:
            create = auth_map.get(CREATE_KEY) or create_event  # selected: the same lookup
        auth_state = self._auth_state(event, rv, auth_map, create, verified_servers)
        return self._run(event, rv, auth_state, None)

    def check_auth_events(
        self,
        event: Event,
        auth_events: Sequence[Event],
        room_version: RoomVersion | None = None,
    ) -> AuthResult:
        """Only rule 3 (v12 numbering; 2.1-2.3 and 2.5 before): the checks on the cited auth
        events themselves (duplicates, unexpected types, rejected events, another room).

        :param event: the event.
        :param auth_events: the events its ``auth_events`` name.
        :param room_version: the version to judge under (default: the event's).
        :returns: an :class:`AuthResult`.
        """
        rv = room_version or event.room_version
        if event.type == CREATE:
            return ALLOWED
        denials = self._call(
            "fedserver_auth_auth_events",
            {"event": event, "auth_events": list(auth_events), "room_version": rv},
        )
        return AuthResult(False, tuple(denials)) if denials else ALLOWED

    # -- the spec's control flow -------------------------------------------------------

    def _check_create(
        self, event: Event, rv: RoomVersion, verified_servers: Collection[str] | None
    ) -> AuthResult:
        state = self._auth_state(event, rv, {}, event, verified_servers)
        runners = self._runners
        # Rule 1: m.room.create is judged by rule 1 alone.
        denials = runners["fedserver_auth_create"](event, state, rv)
        if not denials:
            denials = runners["fedserver_auth_event"](event, state, rv)
        return AuthResult(False, denials) if denials else ALLOWED

    def _run(
        self,
        event: Event,
        rv: RoomVersion,
        state: AuthState,
        cited: Sequence[Event] | None,
    ) -> AuthResult:
        """The authorization rules after rule 1, in the spec's order: here those that
        apply to every event (v12 2-4: the room's create event, the cited auth events,
        m.federate; v1-v5: the m.room.aliases rule), then :meth:`_run_member` or
        :meth:`_run_non_member`.

        :param cited: the event's own auth events, for the rule on them (v12 3, before:
            2.1-2.3 and 2.5), or ``None`` to skip it.
        """
        runners = self._runners
        if rv.room_id_from_create_event:
            # v12 rule 2: "If the event's room_id is not an event ID for an accepted (not
            # rejected) m.room.create event, with the sigil ! instead of $, reject."
            denials = runners["fedserver_auth_room_create_event"](event, state, rv)
            if denials:
                return AuthResult(False, denials)
            # v12 rule 3: "Considering the event's auth_events": the cited events themselves.
            if cited is not None:
                found = self._call("fedserver_auth_auth_events", {
                    "event": event, "auth_events": cited, "room_version": rv,
                })
                if found:
                    return AuthResult(False, tuple(found))
        else:
            # Rule 2.1-2.3 and 2.5: the cited auth events themselves (one pass over them;
            # 2.4, which looks at them as a whole, follows: the verdict is the same).
            if cited is not None:
                found = self._call("fedserver_auth_auth_events", {
                    "event": event, "auth_events": cited, "room_version": rv,
                })
                if found:
                    return AuthResult(False, tuple(found))
            # Rule 2.4: "If there is no m.room.create event among the entries, reject."
            denials = runners["fedserver_auth_room_create_event"](event, state, rv)
            if denials:
                return AuthResult(False, denials)

        # Rule 3 (v12: 4): m.federate.
        denials = runners["fedserver_auth_federate"](event, state, rv)
        if denials:
            return AuthResult(False, denials)

        etype = event.type
        if etype == _ALIASES and rv.special_case_aliases_auth:
            # v1-v5 rule 4: m.room.aliases has its own rule, then allow.
            return self._finish(runners["fedserver_auth_aliases"](event, state, rv), event, state, rv)
        if etype == MEMBER:
            return self._run_member(event, state, rv)
        return self._run_non_member(etype, event, state, rv)

    def _run_member(self, event: Event, state: AuthState, rv: RoomVersion) -> AuthResult:
        """Rule 5 (v6-v11: 4): "If type is m.room.member". In v12 numbering: 5.1 and 5.2
        (the fields; v8+ join_authorised_via_users_server), then the rule for the
        membership (5.3 join, 5.4 invite with 5.4.1 third_party_invite, 5.5 leave, 5.6 ban,
        v7+ 5.7 knock) and 5.8: "Otherwise, the membership is unknown. Reject."
        """
        runners = self._runners
        # 5.1, 5.2 and "unknown membership".
        denials = runners["fedserver_auth_member"](event, state, rv)
        if denials:
            return AuthResult(False, denials)
        membership = event.membership
        if membership == "invite" and "third_party_invite" in event.content:
            hook = "fedserver_auth_member_third_party_invite"  # 5.4.1
        else:
            hook = _MEMBERSHIP_HOOKS.get(membership)  # type: ignore[arg-type]
        if hook is None:
            # Only reachable if the built-in rules were bypassed: fail closed.
            return AuthResult.deny(Deny(f"unknown membership {membership!r}", "member"))
        return self._finish(runners[hook](event, state, rv), event, state, rv)

    def _run_non_member(
        self, etype: str, event: Event, state: AuthState, rv: RoomVersion
    ) -> AuthResult:
        """The rules after the m.room.member one (v12 numbering): 6, "If the sender's
        current membership state is not join, reject"; 7, m.room.third_party_invite; 8,
        the required power level; 9, state keys starting with @; 10, m.room.power_levels;
        (v1-v2 11, m.room.redaction); and last, "Otherwise, allow"."""
        runners = self._runners
        # Rule 6: the sender must be joined.
        denials = runners["fedserver_auth_sender_in_room"](event, state, rv)
        if denials:
            return AuthResult(False, denials)

        if etype == _THIRD_PARTY_INVITE:
            # Rule 7: allowed iff the sender has the invite level.
            return self._finish(
                runners["fedserver_auth_third_party_invite_event"](event, state, rv), event, state, rv
            )

        # Rule 8: the required power level for the event type.
        denials = runners["fedserver_auth_event_power"](event, state, rv)
        if denials:
            return AuthResult(False, denials)

        # Rule 9: state keys starting with @ belong to that user.
        denials = runners["fedserver_auth_state_key_ownership"](event, state, rv)
        if denials:
            return AuthResult(False, denials)

        if etype == _POWER_LEVELS:
            # Rule 10: power levels changes.
            return self._finish(runners["fedserver_auth_power_levels"](event, state, rv), event, state, rv)

        if etype == _REDACTION and redaction_is_auth_rule(rv):
            # v1-v2 rule 11: redactions.
            return self._finish(runners["fedserver_auth_redaction"](event, state, rv), event, state, rv)

        # Last rule: otherwise, allow.
        return self._finish((), event, state, rv)

    def _finish(
        self, denials: tuple[Deny, ...], event: Event, state: AuthState, rv: RoomVersion
    ) -> AuthResult:
        """The spec allowed the event unless ``denials``; then plugins' catch-all hook."""
        if denials:
            return AuthResult(False, denials)
        if self._has_event_hook:
            denials = self._runners["fedserver_auth_event"](event, state, rv)
            if denials:
                return AuthResult(False, denials)
        return ALLOWED
