"""Interop tests: a real Synapse (PyPI ``matrix-synapse``) and a running fedserver on loopback."""
