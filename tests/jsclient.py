"""Running real matrix-js-sdk clients (the SDK under Element) from trial tests.

A scenario is ``tests/js/scenarios/NAME.mjs`` exporting ``async (args) => result``;
:func:`run_scenario` runs it under node with ``args`` as JSON and returns its result. The
node packages are installed by ``.ci/run`` (``npm ci --prefix tests/js``); by hand:
``npm ci --prefix tests/js``. Without node or the packages the tests are skipped, unless
``FEDSERVER_INTEROP=require`` (CI), in which case they fail: CI never goes green with
the real clients left out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from twisted.trial.unittest import SkipTest

JS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js")


class ScenarioFailed(AssertionError):
    """The scenario threw, or printed no result."""


def node_or_skip() -> str:
    """The ``node`` executable, with the packages installed.

    :raises SkipTest: if either is missing (``AssertionError`` under
        ``FEDSERVER_INTEROP=require``).
    """
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed"
    elif not os.path.isdir(os.path.join(JS_DIR, "node_modules", "matrix-js-sdk")):
        problem = f"the js packages are not installed (npm ci --prefix {JS_DIR})"
    if problem is not None:
        if os.environ.get("FEDSERVER_INTEROP") == "require":
            raise AssertionError(f"FEDSERVER_INTEROP=require but {problem}")
        raise SkipTest(problem)
    return node  # type: ignore[return-value]


def run_scenario(name: str, args: dict[str, Any], timeout: float = 120) -> Any:
    """Run ``tests/js/scenarios/<name>.mjs`` with ``args``; returns what it returned.

    Blocking: call it from a test thread or a plain test, never while a server runs on
    the test's own reactor (the servers of the interop tests are child processes).

    :raises ScenarioFailed: with the scenario's error and the end of its stderr.
    """
    node = node_or_skip()
    proc = subprocess.run(
        [node, os.path.join(JS_DIR, "run.mjs"), name],
        input=json.dumps(args).encode(),
        capture_output=True,
        timeout=timeout,
        cwd=JS_DIR,
    )
    lines = [line for line in proc.stdout.decode(errors="replace").splitlines() if line.strip()]
    stderr = proc.stderr.decode(errors="replace")[-4000:]
    try:
        out = json.loads(lines[-1]) if lines else None
    except ValueError:
        out = None
    if not isinstance(out, dict) or "ok" not in out:
        raise ScenarioFailed(f"scenario {name} printed no result (exit {proc.returncode}); stderr:\n{stderr}")
    if not out["ok"]:
        raise ScenarioFailed(f"scenario {name} failed: {out.get('error')}\nstderr:\n{stderr}")
    return out["result"]


def account(server: Any, user_id: str) -> dict[str, str]:
    """The ``{url, user, password, serverName}`` a scenario logs in with, for a user made
    by the interop launchers (password ``pw-<localpart>``)."""
    localpart = user_id[1:].split(":", 1)[0]
    return {"url": server.client_url, "user": localpart, "password": "pw-" + localpart, "serverName": server.server_name}
