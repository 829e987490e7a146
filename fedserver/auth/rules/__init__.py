"""The spec's authorization rules as ordinary hook implementations, one module per topic.

They are registered first by :func:`fedserver.auth.plugins.make_plugin_manager` as
essential plugins (see :data:`fedserver.auth.plugins.ESSENTIAL_PLUGINS`) and cannot be
disabled.
"""
