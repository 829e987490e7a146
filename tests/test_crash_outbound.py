"""A 200 means "committed and queued for every server in the room": a real fedserver process
is killed with SIGKILL right after answering, restarted, and a second real fedserver must
still receive the event, for every kind of event the resident makes or accepts."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import tempfile
import threading
import time
import urllib.parse

from twisted.trial.unittest import SynchronousTestCase

from fedserver.events.builder import build_from_template
from fedserver.federation.xmatrix import sign_request
from fedserver.room_versions import RoomVersionRegistry
from tests.interop.peers import Fedserver, HTTPError, free_port, http_json, self_signed_cert, wait_until
from tests.test_federation_support import Peer

#: How long the peer gets to receive an event once the resident is back.
DELIVERY_TIMEOUT_S = 20


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class KeyServer:
    """A server that exists only as a signing key published over TLS on loopback (so real
    servers can verify what it signs), driven from the test: it joins rooms through the
    handshake by hand."""

    def __init__(self, directory: str):
        self.port = free_port()
        self.peer = Peer(f"127.0.0.1:{self.port}", "k1")
        document = json.dumps(self.peer.key_document()).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                found = self.path.split("?")[0] == "/_matrix/key/v2/server"
                body = document if found else b'{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}'
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        os.makedirs(directory, exist_ok=True)
        crt, key = self_signed_cert(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(crt, key)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def request(self, method: str, destination: str, path: str, body=None):
        header = sign_request(self.peer.name, self.peer.key, destination, method, path, body)
        return http_json(method, f"https://{destination}{path}", body, headers={"Authorization": header})

    def join(self, resident: str, room_id: str, user_id: str) -> str:
        """make_join + send_join v2 through ``resident``; returns the join's event id."""
        ver = "&".join(f"ver={v}" for v in RoomVersionRegistry().identifiers())
        made = self.request("GET", resident, f"/_matrix/federation/v1/make_join/{q(room_id)}/{q(user_id)}?{ver}")
        rv = RoomVersionRegistry().get(made["room_version"])
        event = build_from_template(
            made["event"], rv, origin_server_ts=int(time.time() * 1000),
            server_name=self.peer.name, signing_key=self.peer.key,
        )
        self.request("PUT", resident, f"/_matrix/federation/v2/send_join/{q(room_id)}/{q(event.event_id)}", event.pdu)
        return event.event_id


class CrashAfterAnswerTests(SynchronousTestCase):
    """DESIGN.md, Durability: "A 200 to a client for a new local event means the event and
    its outbound queue rows for every other server in the room are committed, in one
    database transaction" (issue 12: SIGKILL right after the 200 once lost 8 of 25)."""

    def setUp(self):
        base = tempfile.mkdtemp(prefix="crash-outbound-", dir=os.getcwd())
        self.a = Fedserver(os.path.join(base, "a"))
        self.b = Fedserver(os.path.join(base, "b"))
        self.addCleanup(self.a.stop)
        self.addCleanup(self.b.stop)
        self.a.start()
        self.b.start()

    def kill_and_restart(self, server: Fedserver) -> None:
        server.proc.kill()  # SIGKILL: no shutdown code runs
        server.proc.wait()
        server.start()

    def b_has_event(self, user: str, room: str, event_id: str) -> bool:
        try:
            self.b.client("GET", f"/_matrix/client/v3/rooms/{q(room)}/event/{q(event_id)}", as_user=user)
        except HTTPError as e:
            if e.status == 404:
                return False
            raise
        return True

    def b_membership(self, user: str, room: str, target: str):
        try:
            got = self.b.client("GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(target)}", as_user=user)
        except HTTPError as e:
            if e.status == 404:
                return None
            raise
        return got.get("membership")

    def test_every_kind_of_event_reaches_the_peer_after_a_kill(self):
        """For each kind of event (message, state, local join, redaction, invite of a user
        of the peer, leave, a join another server makes through our send_join, knock),
        SIGKILL the resident the moment it answers 200, restart it, and the peer gets the
        event. Kinds the peer never got are listed in the failure."""
        a, b = self.a, self.b
        alice, carol, erin = a.admin_user("alice"), a.admin_user("carol"), a.admin_user("erin")
        bob, dave = b.admin_user("bob"), b.admin_user("dave")
        room = a.client("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, as_user=alice)["room_id"]
        b.client("POST", f"/_matrix/client/v3/join/{q(room)}", {}, as_user=bob, params={"server_name": a.server_name})
        lost: list[str] = []

        def check(kind: str, arrived) -> None:
            try:
                wait_until(arrived, DELIVERY_TIMEOUT_S, f"{kind} to reach the peer")
            except AssertionError:
                lost.append(kind)

        def send(kind: str, method: str, path: str, body: dict) -> str:
            answer = a.client(method, path, body, as_user=alice)
            self.kill_and_restart(a)
            event_id = answer["event_id"]
            check(kind, lambda: self.b_has_event(bob, room, event_id))
            return event_id

        def member(kind: str, who: str, method: str, path: str, body: dict, target: str, membership: str) -> None:
            a.client(method, path, body, as_user=who)
            self.kill_and_restart(a)
            check(kind, lambda: self.b_membership(bob, room, target) == membership)

        r = f"/_matrix/client/v3/rooms/{q(room)}"
        message = send("message", "PUT", f"{r}/send/m.room.message/t1", {"msgtype": "m.text", "body": "one"})
        send("state", "PUT", f"{r}/state/m.room.topic", {"topic": "crashes"})
        member("local join", carol, "POST", f"/_matrix/client/v3/join/{q(room)}", {}, carol, "join")
        send("redaction", "PUT", f"{r}/redact/{q(message)}/t2", {})
        member("invite of the peer's user", alice, "POST", f"{r}/invite", {"user_id": dave}, dave, "invite")
        member("leave", carol, "POST", f"{r}/leave", {}, carol, "leave")

        # A join we accept through send_join from a third server: we must pass it on (the
        # joining server is a bare key server that never sends anything itself).
        joiner = KeyServer(os.path.join(os.path.dirname(a.directory), "c"))
        self.addCleanup(joiner.stop)
        frank = f"@frank:{joiner.peer.name}"
        joiner.join(a.server_name, room, frank)
        self.kill_and_restart(a)
        check("join served through send_join", lambda: self.b_membership(bob, room, frank) == "join")

        a.client("PUT", f"{r}/state/m.room.join_rules", {"join_rule": "knock"}, as_user=alice)
        member("knock", erin, "POST", f"/_matrix/client/v3/knock/{q(room)}", {}, erin, "knock")
        self.assertEqual(lost, [], f"events the peer never received: {lost}")
