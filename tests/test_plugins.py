"""Plugin loading and the plugin model: third-party denials, no overriding the spec,
entry points, config module paths, disabling, start-up validation, room versions."""

from __future__ import annotations

import os
import sys
import textwrap
import types

from twisted.trial.unittest import SynchronousTestCase

from fedserver.auth import Deny, hookimpl
from fedserver.auth.engine import AuthEngine, AuthHookError
from fedserver.auth.hookspecs import hookspec_names
from fedserver.auth.plugins import (
    DEFAULT_PLUGINS, PluginError, make_plugin_manager, registered_room_versions,
)
from fedserver.room_versions import SPEC_ROOM_VERSIONS, V3, V11, V12
from tests.test_auth_fixtures import ALICE, BOB, AuthAssertions, Room


def plugin(**hooks) -> types.SimpleNamespace:
    """A plugin object whose attributes are the given (already marked) hook functions."""
    return types.SimpleNamespace(**hooks)


def engine_with(*plugins, **kwargs) -> AuthEngine:
    pm = make_plugin_manager(
        load_entrypoints=False,
        extra_plugins=[(p, f"test-plugin-{i}") for i, p in enumerate(plugins)],
        **kwargs,
    )
    return AuthEngine(pm)


class PluginDirMixin:
    """Write throw-away plugin modules (and distributions) into a directory on sys.path."""

    def plugin_dir(self) -> str:
        path = self.mktemp()  # type: ignore[attr-defined]
        os.makedirs(path)
        sys.path.insert(0, path)
        self.addCleanup(sys.path.remove, path)  # type: ignore[attr-defined]
        return path

    def write_module(self, directory: str, name: str, source: str) -> None:
        with open(os.path.join(directory, name + ".py"), "w") as f:
            f.write(textwrap.dedent(source))
        self.addCleanup(sys.modules.pop, name, None)  # type: ignore[attr-defined]

    def write_distribution(self, directory: str, dist: str, entry_points: dict[str, str]) -> None:
        info = os.path.join(directory, f"{dist}-1.0.dist-info")
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        with open(os.path.join(info, "entry_points.txt"), "w") as f:
            f.write("[fedserver]\n")
            for name, module in entry_points.items():
                f.write(f"{name} = {module}\n")


DENYING_MODULE = """
from fedserver.auth import Deny, hookimpl

@hookimpl
def fedserver_auth_event(event, room_version):
    if event.content.get("body") == "forbidden":
        return Deny("forbidden word", "test/forbidden")
"""


class ThirdPartyDenialTests(SynchronousTestCase, AuthAssertions):
    """A plugin's Deny rejects; the engine names the plugin."""

    def test_plugin_deny_rejects_and_is_attributed(self):
        """A third-party Deny rejects the event, and ``Deny.plugin`` is the name the
        plugin was registered under, whatever the plugin put there."""

        @hookimpl
        def fedserver_auth_event(event):
            if event.type == "m.room.message":
                return Deny("no messages", "test/no-messages", plugin="fedserver.auth.rules.power")

        engine = engine_with(plugin(fedserver_auth_event=fedserver_auth_event))
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv, engine=engine).standard()
                result = room.check(room.message(ALICE))
                self.assertDenied(result, "test/no-messages")
                self.assertEqual(result.denials[0].plugin, "test-plugin-0")
                self.assertAllowed(room.check(room.event("m.room.topic", ALICE, {}, "")))

    def test_all_denials_collected_spec_first(self):
        """Every implementation of a section runs; all denials are kept, the spec's
        first."""

        @hookimpl
        def fedserver_auth_sender_in_room(event):
            return Deny("plugin says no", "test/no")

        engine = engine_with(plugin(fedserver_auth_sender_in_room=fedserver_auth_sender_in_room))
        room = Room(V12, engine=engine).standard()
        result = room.check(room.message(BOB))
        self.assertEqual(
            [(d.rule, d.plugin) for d in result.denials],
            [("v12 6", "fedserver.auth.rules.power"), ("test/no", "test-plugin-0")],
        )

    def test_no_further_sections_after_a_denial(self):
        """Once a section denied, the engine stops: later hooks are not called."""
        calls = []

        @hookimpl
        def fedserver_auth_event_power(event):
            calls.append(event.event_id)

        engine = engine_with(plugin(fedserver_auth_event_power=fedserver_auth_event_power))
        room = Room(V11, engine=engine).standard()
        room.check(room.message(BOB))
        self.assertEqual(calls, [])
        room.check(room.message(ALICE))
        self.assertEqual(len(calls), 2)  # check and check_against_state

    def test_exception_fails_closed(self):
        """An implementation that raises rejects the event with a denial naming it."""

        @hookimpl
        def fedserver_auth_event(event):
            raise ValueError("boom")

        engine = engine_with(plugin(fedserver_auth_event=fedserver_auth_event))
        room = Room(V12, engine=engine).standard()
        result = room.check(room.message(ALICE))
        self.assertDenied(result, "test-plugin-0 error")
        self.assertIn("ValueError: boom", result.reason)

    def test_invalid_return_fails_closed(self):
        """Returning anything but None or a Deny (e.g. True) rejects: there is no
        "allow" verdict."""

        @hookimpl
        def fedserver_auth_sender_in_room(event):
            return True

        engine = engine_with(plugin(fedserver_auth_sender_in_room=fedserver_auth_sender_in_room))
        room = Room(V12, engine=engine).standard()
        self.assertDenied(room.check(room.message(ALICE)), "test-plugin-0 error")

    def test_wrapper_refused(self):
        """Auth hooks cannot be wrappers (they could swallow denials): the engine refuses
        to start."""

        @hookimpl(wrapper=True)
        def fedserver_auth_event(event):
            return (yield)

        pm = make_plugin_manager(load_entrypoints=False, extra_plugins=[
            (plugin(fedserver_auth_event=fedserver_auth_event), "wrapping")])
        self.assertRaises(AuthHookError, AuthEngine, pm)

    def test_reload_hooks(self):
        """A plugin registered on a live plugin manager takes part after
        ``reload_hooks()``."""
        pm = make_plugin_manager(load_entrypoints=False)
        engine = AuthEngine(pm)
        room = Room(V12, engine=engine).standard()
        ev = room.event("m.room.message", ALICE, {"body": "forbidden"})
        self.assertAllowed(room.check(ev))
        module = types.ModuleType("denying")
        exec(DENYING_MODULE, module.__dict__)
        pm.register(module, name="denying")
        engine.reload_hooks()
        self.assertDenied(room.check(ev), "test/forbidden")


