"""End-to-end encryption across fedserver and a real Synapse, through both client APIs:
device keys queried and one-time keys claimed over federation in both directions,
cross-signing keys, to-device messages both ways (m.direct_to_device), and device list
updates (a device deleted on one server disappears from the other's answers, and shows
in its users' /sync device_lists.changed).

Both servers run as child processes (tests/interop/peers.py), started once for this module;
the real clients' proof (matrix-js-sdk with its Rust crypto) is in test_jssdk_e2ee.py.
"""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import TestCase

from tests.e2ee_support import CrossSigning, Device
from tests.interop.peers import PeerPair, http_json, wait_until

#: Seconds to wait for anything to cross between the servers.
CONVERGE = 30

_pair = PeerPair("interop-e2ee-")
_names = (f"e2e{i}" for i in itertools.count())


def q(value: str) -> str:
    return quote(value, safe="")


class Account:
    """A user logged in on one server, with a device whose keys the test holds."""

    def __init__(self, server: Any, user_id: str, token: str, device_id: str) -> None:
        self.server = server
        self.user_id = user_id
        self.token = token
        self.device_id = device_id
        self.device = Device(user_id, device_id)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return http_json(method, self.server.client_url + "/_matrix/client/v3" + path, body, token=self.token)

    def upload(self, otks: int = 0) -> None:
        body: dict[str, Any] = {"device_keys": self.device.device_keys()}
        if otks:
            body["one_time_keys"] = self.device.one_time_keys(otks)
        self.call("POST", "/keys/upload", body)

    def query(self, user_id: str) -> dict[str, Any]:
        return self.call("POST", "/keys/query", {"device_keys": {user_id: []}, "timeout": 10000})


