"""What a fresh fedserver's idle resident memory is made of.

Run as ``python bench/idle_memory.py [--runs 3]`` from the repository root.

Three measurements, each in fresh processes of this Python, medians of ``--runs``:

1. Imports, cumulative: a bare interpreter, then twistd, the reactor (which brings TLS:
   pyOpenSSL and cryptography), ``twisted.web``, then each library fedserver uses, then
   fedserver's own modules; the resident memory (VmRSS) after each step.
2. ``twistd -n web`` serving a directory over TLS, once idle: what twistd, the reactor,
   TLS and ``twisted.web`` take as a running server, with nothing of fedserver.
3. fedserver started as operators start it (``twistd -n fedserver``), once idle (as
   ``bench/join.py --modes idle`` reads it).

Every figure printed is measured in this run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import load_line, rss  # noqa: E402
from tests.interop.peers import Fedserver, free_port, wait_until  # noqa: E402

#: The cumulative import steps: (label, statement).
STEPS = [
    ("twistd (twisted.scripts.twistd)", "import twisted.scripts.twistd"),
    ("+ the reactor (brings pyOpenSSL, cryptography)", "from twisted.internet import reactor"),
    ("+ twisted.web.server", "import twisted.web.server"),
    ("+ twisted.web.client, treq", "import twisted.web.client, treq"),
    ("+ PyNaCl, signedjson", "import nacl.signing, signedjson.key"),
    ("+ PyYAML", "import yaml"),
    ("+ sqlite3", "import sqlite3"),
    ("+ pluggy, importlib.metadata", "import pluggy, importlib.metadata"),
    ("+ twisted.enterprise.adbapi, twisted.names", "import twisted.enterprise.adbapi, twisted.names.client"),
    ("+ fedserver.storage (every store)", "import fedserver.storage.sqlite"),
    ("+ the rest of fedserver (fedserver.service)", "import fedserver.service"),
]

_CHILD = r"""
import sys
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
print(rss(), flush=True)
for statement in sys.argv[1:]:
    exec(statement)
    print(rss(), flush=True)
"""


def import_steps() -> list[int]:
    """RSS (bytes) of a bare interpreter, then after each step of :data:`STEPS`."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, *(s for _, s in STEPS)], capture_output=True, text=True, check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    return [int(x) for x in out.stdout.split()]


def twistd_web(directory: str) -> int:
    """RSS of ``twistd -n web`` over TLS once it answers, then stopped."""
    from fedserver.crypto import load_or_generate_tls

    cert, key = os.path.join(directory, "web.crt"), os.path.join(directory, "web.key")
    load_or_generate_tls(cert, key, "localhost")
    port = free_port()
    run = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    with open(os.path.join(directory, "web.log"), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", run, "-n", "--pidfile=", "web",
             "--listen", f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}", "--path", directory],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory,
        )
    try:
        import ssl
        import urllib.request

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def up() -> bool:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=context, timeout=5).read()
            return True

        wait_until(up, 60, "twistd web to listen")
        time.sleep(1.0)
        return rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)


def fedserver_idle(directory: str) -> int:
    server = Fedserver(directory, extra_config={"log_level": "info"})
    server.start()
    try:
        time.sleep(1.0)
        return rss(server.proc.pid)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="fedserver-bench-idle-")
    steps: list[list[int]] = []
    web: list[int] = []
    fed: list[int] = []
    for r in range(args.runs):
        steps.append(import_steps())
        d = os.path.join(base, f"web-{r}")
        os.makedirs(d)
        web.append(twistd_web(d))
        fed.append(fedserver_idle(os.path.join(base, f"fedserver-{r}")))
        print(f"  run {r + 1}: twistd web {web[-1] / 2**20:.1f} MB, fedserver {fed[-1] / 2**20:.1f} MB; {load_line()}",
              flush=True)

    def mb(values: list[int]) -> float:
        return statistics.median(values) / 2**20

    print(f"\nResident memory (VmRSS), medians of {args.runs}; {load_line()}")
    print("Imports into a bare Python, cumulative:")
    labels = ["bare python", *(label for label, _ in STEPS)]
    previous = None
    for i, label in enumerate(labels):
        value = mb([s[i] for s in steps])
        delta = "" if previous is None else f"  (+{value - previous:.1f})"
        print(f"  {label:<50}{value:7.1f} MB{delta}")
        previous = value
    print("Running servers, idle:")
    print(f"  {'twistd -n web over TLS (no fedserver)':<50}{mb(web):7.1f} MB")
    print(f"  {'twistd -n fedserver':<50}{mb(fed):7.1f} MB")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
