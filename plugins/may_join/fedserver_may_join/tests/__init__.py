"""Tests of the fedserver_may_join plugin."""
