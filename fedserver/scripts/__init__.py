"""Command-line tools for operators (console scripts declared in setup.cfg)."""
