"""fedserver_policy_server: honour the policy server a room names (spec v1.18 "Policy
Servers", MSC4284) by asking it to sign our events and soft-failing events it refuses."""

from __future__ import annotations

import sys
from typing import Any, Mapping

from twisted.logger import Logger

from fedserver.auth import hookimpl

from fedserver_policy_server.checker import PolicyServerChecker
from fedserver_policy_server.options import PolicyServerOptions

log = Logger()

#: The name the plugin's options go under in ``plugin_config`` (its entry point's name).
NAME = "policy_server"


@hookimpl
def fedserver_on_start(
    reactor: Any,
    server_name: str,
    federation_client: Any,
    store: Any,
    plugin_manager: Any,
    plugin_config: Mapping[str, Any],
) -> None:
    """Register a :class:`PolicyServerChecker` for this server into its plugin manager (a
    new one, with the current options, if the server starts again)."""
    registered = plugin_manager.get_name(sys.modules[__name__]) or NAME
    raw = plugin_config.get(registered, plugin_config.get(NAME))
    try:
        options = PolicyServerOptions.from_mapping(raw)
    except ValueError as e:
        raise ValueError(f"plugin_config for {registered}: {e}") from None
    name = f"{registered}.checker"
    old = plugin_manager.get_plugin(name)
    if old is not None:
        plugin_manager.unregister(old, name)
    checker = PolicyServerChecker(
        clock=reactor, server_name=server_name, federation_client=federation_client, store=store, options=options
    )
    plugin_manager.register(checker, name=name)
    log.info("Policy servers honoured (when unreachable: fail {mode}; /sign timeout {t} s)",
             mode=options.when_unreachable, t=options.timeout)


__all__ = ["NAME", "PolicyServerChecker", "PolicyServerOptions", "fedserver_on_start"]
