"""Disk-full check: what a fedserver whose database disk fills up answers, and that it
recovers by itself once space returns.

Run as root, as ``python bench/diskfull.py`` from the repository root (loopback only; it
stops by itself in about a minute). It is a check, not a speed benchmark: it prints what
it measured and exits 0 if every promise held, 1 if not.

1. Server A keeps its database on a small tmpfs (4 MiB, mounted for the run); server B is a
   second fedserver on the normal disk. Both run as operators run them (``twistd -n
   fedserver``). B's user joins A's room over federation.
2. The tmpfs is filled to the last byte with a file.
3. While it is full: A's user sends messages (60 KB each) and account data through the
   client API, B's user sends messages that B's outbound queue delivers to A with
   ``PUT /send``, and A's user syncs.
4. The file is deleted; without any restart, A's user sends again and B's messages must
   arrive at A (B retries what A did not acknowledge).

Promised: every write answers 200 (and is then stored) or 503 ``M_UNKNOWN`` (and is not),
never 500; reads keep answering 200; A's log says it once (plus a reminder a minute), with
no traceback; after space returns everything works and nothing was lost.

Without the right to mount (not root), it falls back to a database that may not grow
(``PRAGMA max_page_count``, server A then runs in this process) and says so.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.interop.peers import Fedserver, HTTPError, wait_until  # noqa: E402

BIG = "x" * 60_000


def mount_tmpfs(path: str, size: str) -> bool:
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f"(cannot mount a tmpfs: {result.stderr.strip() or result.returncode})")
        return False
    return True


def fill(path: str) -> int:
    """Write a file in ``path`` until the filesystem is full; returns its size."""
    written = 0
    chunk = b"\0" * 65536
    with open(os.path.join(path, "filler"), "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return written


def call(server: Fedserver, method: str, path: str, body=None, *, as_user=None, params=None):
    """(status, body) of a client API call; never raises for an HTTP status."""
    try:
        return 200, server.client(method, path, body, as_user=as_user, params=params)
    except HTTPError as e:
        return e.status, e.body


def room_bodies(server: Fedserver, user: str, room: str) -> list[str]:
    status, body = call(server, "GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/messages",
                        as_user=user, params={"dir": "b", "limit": 100})
    assert status == 200, body
    return [e["content"].get("body", "") for e in body["chunk"] if e["type"] == "m.room.message"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="4m", help="size of the tmpfs (default 4m)")
    parser.add_argument("--writes", type=int, default=6, help="client writes while full (default 6)")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="fedserver-diskfull-")
    mnt = os.path.join(root, "db")
    mounted = os.geteuid() == 0 and mount_tmpfs(mnt, args.size)
    if not mounted:
        print("FALLBACK: no tmpfs; see tests/test_storage_faults.py, which fills a real SQLite database with "
              "PRAGMA max_page_count (the same 503 answers, logs and recovery, in process)")
        return _fallback()
    outcome: dict = {}
    try:
        for d in ("a", "b"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        a = Fedserver(os.path.join(root, "a"), extra_config={"database_path": os.path.join(mnt, "fedserver.db"),
                                                              "log_level": "info"})
        b = Fedserver(os.path.join(root, "b"), extra_config={"outbound_max_retry_interval": 4, "log_level": "info"})
        a.start()
        b.start()
        alice, bob = a.user("alice"), b.user("bob")
        room = a.client("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, as_user=alice)["room_id"]
        b.client("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room)}", {}, as_user=bob,
                 params={"server_name": a.server_name})
        wait_until(lambda: len(room_bodies(a, alice, room)) == 0 and _joined(a, alice, room, bob), 30, "bob's join at A")

        filled = fill(mnt)
        outcome["filled"] = filled
        statuses: list[tuple[str, int, object]] = []
        for i in range(args.writes):
            status, body = call(a, "PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/full{i}",
                                {"msgtype": "m.text", "body": f"full{i} " + BIG}, as_user=alice)
            statuses.append((f"full{i}", status, body))
        status, body = call(a, "PUT", f"/_matrix/client/v3/user/{urllib.parse.quote(alice)}/account_data/big",
                            {"x": BIG}, as_user=alice)
        statuses.append(("account data", status, body))
        for i in range(3):
            b.client("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/b{i}",
                     {"msgtype": "m.text", "body": f"from-b-{i} " + BIG}, as_user=bob)
        time.sleep(6)  # B tries to deliver (and retries) while A is full
        sync_status, _ = call(a, "GET", "/_matrix/client/v3/sync", as_user=alice, params={"timeout": 0})
        at_a_while_full = [x.split(" ")[0] for x in room_bodies(a, alice, room)]
        outcome["statuses"] = statuses
        outcome["sync"] = sync_status

        os.remove(os.path.join(mnt, "filler"))
        freed = time.monotonic()
        status, body = call(a, "PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/after",
                            {"msgtype": "m.text", "body": "after " + BIG}, as_user=alice)
        outcome["after"] = status
        arrived = wait_until(lambda: all(f"from-b-{i}" in [x.split(" ")[0] for x in room_bodies(a, alice, room)]
                                         for i in range(3)) and time.monotonic(), 60, "B's messages at A")
        outcome["b_delay"] = arrived - freed
        final = [x.split(" ")[0] for x in room_bodies(a, alice, room)]
    finally:
        for server in (locals().get("a"), locals().get("b")):
            if server is not None:
                server.stop()
        subprocess.run(["umount", mnt], capture_output=True)
    with open(a.log_path, errors="replace") as f:
        log = f.read()
    with open(b.log_path, errors="replace") as f:
        b_log = f.read()

    by_code: dict[int, int] = {}
    for _, code, _ in outcome["statuses"]:
        by_code[code] = by_code.get(code, 0) + 1
    errcodes = {json.dumps(body)[:200] for _, code, body in outcome["statuses"] if code != 200}
    stored_ok = all((name in final) == (code == 200) for name, code, _ in outcome["statuses"] if name.startswith("full"))
    unavailable = re.findall(r"Database unavailable.*", log)
    still = re.findall(r"Database still unavailable.*", log)
    again = re.findall(r"Database works again.*", log)
    tracebacks = log.count("Traceback (most recent call last)")
    send_503 = len(re.findall(r"PUT \S+ /_matrix/federation/v1/send/\S+ -> 503", b_log))

    print(f"server A's database on a {args.size} tmpfs, filled with {outcome['filled']:,} bytes")
    print()
    print("| while the disk was full | measured |")
    print("| --- | --- |")
    print(f"| client writes (60 KB messages, account data) | {', '.join(f'{n} x {c}' for c, n in sorted(by_code.items()))} |")
    print(f"| error bodies | {'; '.join(sorted(errcodes)) or '-'} |")
    print(f"| each write stored exactly when it was answered 200 | {'yes' if stored_ok else 'NO'} |")
    print(f"| /sync | {outcome['sync']} |")
    print(f"| B's PUT /send answered 503 (B's log) | {send_503} |")
    print(f"| B's messages at A while full | {sum(1 for x in at_a_while_full if x.startswith('from-b'))} of 3 |")
    print(f"| A's log: 'unavailable' / 'still unavailable' / 'works again' / tracebacks | "
          f"{len(unavailable)} / {len(still)} / {len(again)} / {tracebacks} |")
    print()
    print("| after the file was deleted (no restart) | measured |")
    print("| --- | --- |")
    print(f"| A's user sends a 60 KB message | {outcome['after']} |")
    print(f"| B's 3 messages arrived at A | {outcome['b_delay']:.1f} s after space returned |")
    for line in unavailable[:1] + again[:1]:
        print(f"  A's log: {line.strip()}")
    kept = (set(by_code) <= {200, 503} and stored_ok and outcome["sync"] == 200 and outcome["after"] == 200
            and len(unavailable) >= 1 and tracebacks == 0 and all("M_UNKNOWN" in e for e in errcodes)
            and 503 in by_code)
    print("PASS: every promise held" if kept else "FAIL: see above")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if kept else 1


def _joined(server: Fedserver, user: str, room: str, member: str) -> bool:
    status, body = call(server, "GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/joined_members", as_user=user)
    return status == 200 and member in body.get("joined", {})


def _fallback() -> int:
    """Run the storage fault tests (real SQLite, PRAGMA max_page_count) and pass on their
    verdict."""
    result = subprocess.run([sys.executable, "-m", "twisted.trial", "tests.test_storage_faults"])
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