class E2eeInteropTests(TestCase):
    def setUp(self) -> None:
        self.synapse, self.fedserver = _pair.get()

    def account(self, server: Any, localpart: str | None = None) -> Account:
        name = localpart or next(_names)
        user_id = server.register(name) if server is self.synapse else server.admin_user(name)
        token = server.tokens[user_id]
        device = http_json("GET", server.client_url + "/_matrix/client/v3/account/whoami", token=token)["device_id"]
        return Account(server, user_id, token, device)

    def login(self, account: Account) -> Account:
        """A second device of the same user."""
        localpart = account.user_id[1:].split(":", 1)[0]
        body = http_json("POST", account.server.client_url + "/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": "pw-" + localpart,
        })
        return Account(account.server, account.user_id, body["access_token"], body["device_id"])

    def shared_room(self, host: Account, guest: Account) -> str:
        room_id = host.call("POST", "/createRoom", {"preset": "public_chat"})["room_id"]
        via = q(host.server.server_name)
        wait_until(lambda: guest.call("POST", f"/join/{q(room_id)}?server_name={via}&via={via}", {}), CONVERGE,
                   "the join over federation")
        return room_id

    def test_keys_both_ways(self) -> None:
        """Each side's user reads the other's device keys and cross-signing keys over
        federation and claims a one-time key of the other's device."""
        ours, theirs = self.account(self.fedserver), self.account(self.synapse)
        self.shared_room(ours, theirs)
        for account in (ours, theirs):
            account.upload(otks=3)
        ocs, tcs = CrossSigning(ours.user_id), CrossSigning(theirs.user_id)
        ours.call("POST", "/keys/device_signing/upload", ocs.upload_body())
        theirs_upload = tcs.upload_body()
        try:
            theirs.call("POST", "/keys/device_signing/upload", theirs_upload)
        except Exception as e:  # Synapse asks for UIA on the first upload of some versions
            session = getattr(e, "body", {}).get("session")
            auth = {"type": "m.login.password", "session": session, "password": "pw-" + theirs.user_id[1:].split(":")[0],
                    "identifier": {"type": "m.id.user", "user": theirs.user_id}}
            theirs.call("POST", "/keys/device_signing/upload", dict(theirs_upload, auth=auth))
        for reader, owner, cs in ((theirs, ours, ocs), (ours, theirs, tcs)):
            def seen(reader=reader, owner=owner, cs=cs):
                got = reader.query(owner.user_id)
                devices = got.get("device_keys", {}).get(owner.user_id, {})
                master = got.get("master_keys", {}).get(owner.user_id, {})
                if owner.device_id in devices and master.get("keys") == cs.key_json("master")["keys"]:
                    return got
            got = wait_until(seen, CONVERGE, f"{reader.server.server_name} to see the keys of {owner.user_id}")
            keys = got["device_keys"][owner.user_id][owner.device_id]["keys"]
            self.assertEqual(keys[f"ed25519:{owner.device_id}"], owner.device.ed25519)
            self.assertIn(owner.user_id, got["self_signing_keys"])
            self.assertNotIn(owner.user_id, got.get("user_signing_keys", {}))
            claimed = reader.call("POST", "/keys/claim", {"one_time_keys": {owner.user_id: {owner.device_id: "signed_curve25519"}}})
            self.assertEqual(claimed.get("failures", {}), {})
            self.assertEqual(len(claimed["one_time_keys"][owner.user_id][owner.device_id]), 1)

    def test_to_device_both_ways(self) -> None:
        """A to-device message crosses in each direction (m.direct_to_device) and shows
        in the receiving device's /sync once."""
        ours, theirs = self.account(self.fedserver), self.account(self.synapse)
        for sender, receiver, tag in ((ours, theirs, "from fedserver"), (theirs, ours, "from synapse")):
            start = receiver.call("GET", "/sync?timeout=0")["next_batch"]
            sender.call("PUT", f"/sendToDevice/m.test.e2ee/{q(tag)}", {"messages": {receiver.user_id: {receiver.device_id: {"tag": tag}}}})

            def got(receiver=receiver, start=start, tag=tag):
                sync = receiver.call("GET", f"/sync?timeout=1000&since={q(start)}")
                events = [e for e in sync.get("to_device", {}).get("events", []) if e.get("type") == "m.test.e2ee"]
                return (events, sync["next_batch"]) if events else None

            events, after = wait_until(got, CONVERGE, f"the to-device message {tag}")
            self.assertEqual(events, [{"sender": sender.user_id, "type": "m.test.e2ee", "content": {"tag": tag}}])
            again = receiver.call("GET", f"/sync?timeout=0&since={q(after)}")
            self.assertEqual([e for e in again.get("to_device", {}).get("events", []) if e.get("type") == "m.test.e2ee"], [])

    def test_device_deletion_seen_across(self) -> None:
        """A device deleted on one server drops out of the other server's /keys/query
        answers (m.device_list_update, with a resync through /user/devices where the
        receiver needs one), and its owner shows in device_lists.changed."""
        for home, away in ((self.fedserver, self.synapse), (self.synapse, self.fedserver)):
            owner, watcher = self.account(home), self.account(away)
            second = self.login(owner)
            self.shared_room(owner, watcher)
            owner.upload()
            second.upload()

            def both(owner=owner, watcher=watcher, second=second):
                devices = watcher.query(owner.user_id).get("device_keys", {}).get(owner.user_id, {})
                return {owner.device_id, second.device_id} <= set(devices)

            wait_until(both, CONVERGE, f"{away.server_name} to see both devices of {owner.user_id}")
            since = watcher.call("GET", "/sync?timeout=0")["next_batch"]
            localpart = owner.user_id[1:].split(":")[0]
            try:
                owner.call("POST", "/delete_devices", {"devices": [second.device_id]})
            except Exception as e:  # UIA
                auth = {"type": "m.login.password", "session": e.body.get("session"), "password": "pw-" + localpart,
                        "identifier": {"type": "m.id.user", "user": owner.user_id}}
                owner.call("POST", "/delete_devices", {"devices": [second.device_id], "auth": auth})

            def gone(owner=owner, watcher=watcher, second=second):
                devices = watcher.query(owner.user_id).get("device_keys", {}).get(owner.user_id, {})
                return owner.device_id in devices and second.device_id not in devices

            wait_until(gone, CONVERGE, f"{away.server_name} to drop the deleted device of {owner.user_id}")

            def changed(watcher=watcher, since=since, owner=owner):
                sync = watcher.call("GET", f"/sync?timeout=1000&since={q(since)}")
                return owner.user_id in sync.get("device_lists", {}).get("changed", [])

            wait_until(changed, CONVERGE, f"{owner.user_id} in device_lists.changed on {away.server_name}")


