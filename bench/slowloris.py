"""Slowloris check: new clients are still served while 1,100 slow connections are open
against a fedserver whose file-descriptor limit (RLIMIT_NOFILE) is 1,024.

Run as ``python bench/slowloris.py`` from the repository root (loopback only; it stops by
itself after ``--duration`` seconds plus start-up, about 90 s by default). It is a check,
not a speed benchmark: it prints what it measured and exits 0 if every promise held, 1 if
not.

1. fedserver runs as operators run it (``twistd -n fedserver``, default connection options),
   in its own process with RLIMIT_NOFILE 1,024 (soft and hard).
2. ``--slow`` connections (1,100) are opened, half to the federation listener (TLS
   handshake completed, then the request head one byte every ``--interval`` seconds), half
   to the client listener (the same in plain HTTP). Whenever the server closes one, it is
   opened again after a second, so the pressure lasts the whole run.
3. Every second, a new client asks each listener for something (``GET
   /_matrix/client/versions``, ``GET /_matrix/key/v2/server`` over TLS) on a new
   connection, and one long-polling ``/sync`` (10 s) runs in the middle of the attack.
4. Printed: how many probes were answered and how fast, the long poll's outcome, how long
   slow connections lived, the server's peak of open descriptors, its CPU time, and whether
   its log shows EMFILE or a traceback.

``--max-connections N`` sets the server's cap by hand (e.g. 5000, above the descriptor
limit, to see what the cap buys: new clients are locked out, the server sheds at EMFILE
without spinning, and serves again once the attack stops).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import re
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.interop.peers import Fedserver, _die_with_parent, http_json  # noqa: E402


class LimitedFedserver(Fedserver):
    """fedserver in a process whose RLIMIT_NOFILE is ``nofile`` (soft and hard)."""

    def __init__(self, directory: str, nofile: int, **kw) -> None:
        super().__init__(directory, **kw)
        self.nofile = nofile

    def _spawn(self, argv, env=None) -> None:
        nofile = self.nofile

        def limit_and_die_with_parent() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            _die_with_parent()

        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True, preexec_fn=limit_and_die_with_parent,
        )
        log.close()
        atexit.register(self.stop)


def _proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _proc_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


_TLS: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _TLS.check_hostname = False
        _TLS.verify_mode = ssl.CERT_NONE
    return _TLS


class Attack:
    """The slow connections and what happened to them."""

    HEAD = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 10_000

    def __init__(self, port: int, tls: bool, count: int, interval: float) -> None:
        self.port, self.tls, self.count, self.interval = port, tls, count, interval
        self.open = 0
        self.opened = 0
        self.failed_to_open = 0
        self.lifetimes: list[float] = []  # of connections the server closed
        self.stopping = False

    async def one(self, delay: float) -> None:
        await asyncio.sleep(delay)
        while not self.stopping:
            started = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port, ssl=_tls() if self.tls else None), 15)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                self.failed_to_open += 1
                await asyncio.sleep(1)
                continue
            self.opened += 1
            self.open += 1
            try:
                for i in range(len(self.HEAD)):
                    if self.stopping:
                        break
                    writer.write(self.HEAD[i : i + 1])
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(1), self.interval)
                    except asyncio.TimeoutError:
                        continue
                    if not data:
                        raise ConnectionResetError("closed by the server")
            except (OSError, ssl.SSLError, ConnectionError):
                self.lifetimes.append(time.monotonic() - started)
            finally:
                self.open -= 1
                writer.transport.abort()
            if not self.stopping:
                await asyncio.sleep(1)

    def start(self) -> list[asyncio.Task]:
        # Spread the openings over a few seconds, as a tool opening 1,100 sockets would.
        return [asyncio.ensure_future(self.one(i * 3.0 / self.count)) for i in range(self.count)]


async def probe(port: int, tls: bool, path: str, timeout: float = 10) -> tuple[bool, float]:
    """One request on a new connection: (answered 200, seconds)."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=_tls() if tls else None), timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), timeout)
        writer.close()
        return data.startswith(b"HTTP/1.1 200"), time.monotonic() - started
    except (OSError, asyncio.TimeoutError, ssl.SSLError, ConnectionError):
        return False, time.monotonic() - started


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return f"{statistics.median(values) * 1000:.0f} / {p95 * 1000:.0f} / {values[-1] * 1000:.0f} ms"


