"""Pure room authorization: the spec's rules as pluggy hooks, the engine that runs them in
spec order, and plugin loading.  No I/O."""

from fedserver.auth.auth_state import AuthState
from fedserver.auth.engine import AuthEngine
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.plugins import PluginError, make_plugin_manager, registered_room_versions
from fedserver.auth.verdict import ALLOWED, AuthResult, Deny, SoftFail

__all__ = [
    "ALLOWED", "AuthEngine", "AuthResult", "AuthState", "Deny", "PluginError", "SoftFail",
    "hookimpl", "make_plugin_manager", "registered_room_versions",
]