# -- real clients: matrix-js-sdk with its Rust crypto ---------------------------------------


class _Control:
    """A loopback HTTP endpoint the node scenario calls to restart a server
    (``POST /restart/a`` or ``/restart/b``).

    Requests arrive on a thread, but the restart itself runs on the test's main thread
    (:meth:`serve_while`): the servers are started with PR_SET_PDEATHSIG, which signals a
    child when the *thread* that started it ends."""

    def __init__(self, servers: dict[str, Any]) -> None:
        import http.server
        import queue
        import threading

        self.servers = servers
        self.requests: "queue.Queue[tuple[str, queue.Queue]]" = queue.Queue()
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                name = self.path.rsplit("/", 1)[-1]
                if name not in servers or not self.path.startswith("/restart/"):
                    self.send_response(404)
                    self.end_headers()
                    return
                reply: queue.Queue = queue.Queue()
                requests.put((name, reply))
                error = reply.get(timeout=600)
                self.send_response(200 if error is None else 500)
                self.end_headers()
                self.wfile.write(b"{}" if error is None else str(error).encode()[:2000])

            def log_message(self, *args: Any) -> None:
                pass

        self.restarts: list[str] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve_while(self, worker: Any) -> None:
        """Perform restart requests on this thread until ``worker`` (a thread) ends."""
        import queue

        while worker.is_alive():
            try:
                name, reply = self.requests.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.servers[name].restart()
                self.restarts.append(name)
                reply.put(None)
            except Exception as e:  # noqa: BLE001 - reported to the scenario
                reply.put(e)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class JsSdkEncryptionTests(TestCase):
    """matrix-js-sdk (the SDK under Element) with its Rust crypto on each server."""

    def setUp(self) -> None:
        from tests.jsclient import node_or_skip

        node_or_skip()
        self.synapse, self.fedserver = _pair.get()

    def test_encrypted_conversations(self) -> None:
        """Two encrypted conversations between a fedserver user and a Synapse user (a room
        created on each server) decrypt on both sides; cross-signing status of the other
        user's device is readable on both; a second device restores the keys from a key
        backup on fedserver; a device deleted on either server is seen deleted on the
        other; the conversations go on through a restart of each server; nothing fails
        to decrypt."""
        from tests.jsclient import account, run_scenario

        a_id = self.fedserver.admin_user(next(_names))
        b_id = self.synapse.register(next(_names))
        import threading

        control = _Control({"a": self.fedserver, "b": self.synapse})
        result: dict[str, Any] = {}

        def scenario() -> None:
            try:
                result["out"] = run_scenario("e2ee", {
                    "a": account(self.fedserver, a_id), "b": account(self.synapse, b_id), "controlUrl": control.url,
                }, timeout=900)
            except BaseException as e:  # noqa: BLE001 - re-raised on the test's thread
                result["error"] = e

        worker = threading.Thread(target=scenario, daemon=True)
        worker.start()
        try:
            control.serve_while(worker)
        finally:
            worker.join()
            control.close()
        if "error" in result:
            raise result["error"]
        out = result["out"]
        steps = {s["name"]: s for s in out["steps"]}
        self.assertEqual(out["failures"], {"a": [], "b": []})
        for tag in ("room on a", "room on b", "room on a, a restarted", "room on b, b restarted"):
            for body in (f"{tag}: hello from a", f"{tag}: hello from b"):
                self.assertIn(body, out["aBodies"])
                self.assertIn(body, out["bBodies"])
        cross = steps["cross-signing"]
        self.assertTrue(cross["aSeesB"]["signedByOwner"])
        self.assertTrue(cross["bSeesA"]["signedByOwner"])
        self.assertTrue(cross["aHasKeysOfB"] and cross["bHasKeysOfA"])
        restored = steps["second device restored from the backup"]
        self.assertGreaterEqual(restored["restored"]["imported"], 2)
        self.assertIn("room on a: hello from b", restored["bodies"])
        deleted = steps["deleted devices seen across"]
        self.assertEqual((len(deleted["aDevicesSeenByB"]), len(deleted["bDevicesSeenByA"])), (1, 1))
        self.assertEqual(control.restarts, ["a", "b"])