def _attack_process(fed_port: int, client_port: int, args: argparse.Namespace, conn) -> None:
    """The attacker, in its own process (so that the probes are not slowed by it): runs
    until told to stop, then sends back what it saw."""

    async def attack() -> dict:
        attacks = [Attack(fed_port, True, args.slow - args.slow // 2, args.interval),
                   Attack(client_port, False, args.slow // 2, args.interval)]
        tasks = [t for a in attacks for t in a.start()]
        peak = 0
        loop = asyncio.get_running_loop()
        stop = loop.run_in_executor(None, conn.recv)
        while not stop.done():
            await asyncio.sleep(0.5)
            peak = max(peak, sum(a.open for a in attacks))
        for a in attacks:
            a.stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"peak_open": peak, "opened": [a.opened for a in attacks],
                "failed": [a.failed_to_open for a in attacks], "lifetimes": [t for a in attacks for t in a.lifetimes]}

    conn.send(asyncio.run(attack()))


async def run(args: argparse.Namespace, server: LimitedFedserver, token: str, since: str) -> dict:
    import multiprocessing

    pid = server.proc.pid
    results: dict = {"client": [], "federation": [], "fds": [], "long_poll": None}
    ours, theirs = multiprocessing.Pipe()
    attacker = multiprocessing.get_context("fork").Process(
        target=_attack_process, args=(server.fed_port, server.client_port, args, theirs), daemon=True)
    attacker.start()
    cpu_before = _proc_cpu_s(pid)
    started = time.monotonic()
    probes: list[asyncio.Future] = []
    long_poll = None
    while time.monotonic() - started < args.duration:
        await asyncio.sleep(1)
        if time.monotonic() - started < args.ramp:
            continue  # let the slow connections pile up first
        probes.append(asyncio.ensure_future(asyncio.gather(
            probe(server.client_port, False, "/_matrix/client/versions"),
            probe(server.fed_port, True, "/_matrix/key/v2/server"))))
        results["fds"].append(_proc_fds(pid))
        if long_poll is None and time.monotonic() - started > args.duration / 3:
            long_poll = asyncio.ensure_future(probe(
                server.client_port, False,
                f"/_matrix/client/v3/sync?timeout=10000&since={since}&access_token={token}", timeout=30))
    results["cpu_s"] = _proc_cpu_s(pid) - cpu_before
    for c, f in await asyncio.gather(*probes):
        results["client"].append(c)
        results["federation"].append(f)
    results["long_poll"] = await long_poll if long_poll is not None else None
    ours.send("stop")
    results["attack"] = await asyncio.get_running_loop().run_in_executor(None, ours.recv)
    attacker.join(30)
    # After the attack: both listeners serve.
    results["after"] = await asyncio.gather(probe(server.client_port, False, "/_matrix/client/versions"),
                                            probe(server.fed_port, True, "/_matrix/key/v2/server"))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", type=int, default=1100, help="slow connections (default 1100)")
    parser.add_argument("--nofile", type=int, default=1024, help="the server's RLIMIT_NOFILE (default 1024)")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between header bytes (default 3)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of attack (default 60)")
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds before the first probe (default 10)")
    parser.add_argument("--max-connections", type=int, default=None, help="the server's max_connections (default: its own)")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.slow + 200
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            print(f"this process may open only {hard} files; {need} are needed")
            return 2
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    directory = tempfile.mkdtemp(prefix="fedserver-slowloris-")
    extra = {"log_level": "info"}
    if args.max_connections is not None:
        extra["max_connections"] = args.max_connections
    server = LimitedFedserver(directory, args.nofile, extra_config=extra)
    server.start()
    try:
        user = server.user("probe")
        token = server.tokens[user]
        since = http_json("GET", server.client_url + "/_matrix/client/v3/sync?timeout=0",
                          headers={"Authorization": f"Bearer {token}"})["next_batch"]
        baseline = asyncio.run(_baseline(server))
        results = asyncio.run(run(args, server, token, since))
    finally:
        server.stop()
    with open(server.log_path, errors="replace") as f:
        log = f.read()

    attack = results["attack"]
    ok = {k: sum(1 for good, _ in results[k] if good) for k in ("client", "federation")}
    times = {k: [t for good, t in results[k] if good] for k in ("client", "federation")}
    lifetimes = attack["lifetimes"]
    emfile = len(re.findall(r"EMFILE", log))
    tracebacks = len(re.findall(r"Traceback \(most recent call last\)", log))
    limits_line = re.search(r"Connections: at most .*", log)
    summaries = re.findall(r"Connections in the last .*", log)
    lp_ok, lp_s = results["long_poll"] or (False, 0.0)

    print(f"fedserver with RLIMIT_NOFILE {args.nofile}; {args.slow} slow connections "
          f"(one header byte every {args.interval:g} s) for {args.duration:g} s, probes from {args.ramp:g} s on")
    print(f"server: {limits_line.group(0) if limits_line else '(no limits line in the log)'}")
    print()
    print("| measured | client listener | federation listener (TLS) |")
    print("| --- | --- | --- |")
    print(f"| new clients answered during the attack | {ok['client']}/{len(results['client'])} | "
          f"{ok['federation']}/{len(results['federation'])} |")
    print(f"| their latency (median / p95 / max) | {_ms(times['client'])} | {_ms(times['federation'])} |")
    print(f"| latency before the attack (same, 5 probes) | {_ms(baseline[0])} | {_ms(baseline[1])} |")
    print(f"| slow connections opened (incl. re-openings) | {attack['opened'][1]} | {attack['opened'][0]} |")
    print(f"| slow connections that could not open | {attack['failed'][1]} | {attack['failed'][0]} |")
    print(f"| answered after the attack | {'yes' if results['after'][0][0] else 'NO'} | "
          f"{'yes' if results['after'][1][0] else 'NO'} |")
    print()
    print(f"- slow connections open at once (attacker's count, peak): {attack['peak_open']}")
    if lifetimes:
        print(f"- slow connections closed by the server: {len(lifetimes)}, lived median "
              f"{statistics.median(lifetimes):.1f} s, max {max(lifetimes):.1f} s")
    print(f"- long-polling /sync (10 s) during the attack: {'200' if lp_ok else 'FAILED'} after {lp_s:.1f} s")
    print(f"- server's open file descriptors, peak: {max(results['fds'])} of {args.nofile}")
    print(f"- server CPU time during the attack: {results['cpu_s']:.1f} s over {args.duration:g} s")
    print(f"- server log: {emfile} lines mention EMFILE, {tracebacks} tracebacks")
    for line in summaries[:3]:
        print(f"  {line}")
    if len(summaries) > 3:
        print(f"  ... and {len(summaries) - 3} more summary lines")
    print(f"(log: {server.log_path})")
    kept = (ok["client"] == len(results["client"]) and ok["federation"] == len(results["federation"])
            and lp_ok and 9 <= lp_s < 20 and results["after"][0][0] and results["after"][1][0]
            and emfile == 0 and tracebacks == 0 and max(results["fds"]) < args.nofile)
    print("PASS: every promise held" if kept else "FAIL: see above")
    return 0 if kept else 1


async def _baseline(server: LimitedFedserver) -> tuple[list[float], list[float]]:
    client, fed = [], []
    for _ in range(5):
        ok, t = await probe(server.client_port, False, "/_matrix/client/versions")
        client.append(t) if ok else None
        ok, t = await probe(server.fed_port, True, "/_matrix/key/v2/server")
        fed.append(t) if ok else None
    return client, fed


if __name__ == "__main__":
    sys.exit(main())