class NoOverrideTests(SynchronousTestCase, AuthAssertions):
    """A plugin cannot turn a spec denial into an allow."""

    def _permissive(self):
        hooks = {}
        for name in hookspec_names():
            if not name.startswith("fedserver_auth_"):
                continue
            if name == "fedserver_auth_join_rule_allows":
                def impl(event, join_rule):
                    return True
            else:
                def impl(event):
                    return None
            impl.__name__ = name
            hooks[name] = hookimpl(impl)
        return plugin(**hooks)

    def test_spec_denials_stand(self):
        """With a plugin that abstains everywhere and says True to every join rule,
        the spec still rejects a banned user's join, an uninvited join to an invite-only
        room, a join under an unknown join rule, and a non-member's message."""
        engine = engine_with(self._permissive())
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv, engine=engine).standard("invite")
                self.assertDenied(room.check(room.member(BOB, "join")))
                self.assertDenied(room.check(room.message(BOB)))
                room = Room(rv, engine=engine).standard("org.example.anything")
                self.assertDenied(room.check(room.member(BOB, "join")))
                room.add(room.member(BOB, "ban", sender=ALICE))
                self.assertDenied(room.check(room.member(BOB, "join")))

    def test_join_rule_allows_only_in_plugin_versions(self):
        """``fedserver_auth_join_rule_allows`` admits joins under unknown join rules only
        in non-spec room versions, and never a banned user."""
        engine = engine_with(self._permissive())
        custom = V12.derive("org.example.open")
        room = Room(custom, engine=engine).standard("org.example.anything")
        self.assertAllowed(room.check(room.member(BOB, "join")))
        room.add(room.member(BOB, "ban", sender=ALICE))
        self.assertDenied(room.check(room.member(BOB, "join")), "org.example.open 5.3.3")


