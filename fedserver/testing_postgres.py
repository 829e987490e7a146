"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb in a temporary directory, a loopback port, trust authentication.

Command line (used by ``.ci/run``)::

    python -m fedserver.testing_postgres start DIR [--durable]   # prints the URL
    python -m fedserver.testing_postgres stop DIR

The server binaries come from ``FEDSERVER_PG_BINDIR``, the ``PATH``, or Debian's
``/usr/lib/postgresql/<version>/bin`` (``apt-get install postgresql``). PostgreSQL refuses
to run as root: as root, the cluster belongs to the ``postgres`` user (or ``nobody``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass

#: The database made in every cluster for fedserver.
DATABASE = "fedserver"

# Settings of a throwaway cluster: nothing in it needs to survive a crash, so no fsync.
_FAST = (
    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
)
_COMMON = (
    "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{socket_dir}'\n"
    "max_connections = 400\nlog_min_messages = warning\nlog_min_error_statement = panic\n"
)


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> str:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres``.

    :raises PostgresNotFound: if there is none.
    """
    env = os.environ.get("FEDSERVER_PG_BINDIR")
    if env:
        return env
    on_path = shutil.which("pg_ctl")
    if on_path and os.path.exists(os.path.join(os.path.dirname(os.path.realpath(on_path)), "initdb")):
        return os.path.dirname(os.path.realpath(on_path))
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0,
    )
    if candidates:
        return os.path.dirname(candidates[-1])
    raise PostgresNotFound("no PostgreSQL server found (apt-get install postgresql, or set FEDSERVER_PG_BINDIR)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A running throwaway cluster.

    :ivar directory: holds ``data/``, the server's socket and ``server.log``.
    :ivar url: the libpq URL of its ``fedserver`` database (superuser ``postgres``, no
        password: trust authentication on loopback only).
    """

    directory: str
    port: int
    bindir: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the directory."""
        stop_cluster(self.directory, bindir=self.bindir)


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    user = _owner()
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", user, "--", *cmd]
    return ["su", user, "-s", "/bin/sh", "-c", " ".join(subprocess.list2cmdline([c]) for c in cmd)]


def _owner() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresNotFound("running as root, and neither a 'postgres' nor a 'nobody' user exists")


def start_cluster(directory: str | None = None, *, durable: bool = False) -> Cluster:
    """Create and start a cluster in ``directory`` (a new temporary one if ``None``).

    :param durable: keep PostgreSQL's default durability (fsync at each commit), as
        benchmarks must; tests turn it off.
    :raises PostgresNotFound: without PostgreSQL.
    :raises subprocess.CalledProcessError: if initdb or the server fails (see
        ``server.log`` in the directory).
    """
    bindir = find_bindir()
    if directory is None:
        directory = tempfile.mkdtemp(prefix="fedserver-pg-")
    os.makedirs(directory, exist_ok=True)
    data = os.path.join(directory, "data")
    if os.geteuid() == 0:
        entry = pwd.getpwnam(_owner())
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        os.chmod(directory, 0o755)
    run = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=directory)
    _run(_as_owner([os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
                    "-E", "UTF8", "--locale=C", "--no-sync"]), **run)
    port = _free_port()
    with open(os.path.join(data, "postgresql.auto.conf"), "a", encoding="utf-8") as f:
        f.write(_COMMON.format(port=port, socket_dir=directory))
        if not durable:
            f.write(_FAST)
    log = os.path.join(directory, "server.log")
    _run(_as_owner([os.path.join(bindir, "pg_ctl"), "-D", data, "-l", log, "-w", "-t", "60", "start"]), **run)
    with open(os.path.join(directory, "port"), "w", encoding="utf-8") as f:
        f.write(str(port))
    cluster = Cluster(directory, port, bindir)
    _run(_as_owner([os.path.join(bindir, "psql"), "-h", directory, "-p", str(port), "-U", "postgres",
                    "-d", "postgres", "-q", "-c", f"CREATE DATABASE {DATABASE}"]), **run)
    return cluster


def stop_cluster(directory: str, *, bindir: str | None = None) -> None:
    """Stop the cluster in ``directory`` (if it runs) and delete the directory."""
    bindir = bindir or find_bindir()
    data = os.path.join(directory, "data")
    if os.path.exists(os.path.join(data, "postmaster.pid")):
        subprocess.run(_as_owner([os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=directory)
    shutil.rmtree(directory, ignore_errors=True)


def _run(cmd: list[str], **kw) -> None:
    try:
        subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        sys.stderr.write((e.stderr or b"").decode(errors="replace"))
        raise


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) >= 2 and args[0] == "start":
        cluster = start_cluster(args[1], durable="--durable" in args[2:])
        print(cluster.url)
        return 0
    if len(args) == 2 and args[0] == "stop":
        stop_cluster(args[1])
        return 0
    sys.stderr.write("usage: python -m fedserver.testing_postgres start DIR [--durable] | stop DIR\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
