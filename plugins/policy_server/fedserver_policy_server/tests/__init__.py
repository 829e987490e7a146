"""Tests of the fedserver_policy_server plugin, and the small policy server they run."""