class LoadingTests(SynchronousTestCase, PluginDirMixin, AuthAssertions):
    """Entry points, module paths, disabling and start-up validation."""

    def test_builtin_rules_registered_first(self):
        """The built-in rules are registered first, under DEFAULT_PLUGINS' names."""
        pm = make_plugin_manager(load_entrypoints=False)
        names = [pm.get_name(p) for p in pm.get_plugins()]
        self.assertEqual(sorted(names), sorted(DEFAULT_PLUGINS))
        for name in DEFAULT_PLUGINS:
            self.assertIsNotNone(pm.get_plugin(name))

    def test_entry_point_loaded(self):
        """A distribution advertising an entry point in group ``fedserver`` is loaded
        and registered under the entry point's name."""
        d = self.plugin_dir()
        self.write_module(d, "fake_fedserver_plugin", DENYING_MODULE)
        self.write_distribution(d, "fake_fedserver_plugin", {"fake": "fake_fedserver_plugin"})
        pm = make_plugin_manager(load_entrypoints=True)
        self.assertIsNotNone(pm.get_plugin("fake"))
        room = Room(V12, engine=AuthEngine(pm)).standard()
        result = room.check(room.event("m.room.message", ALICE, {"body": "forbidden"}))
        self.assertDenied(result, "test/forbidden")
        self.assertEqual(result.denials[0].plugin, "fake")
        self.assertIsNone(make_plugin_manager(load_entrypoints=False).get_plugin("fake"))

    def test_disabled_entry_point_never_imported(self):
        """A disabled entry point is not loaded, and its module is never imported."""
        d = self.plugin_dir()
        self.write_module(d, "fake_fedserver_unwanted", DENYING_MODULE)
        self.write_distribution(d, "fake_fedserver_unwanted", {"unwanted": "fake_fedserver_unwanted"})
        pm = make_plugin_manager(load_entrypoints=True, disabled=["unwanted"])
        self.assertIsNone(pm.get_plugin("unwanted"))
        self.assertNotIn("fake_fedserver_unwanted", sys.modules)

    def test_module_path_loaded(self):
        """Modules named in the config's ``plugins:`` list are imported and registered
        under their dotted path."""
        d = self.plugin_dir()
        self.write_module(d, "configured_plugin", DENYING_MODULE)
        pm = make_plugin_manager(load_entrypoints=False, module_paths=["configured_plugin"])
        self.assertIsNotNone(pm.get_plugin("configured_plugin"))
        room = Room(V3, engine=AuthEngine(pm)).standard()
        result = room.check(room.event("m.room.message", ALICE, {"body": "forbidden"}))
        self.assertEqual(result.denials[0].plugin, "configured_plugin")

    def test_module_path_disabled(self):
        """A module path that is also disabled is not registered."""
        d = self.plugin_dir()
        self.write_module(d, "configured_off", DENYING_MODULE)
        pm = make_plugin_manager(load_entrypoints=False, module_paths=["configured_off"],
                                 disabled=["configured_off"])
        self.assertIsNone(pm.get_plugin("configured_off"))

    def test_module_path_import_error(self):
        """A module path that cannot be imported stops start-up with PluginError."""
        e = self.assertRaises(PluginError, make_plugin_manager, load_entrypoints=False,
                              module_paths=["no_such_fedserver_plugin_module"])
        self.assertIn("no_such_fedserver_plugin_module", str(e))

    def test_misspelt_hook_fails_at_startup(self):
        """An implementation of a hook that does not exist (a misspelt name) makes
        ``make_plugin_manager`` fail (``check_pending``), not the first event."""
        d = self.plugin_dir()
        self.write_module(d, "misspelt_plugin", """
            from fedserver.auth import hookimpl

            @hookimpl
            def fedserver_auth_membr_join(event):
                return None
        """)
        e = self.assertRaises(PluginError, make_plugin_manager, load_entrypoints=False,
                              module_paths=["misspelt_plugin"])
        self.assertIn("fedserver_auth_membr_join", str(e))

    def test_unknown_argument_fails_at_startup(self):
        """An implementation asking for an argument its hook does not have fails at
        start-up."""
        d = self.plugin_dir()
        self.write_module(d, "badarg_plugin", """
            from fedserver.auth import hookimpl

            @hookimpl
            def fedserver_auth_member_join(event, current_state):
                return None
        """)
        self.assertRaises(PluginError, make_plugin_manager, load_entrypoints=False,
                          module_paths=["badarg_plugin"])

    def test_disabling_essential_plugin_refused(self):
        """The built-in spec rules cannot be disabled."""
        for name in DEFAULT_PLUGINS:
            e = self.assertRaises(PluginError, make_plugin_manager, load_entrypoints=False,
                                  disabled=[name])
            self.assertIn("cannot be disabled", str(e))

    def test_disabling_unknown_plugin_refused(self):
        """Disabling a name that is no installed plugin is an error (likely a typo)."""
        e = self.assertRaises(PluginError, make_plugin_manager, load_entrypoints=True,
                              disabled=["not-a-plugin"])
        self.assertIn("not-a-plugin", str(e))


class RoomVersionRegistrationTests(SynchronousTestCase, AuthAssertions):
    """fedserver_register_room_versions."""

    def test_registered_versions(self):
        """Versions contributed by plugins are listed once, and an engine built on the
        plugin manager recognises them in create events (rule 1.3)."""
        custom = V12.derive("org.example.x")

        @hookimpl
        def fedserver_register_room_versions():
            return [custom, custom]

        pm = make_plugin_manager(load_entrypoints=False, extra_plugins=[
            (plugin(fedserver_register_room_versions=fedserver_register_room_versions), "rv")])
        self.assertEqual(registered_room_versions(pm), [custom])
        room = Room(custom, engine=AuthEngine(pm))
        self.assertAllowed(room.engine.check(room.create, []))
        plain = Room(custom)
        self.assertDenied(plain.engine.check(plain.create, []), "org.example.x 1.3")

    def test_bad_versions_refused(self):
        """A non-RoomVersion, a redefined spec version, or two different versions under
        one identifier stop start-up."""
        for contribution in (["12"], [V11.derive("12", stable=True)],
                             [V12.derive("org.a"), V11.derive("org.a")]):
            with self.subTest(contribution=contribution):
                @hookimpl
                def fedserver_register_room_versions():
                    return contribution

                pm = make_plugin_manager(load_entrypoints=False, extra_plugins=[
                    (plugin(fedserver_register_room_versions=fedserver_register_room_versions), "rv")])
                self.assertRaises(PluginError, registered_room_versions, pm)
