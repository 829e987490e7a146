"""An idle server does not load what only some requests or options need (its resident
memory: see README "Benchmarks" and docs/operators.md "Memory").

The libraries checked here are imported on first use: Pillow by the first thumbnail
(tests/test_media_http.py makes thumbnails through a started server), prometheus_client
when ``metrics_listen`` is set (tests/test_metrics.py scrapes one), psycopg for a
PostgreSQL database, jsonschema nowhere at start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Loaded by a child Python: a fedserver on SQLite with the default options (metrics,
#: URL previews and partial-state serving as they default) is started, then it prints
#: which of the lazily loaded libraries it has imported.
_CHILD = r"""
import json, os, sys
from twisted.internet import defer, reactor, task
from fedserver.config import config_from_dict
from fedserver.service import FedserverService

LAZY = ("PIL", "prometheus_client", "psycopg", "jsonschema")

async def main(_reactor):
    d = sys.argv[1]
    config = config_from_dict({
        "server_name": "idle.test",
        "database_path": os.path.join(d, "fedserver.db"),
        "signing_key_path": os.path.join(d, "signing.key"),
        "tls_certificate_path": os.path.join(d, "tls.crt"),
        "tls_private_key_path": os.path.join(d, "tls.key"),
        "federation_listen": "127.0.0.1:0",
        "client_listen": "127.0.0.1:0",
    })
    service = FedserverService(config, reactor)
    service.privilegedStartService()
    service.startService()
    await service.when_ready()
    # Let the work done right after the start (media upkeep, queues) run.
    await task.deferLater(reactor, 0.5, lambda: None)
    loaded = sorted(m for m in LAZY if m in sys.modules)
    await service.stopService()
    print(json.dumps(loaded))

task.react(lambda r: defer.ensureDeferred(main(r)))
"""


class IdleImportsTests(TestCase):
    def test_started_server_has_not_loaded_optional_libraries(self):
        """A server started on SQLite with default options serves without having imported
        Pillow, prometheus_client, psycopg or jsonschema (each is loaded on first use)."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSERVER_TEST_POSTGRES")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, directory], capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        loaded = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertEqual(loaded, [])
