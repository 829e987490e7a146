"""A plugin for tests/test_plugin_store_view.py: keeps what ``fedserver_on_start`` gave it,
by server name (module paths are loaded by name, so this module is the plugin)."""

from __future__ import annotations

from typing import Any

from fedserver.auth import hookimpl

#: server name -> the ``store`` argument of ``fedserver_on_start``
SEEN: dict[str, Any] = {}


@hookimpl
def fedserver_on_start(server_name: str, store: Any) -> None:
    SEEN[server_name] = store
