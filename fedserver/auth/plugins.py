"""Building the plugin manager: hookspecs, the built-in spec rules, then third-party
plugins from entry points and configured module paths."""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType
from typing import Iterable

import pluggy

from fedserver.auth import hookspecs
from fedserver.room_versions import SPEC_ROOM_VERSIONS, RoomVersion

#: The built-in spec rules, registered first under these names, in this order.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "fedserver.auth.rules.create",
    "fedserver.auth.rules.auth_events",
    "fedserver.auth.rules.federate",
    "fedserver.auth.rules.aliases",
    "fedserver.auth.rules.membership",
    "fedserver.auth.rules.third_party_invite",
    "fedserver.auth.rules.power",
    "fedserver.auth.rules.power_levels",
    "fedserver.auth.rules.redaction",
)

#: Plugins that cannot be disabled: the spec's rules.
ESSENTIAL_PLUGINS: frozenset[str] = frozenset(DEFAULT_PLUGINS)

#: The setuptools entry-point group third-party plugins register under.
ENTRY_POINT_GROUP = hookspecs.PROJECT


class PluginError(Exception):
    """A plugin could not be loaded, or the operator's plugin configuration is wrong."""


def make_plugin_manager(
    *,
    load_entrypoints: bool = True,
    module_paths: Iterable[str] = (),
    disabled: Iterable[str] = (),
    extra_plugins: Iterable[tuple[object, str]] = (),
) -> pluggy.PluginManager:
    """A new plugin manager with the built-in rules and the configured plugins.

    Order: hookspecs; the built-in spec rules (:data:`DEFAULT_PLUGINS`); plugins from the
    ``fedserver`` entry-point group; modules named in ``module_paths`` (the ``plugins:``
    list of the server config); ``extra_plugins``.  Names in ``disabled`` are blocked
    before anything is loaded, so a disabled plugin's code is never imported.  Ends with
    ``check_pending()``: an implementation of a hook that does not exist (a misspelt
    name) fails here, at start-up.

    :param load_entrypoints: whether to load the ``fedserver`` entry points.
    :param module_paths: dotted module paths to import and register (registered under
        that path).
    :param disabled: plugin names (entry-point names or module paths) to leave out.
    :param extra_plugins: ``(plugin object, name)`` pairs to register (for tests and
        embedding).
    :returns: the plugin manager; nothing global is modified.
    :raises PluginError: if a disabled name is an essential plugin or names no plugin,
        or a module path cannot be imported, or a plugin is invalid (misspelt hook,
        wrong arguments).
    """
    module_paths = list(module_paths)
    disabled = list(disabled)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in disabled:
        if name in ESSENTIAL_PLUGINS:
            raise PluginError(
                f"plugin {name!r} holds the spec's authorization rules and cannot be disabled"
            )
        pm.set_blocked(name)
    try:
        for name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(name), name=name)
        entry_point_names: set[str] = set()
        if load_entrypoints:
            entry_point_names = {
                ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
            }
            try:
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
            except pluggy.PluginValidationError:
                raise
            except Exception as e:
                raise PluginError(f"loading a {ENTRY_POINT_GROUP!r} entry point failed: {e}") from e
        for path in module_paths:
            if pm.is_blocked(path) or pm.get_plugin(path) is not None:
                continue
            pm.register(_import_plugin_module(path), name=path)
        for plugin, name in extra_plugins:
            if not pm.is_blocked(name):
                pm.register(plugin, name=name)
        known = entry_point_names | set(module_paths) | {n for _, n in extra_plugins}
        for name in disabled:
            if name not in known:
                raise PluginError(f"disabled plugin {name!r} is not an installed plugin")
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(f"invalid plugin {e.plugin!r}: {e}") from e
    return pm


def _import_plugin_module(path: str) -> ModuleType:
    try:
        return importlib.import_module(path)
    except Exception as e:
        raise PluginError(f"cannot import plugin module {path!r}: {e}") from e


def registered_room_versions(pm: pluggy.PluginManager) -> list[RoomVersion]:
    """Every room version plugins contribute through ``fedserver_register_room_versions``.

    :returns: the versions, in hook call order, without duplicates.
    :raises PluginError: if a plugin returns something that is not a ``RoomVersion``, or
        redefines a spec version's identifier.
    """
    spec = {v.identifier: v for v in SPEC_ROOM_VERSIONS}
    found: dict[str, RoomVersion] = {}
    for contribution in pm.hook.fedserver_register_room_versions():
        for version in contribution or ():
            if not isinstance(version, RoomVersion):
                raise PluginError(
                    f"fedserver_register_room_versions returned {version!r}, not a RoomVersion"
                )
            if version.identifier in spec and spec[version.identifier] != version:
                raise PluginError(f"a plugin redefines spec room version {version.identifier!r}")
            if version.identifier in found and found[version.identifier] != version:
                raise PluginError(f"two plugins define room version {version.identifier!r}")
            found[version.identifier] = version
    return list(found.values())
