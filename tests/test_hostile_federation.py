"""HOSTILE.md rows 1-13, 16 and 26 against a whole fedserver started in-process on loopback and spoken to
over real TLS, as a peer would: every bad request gets the right Matrix error, nothing is
half-written, nothing processed twice."""

from __future__ import annotations

import json
import os
import socket
import ssl
from urllib.parse import quote

import treq
from twisted.internet import reactor
from twisted.internet import ssl as twisted_ssl
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from fedserver.config import config_from_dict
from fedserver.events.hashing import compute_event_id, unpadded_base64
from fedserver.federation.xmatrix import sign_request
from fedserver.room_versions import V10
from fedserver.service import FedserverService
from fedserver.testing import database_options_for_test
from tests.test_federation_support import FED, Peer, now_ms

US = "us.test:8448"
ALICE = "@alice:us.test:8448"

#: HOSTILE row 7: more than any legal transaction (the default cap is 12.5 MiB).
OVERSIZED = 13 * 1024 * 1024


@implementer(IPolicyForHTTPS)
class _TrustServerCert:
    """Trust exactly the server's generated certificate, checked for its host name."""

    def __init__(self, pem: bytes, hostname: str) -> None:
        self.cert = twisted_ssl.Certificate.loadPEM(pem)
        self.hostname = hostname

    def creatorForNetloc(self, hostname, port):
        return twisted_ssl.optionsForClientTLS(self.hostname, trustRoot=self.cert)


class RunningServerCase(TestCase):
    """A running server on loopback; the peer is an IP-literal server whose key the
    server already holds (so nothing is fetched and unknown keys fail at once)."""

    #: Keep the database in SQLite whatever backend the tests run on.
    sqlite_only = False

    async def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)
        config = config_from_dict(
            {
                "server_name": US,
                "database_path": os.path.join(self.dir, "fedserver.db"),
                "signing_key_path": os.path.join(self.dir, "signing.key"),
                "tls_certificate_path": os.path.join(self.dir, "tls.crt"),
                "tls_private_key_path": os.path.join(self.dir, "tls.key"),
                "federation_listen": "127.0.0.1:0",
                "client_listen": "127.0.0.1:0",
                **({} if self.sqlite_only else database_options_for_test(os.path.join(self.dir, "fedserver.db"))),
            }
        )
        self.service = FedserverService(config, reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        await self.service.when_ready()
        self.port = self.service.federation_listener.port.getHost().port
        # A peer whose keys we hold; connecting to it is refused by policy, instantly.
        self.peer = Peer("127.0.0.1:9")
        doc = self.peer.key_document()
        key_b64 = unpadded_base64(self.peer.key.verify_key.encode())
        await self.service.store.store_server_keys(
            self.peer.name, [(self.peer.key_id, key_b64, doc["valid_until_ts"], None)], json.dumps(doc).encode(), now_ms()
        )
        with open(config.tls_certificate_path, "rb") as f:
            self.pem = f.read()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, contextFactory=_TrustServerCert(self.pem, "us.test"), pool=pool))
        await self.make_room()

    async def make_room(self):
        """A public v10 room of ours that the peer's user @u has joined, so that the peer's
        messages pass every receipt check; ``self.room`` and ``self.msg(body)``."""
        creator = self.service.creator
        create, _ = await creator.create_room_event(V10, sender=ALICE, content={"creator": ALICE, "room_version": "10"})
        self.room = create.room_id
        for type_, content, key in (
            ("m.room.member", {"membership": "join"}, ALICE),
            ("m.room.power_levels", {"users": {ALICE: 100}}, ""),
            ("m.room.join_rules", {"join_rule": "public"}, ""),
        ):
            await creator.send(self.room, V10, type=type_, sender=ALICE, content=content, state_key=key)
        state = await self.service.pipeline.current_state(self.room)
        ext = sorted(await self.service.pipeline.forward_extremities(self.room))
        join = self.peer.pdu(
            V10, self.room, type="m.room.member", sender="@u:" + self.peer.name, state_key="@u:" + self.peer.name,
            content={"membership": "join"}, prev_event_ids=ext, depth=5,
            auth_event_ids=[state[("m.room.create", "")], state[("m.room.power_levels", "")], state[("m.room.join_rules", "")]],
        )
        code, body, _ = await self.request("PUT", FED + "/send/setup-join", self.txn([join]))
        join_id = compute_event_id(join, V10)
        assert (code, body["pdus"].get(join_id)) == (200, {}), body
        self.msg_fields = dict(
            prev_event_ids=[join_id], depth=6,
            auth_event_ids=[state[("m.room.create", "")], state[("m.room.power_levels", "")], join_id],
        )

    def msg(self, body, peer=None):
        """A message of the peer's user in ``self.room``, after its join."""
        return (peer or self.peer).pdu(V10, self.room, body, **self.msg_fields)

    async def request(self, method, uri, body=None, headers=None, sign=True, sign_content=None):
        """One request; signed over ``sign_content`` (default: ``body``) unless told not to."""
        hdrs = dict(headers or {})
        if sign:
            content = body if sign_content is None else sign_content
            if isinstance(content, bytes):
                content = None
            hdrs[b"Authorization"] = [sign_request(self.peer.name, self.peer.key, US, method, uri, content).encode()]
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        resp = await self.http.request(method, f"https://127.0.0.1:{self.port}{uri}", headers=hdrs, data=data)
        raw = await resp.content()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        return resp.code, parsed, raw

    def txn(self, pdus=(), edus=None):
        body = {"origin": self.peer.name, "origin_server_ts": now_ms(), "pdus": list(pdus)}
        if edus is not None:
            body["edus"] = edus
        return body

    async def assertError(self, result, code, errcode):
        status, body, raw = result
        self.assertEqual((status, body and body.get("errcode")), (code, errcode), raw[:300])
        self.assertIsInstance(body.get("error"), str)

    async def nothing_recorded(self, txn_id):
        self.assertIsNone(await self.service.store.get_received_txn(self.peer.name, txn_id))


class HostileFederationTests(RunningServerCase):
    """HOSTILE.md rows 1-13, 16 and 26."""

    # -- rows 1-4: authentication -----------------------------------------------------------

    async def test_row1_no_authorization(self):
        """Row 1: no Authorization header (or a non-X-Matrix one) on an authenticated
        endpoint is 401 M_UNAUTHORIZED; nothing is recorded."""
        uri = FED + "/send/r1"
        await self.assertError(await self.request("PUT", uri, self.txn(), sign=False), 401, "M_UNAUTHORIZED")
        await self.assertError(
            await self.request("PUT", uri, self.txn(), sign=False, headers={b"Authorization": [b"Bearer x"]}),
            401, "M_UNAUTHORIZED",
        )
        await self.assertError(await self.request("GET", FED + "/query/profile?user_id=%40a%3Aus.test", sign=False), 401, "M_UNAUTHORIZED")
        await self.nothing_recorded("r1")

    async def test_row2_unparseable_header_or_bad_origin(self):
        """Row 2: an unparseable X-Matrix header or an invalid origin server name is 401
        M_UNAUTHORIZED."""
        uri = FED + "/send/r2"
        for header in (
            b"X-Matrix",
            b"X-Matrix garbage",
            b'X-Matrix origin="bad name!",key="ed25519:p1",sig="abc"',
            b'X-Matrix origin="127.0.0.1:9",key="ed25519:p1"',
            b'X-Matrix origin="127.0.0.1:99999",key="ed25519:p1",sig="abc"',
            b"X-Matrix " + b"a" * 10000,
        ):
            result = await self.request("PUT", uri, self.txn(), sign=False, headers={b"Authorization": [header]})
            await self.assertError(result, 401, "M_UNAUTHORIZED")
        await self.nothing_recorded("r2")

    async def test_row3_wrong_destination(self):
        """Row 3: an X-Matrix destination other than our server name (even our host with
        another port) is 401 M_UNAUTHORIZED."""
        uri = FED + "/send/r3"
        body = self.txn()
        for destination in ("other.test", "us.test", "us.test:8449"):
            header = sign_request(self.peer.name, self.peer.key, destination, "PUT", uri, body)
            result = await self.request("PUT", uri, body, sign=False, headers={b"Authorization": [header.encode()]})
            await self.assertError(result, 401, "M_UNAUTHORIZED")
        await self.nothing_recorded("r3")

    async def test_row4_tampered_or_unknown_key(self):
        """Row 4: a signature over another method, URI, query or body, or by an unknown
        key id, or by a key whose validity has expired, is 401 M_UNAUTHORIZED."""
        uri = FED + "/send/r4"
        body = self.txn()
        sig_for = lambda method, u, content: {  # noqa: E731
            b"Authorization": [sign_request(self.peer.name, self.peer.key, US, method, u, content).encode()]
        }
        cases = [
            ("PUT", uri, body, sig_for("POST", uri, body)),
            ("PUT", uri, body, sig_for("PUT", FED + "/send/other", body)),
            ("PUT", uri, body, sig_for("PUT", uri, dict(body, pdus=[{}]))),
            ("PUT", uri + "?x=1", body, sig_for("PUT", uri, body)),
        ]
        q = FED + "/query/profile?user_id=%40a%3Aus.test%3A8448"
        cases.append(("GET", q, None, sig_for("GET", q.replace("%40a", "%40b"), None)))
        for method, u, b, headers in cases:
            await self.assertError(await self.request(method, u, b, sign=False, headers=headers), 401, "M_UNAUTHORIZED")
        stranger = Peer("127.0.0.1:9", "unknown")
        header = sign_request(stranger.name, stranger.key, US, "PUT", uri, body)
        result = await self.request("PUT", uri, body, sign=False, headers={b"Authorization": [header.encode()]})
        await self.assertError(result, 401, "M_UNAUTHORIZED")
        # The same peer, but the key we hold for it expired an hour ago.
        expired = Peer("127.0.0.1:10", "old")
        await self.service.store.store_server_keys(
            expired.name, [(expired.key_id, unpadded_base64(expired.key.verify_key.encode()), now_ms() - 3_600_000, None)],
            None, now_ms() - 90_000_000,
        )
        header = sign_request(expired.name, expired.key, US, "PUT", uri, body)
        result = await self.request("PUT", uri, dict(body, origin=expired.name), sign=False,
                                    headers={b"Authorization": [header.encode()]})
        await self.assertError(result, 401, "M_UNAUTHORIZED")
        await self.nothing_recorded("r4")
        self.flushLoggedErrors()

    # -- rows 5-8: bodies and routing -------------------------------------------------------

    async def test_row5_not_json(self):
        """Row 5: an empty body, invalid UTF-8, NaN / Infinity, or absurd nesting on a
        signed request is 400 M_NOT_JSON, never 500."""
        uri = FED + "/send/r5"
        for raw in (b"", b"\xff\xfe{}", b'{"pdus": NaN}', b'{"pdus": [Infinity]}', b"[" * 100_000 + b"]" * 100_000,
                    b'{"a": 1e400}', b"{", b"\x00"):
            await self.assertError(await self.request("PUT", uri, raw), 400, "M_NOT_JSON")
        await self.nothing_recorded("r5")

    async def test_row6_not_an_object(self):
        """Row 6: JSON that is not an object where one is required is 400 M_BAD_JSON."""
        uri = FED + "/send/r6"
        for value in ([], "txn", 5, None, True):
            await self.assertError(await self.request("PUT", uri, json.dumps(value).encode(), sign_content=value), 400, "M_BAD_JSON")
        await self.nothing_recorded("r6")

    def _raw_oversized(self, chunked: bool) -> tuple[bytes, int]:
        """Send a huge body over a raw TLS socket (in a thread) until the server answers;
        return the answer and how many body bytes had gone out by then."""
        import select

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as raw:
            with ctx.wrap_socket(raw) as s:
                head = [b"PUT /_matrix/federation/v1/send/r7 HTTP/1.1", b"Host: us.test:8448",
                        b"Content-Type: application/json"]
                head.append(b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % OVERSIZED)
                s.sendall(b"\r\n".join(head) + b"\r\n\r\n")
                sent = 0
                chunk = b"[" + b"1," * (32 * 1024)
                answer = b""

                def answered() -> bool:
                    nonlocal answer
                    if not select.select([s], [], [], 0)[0] and not s.pending():
                        return False
                    s.setblocking(False)
                    try:
                        answer += s.recv(65536)  # b"" if the server closed
                        return True
                    except (ssl.SSLWantReadError, BlockingIOError):
                        return False  # only TLS housekeeping (session tickets)
                    finally:
                        s.settimeout(30)

                while sent < 3 * OVERSIZED:
                    if answered():
                        break
                    try:
                        s.sendall((b"%x\r\n" % len(chunk) + chunk + b"\r\n") if chunked else chunk)
                    except OSError:
                        break  # the server closed the connection
                    sent += len(chunk)
                try:
                    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                        data = s.recv(65536)
                        if not data:
                            break
                        answer += data
                except OSError:
                    pass
                return answer, sent

    async def test_row7_oversized_body(self):
        """Row 7: a body far beyond any legal transaction gets 413 M_TOO_LARGE with
        ``Connection: close``: at once from its Content-Length, and as soon as the cap is
        passed when streamed chunked (counted while reading, never buffered whole);
        nothing is recorded."""
        limit = self.service.config.max_request_body_size
        for chunked in (False, True):
            answer, sent = await deferToThread(self._raw_oversized, chunked)
            self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:200])
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertIn(b"connection: close", head.lower())
            self.assertEqual(json.loads(body)["errcode"], "M_TOO_LARGE")
            if chunked:
                self.assertLess(sent, limit + 12 * 1024 * 1024)  # kernel buffers in flight
                self.assertGreater(sent, limit)
            else:
                self.assertLess(sent, 4 * 1024 * 1024)
        await self.nothing_recorded("r7")

    async def test_row8_unknown_endpoint_or_method(self):
        """Row 8: unknown endpoints are 404 M_UNRECOGNIZED, a known one with the wrong
        method 405 M_UNRECOGNIZED, signed or not."""
        await self.assertError(await self.request("GET", FED + "/nonsense"), 404, "M_UNRECOGNIZED")
        await self.assertError(await self.request("GET", "/_matrix/federation/v3/send/x", sign=False), 404, "M_UNRECOGNIZED")
        await self.assertError(await self.request("GET", "/", sign=False), 404, "M_UNRECOGNIZED")
        await self.assertError(await self.request("POST", FED + "/send/x", self.txn()), 405, "M_UNRECOGNIZED")
        await self.assertError(await self.request("DELETE", FED + "/version", sign=False), 405, "M_UNRECOGNIZED")
        await self.assertError(await self.request("PUT", "/_matrix/key/v2/server", {}, sign=False), 405, "M_UNRECOGNIZED")

    # -- rows 9-13: transactions ------------------------------------------------------------

    async def test_row9_too_many_pdus_or_edus(self):
        """Row 9: more than 50 PDUs or 100 EDUs is 400 M_BAD_JSON and nothing of it is
        stored."""
        pdus = [self.msg(str(i)) for i in range(51)]
        await self.assertError(await self.request("PUT", FED + "/send/r9a", self.txn(pdus)), 400, "M_BAD_JSON")
        edus = [{"edu_type": "m.typing", "content": {}}] * 101
        await self.assertError(await self.request("PUT", FED + "/send/r9b", self.txn([], edus)), 400, "M_BAD_JSON")
        ids = [compute_event_id(p, V10) for p in pdus]
        self.assertEqual(await self.service.store.have_events(ids), set())
        await self.nothing_recorded("r9a")
        await self.nothing_recorded("r9b")

    async def test_row10_replayed_transaction(self):
        """Row 10: a replayed transaction id gets the first response again, byte for byte,
        and nothing in it is processed twice (a different PDU under the same id is not
        stored)."""
        first_pdu, second_pdu = self.msg("one"), self.msg("two")
        code, body, raw = await self.request("PUT", FED + "/send/r10", self.txn([first_pdu]))
        self.assertEqual((code, body), (200, {"pdus": {compute_event_id(first_pdu, V10): {}}}))
        code2, _, raw2 = await self.request("PUT", FED + "/send/r10", self.txn([second_pdu]))
        self.assertEqual((code2, raw2), (200, raw))
        ids = [compute_event_id(p, V10) for p in (first_pdu, second_pdu)]
        self.assertEqual(await self.service.store.have_events(ids), {ids[0]})

    async def test_rows11_to_13_bad_pdus_in_a_good_transaction(self):
        """Rows 11-13: a float, an integer beyond 2**53-1, a missing type or an unknown room
        only affects that PDU; a PDU whose signature does not verify gets a per-PDU error;
        one whose content hash does not match is kept redacted; the transaction is 200."""
        good = self.msg("good")
        with_float = self.msg("f")
        with_float["content"]["x"] = 1.5
        big = self.msg("b")
        big["content"]["x"] = 2**53
        no_type = self.msg("t")
        del no_type["type"]
        unknown_room = self.peer.pdu(V10, "!elsewhere:127.0.0.1")
        forged = self.msg("forged", peer=Peer(self.peer.name, "p1"))
        tampered = self.msg("secret")
        tampered["content"]["body"] = "changed"
        pdus = [with_float, big, no_type, unknown_room, forged, tampered, good]
        code, body, _ = await self.request("PUT", FED + "/send/r11", self.txn(pdus))
        self.assertEqual(code, 200)
        results = body["pdus"]
        ids = {name: compute_event_id(p, V10) for name, p in
               (("float", with_float), ("big", big), ("forged", forged), ("tampered", tampered), ("good", good),
                ("unknown", unknown_room))}
        for name in ("float", "big", "forged"):
            self.assertIn("error", results[ids[name]], name)
        self.assertNotIn(ids["unknown"], results)
        self.assertEqual((results[ids["good"]], results[ids["tampered"]]), ({}, {}))
        store = self.service.store
        self.assertEqual(await store.have_events(ids.values()), {ids["good"], ids["tampered"]})
        self.assertEqual((await store.get_event(ids["tampered"])).content, {})

    async def test_row16_bad_auth_events_rejected(self):
        """Row 16: a PDU whose auth_events name the same (type, state_key) twice, an event of
        an unexpected type, or an event of another room is rejected (kept with its rule, never
        state); the transaction is still 200 and says so per PDU."""
        state = await self.service.pipeline.current_state(self.room)
        fields = dict(self.msg_fields)
        create, pl, join = fields["auth_event_ids"]
        prev = fields["prev_event_ids"]
        duplicate = self.peer.pdu(V10, self.room, "dup", prev_event_ids=prev, depth=6, auth_event_ids=[create, pl, join, join])
        # A message's auth events never include the join rules.
        unexpected = self.peer.pdu(V10, self.room, "unexpected", prev_event_ids=prev, depth=6,
                                   auth_event_ids=[create, pl, join, state[("m.room.join_rules", "")]])
        code, body, _ = await self.request("PUT", FED + "/send/r16", self.txn([duplicate, unexpected]))
        self.assertEqual(code, 200)
        for pdu in (duplicate, unexpected):
            eid = compute_event_id(pdu, V10)
            self.assertIn("error", body["pdus"][eid])
            self.assertNotIn(eid, await self.service.store.get_forward_extremities(self.room))
        self.assertIsNotNone(await self.service.store.get_rejection(compute_event_id(unexpected, V10)))

    async def test_row26_kick_above_own_power_rejected(self):
        """Row 26: the peer's user (power 0) kicking the room's admin (power 100) is rejected;
        the transaction is still 200; the admin stays joined."""
        state = await self.service.pipeline.current_state(self.room)
        fields = dict(self.msg_fields)
        kick = self.peer.pdu(
            V10, self.room, type="m.room.member", sender="@u:" + self.peer.name, state_key=ALICE,
            content={"membership": "leave"}, prev_event_ids=fields["prev_event_ids"], depth=6,
            auth_event_ids=fields["auth_event_ids"] + [state[("m.room.member", ALICE)]],
        )
        code, body, _ = await self.request("PUT", FED + "/send/r26", self.txn([kick]))
        self.assertEqual(code, 200)
        eid = compute_event_id(kick, V10)
        self.assertIn("error", body["pdus"][eid])
        current = await self.service.store.get_current_state_ids(self.room)
        self.assertEqual(current[("m.room.member", ALICE)], state[("m.room.member", ALICE)])

    async def test_error_paths_do_not_break_the_server(self):
        """After all that, a well-formed transaction and /version still work and a
        percent-encoded odd path answers JSON (never a 500): 200, or on PostgreSQL 400
        M_INVALID_PARAM for a transaction id holding U+0000."""
        await self.assertError(await self.request("GET", FED + "/send/" + quote("../../etc", safe="")), 405, "M_UNRECOGNIZED")
        code, body, _ = await self.request("PUT", FED + "/send/%27%22", self.txn())
        self.assertEqual((code, body), (200, {"pdus": {}}))
        code, body, _ = await self.request("PUT", FED + "/send/%00%27%22", self.txn())
        if self.service.store.database.dialect.text_allows_nul:
            self.assertEqual((code, body), (200, {"pdus": {}}))
        else:
            # PostgreSQL cannot store U+0000 in TEXT: the id is refused up front.
            self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
        code, body, _ = await self.request("GET", FED + "/version", sign=False)
        self.assertEqual(code, 200)


class HostileHandshakeTests(RunningServerCase):
    """HOSTILE.md rows 14 and 18-25: the membership handshakes refuse what they must, with
    the right Matrix error, and store nothing."""

    async def make_room(self):
        await super().make_room()
        creator = self.service.creator
        create, _ = await creator.create_room_event(V10, sender=ALICE, content={"creator": ALICE, "room_version": "10"})
        self.private = create.room_id
        for type_, content, key in (
            ("m.room.member", {"membership": "join"}, ALICE),
            ("m.room.power_levels", {"users": {ALICE: 100}}, ""),
            ("m.room.join_rules", {"join_rule": "invite"}, ""),
        ):
            await creator.send(self.private, V10, type=type_, sender=ALICE, content=content, state_key=key)

    def peer_user(self, name="joiner"):
        return f"@{name}:{self.peer.name}"

    async def make_join(self, room, user, ver=("10",)):
        query = "&".join("ver=" + v for v in ver)
        return await self.request("GET", FED + f"/make_join/{quote(room, safe='')}/{quote(user, safe='')}?{query}")

    async def signed_join(self, **overrides):
        """A join of the peer's user built from our make_join template, then altered."""
        code, body, raw = await self.make_join(self.room, self.peer_user())
        self.assertEqual(code, 200, raw)
        template = dict(body["event"])
        template.pop("origin", None)
        content = {**template["content"], **overrides.pop("content", {})}
        fields = {k: template[k] for k in ("room_id", "type", "sender", "state_key", "depth")}
        fields.update(overrides)
        return self.peer.pdu(V10, fields.pop("room_id"), content=content,
                             prev_event_ids=template["prev_events"], auth_event_ids=template["auth_events"],
                             **{k: v for k, v in fields.items() if k != "depth"}, depth=template["depth"])

    async def send_join(self, pdu, room=None):
        eid = compute_event_id(pdu, V10)
        path = f"/_matrix/federation/v2/send_join/{quote(room or self.room, safe='')}/{quote(eid, safe='')}"
        return await self.request("PUT", path, pdu)

    async def test_row18_make_join_without_a_supported_ver(self):
        """Row 18: make_join whose ver list lacks the room's version: 400
        M_INCOMPATIBLE_ROOM_VERSION naming the room_version."""
        code, body, _ = await self.make_join(self.room, self.peer_user(), ver=("1", "2"))
        self.assertEqual((code, body["errcode"], body.get("room_version")), (400, "M_INCOMPATIBLE_ROOM_VERSION", "10"))

    async def test_row19_user_not_on_the_requesting_server(self):
        """Row 19: make_join / make_leave / make_knock for a user of another server: 403."""
        for kind in ("make_join", "make_leave", "make_knock"):
            code, body, _ = await self.request(
                "GET", FED + f"/{kind}/{quote(self.room, safe='')}/{quote('@x:elsewhere.test', safe='')}?ver=10"
            )
            self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"), kind)

    async def test_row20_unknown_or_private_room_looks_nonexistent(self):
        """Row 20: make_join for a room we are not in, or an invite-only room the user was
        not invited to, answers 404 M_NOT_FOUND, exactly alike."""
        unknown = await self.make_join("!nowhere:us.test:8448", self.peer_user())
        private = await self.make_join(self.private, self.peer_user())
        self.assertEqual((unknown[0], unknown[1]["errcode"]), (404, "M_NOT_FOUND"))
        self.assertEqual((private[0], private[1]), (unknown[0], unknown[1]))

    async def test_row21_room_id_mismatch(self):
        """Row 21: send_join whose body room_id differs from the path: 400 M_BAD_JSON."""
        pdu = await self.signed_join()
        code, body, _ = await self.send_join(pdu, room=self.private)
        self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"))

    async def test_row22_not_a_join(self):
        """Row 22: send_join with a non-member event, a membership other than join, or a
        state_key other than the sender: 400 M_BAD_JSON, nothing stored."""
        bad = [
            await self.signed_join(type="m.room.message"),
            await self.signed_join(content={"membership": "leave"}),
            await self.signed_join(state_key=self.peer_user("someone_else")),
        ]
        for pdu in bad:
            code, body, _ = await self.send_join(pdu)
            self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"), pdu)
        ids = [compute_event_id(p, V10) for p in bad]
        self.assertEqual(await self.service.store.have_events(ids), set())

    async def test_row23_banned_or_unsigned(self):
        """Row 23: send_join by a banned user, or not signed by the sender's server: 403."""
        await self.service.creator.send(self.room, V10, type="m.room.member", sender=ALICE,
                                        content={"membership": "ban"}, state_key=self.peer_user("banned"))
        code, _, raw = await self.make_join(self.room, self.peer_user("banned"))
        self.assertEqual(code, 403, raw)
        pdu = await self.signed_join()
        del pdu["signatures"][self.peer.name]
        code, body, _ = await self.send_join(pdu)
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))

    async def test_row14_oversized_join(self):
        """Row 14: a join over 65536 bytes of canonical JSON is never stored: 413 M_TOO_LARGE."""
        pdu = await self.signed_join()
        pdu["content"]["displayname"] = "x" * 70_000  # after signing: the size check comes first
        code, body, _ = await self.send_join(pdu)
        self.assertEqual((code, body["errcode"]), (413, "M_TOO_LARGE"))
        self.assertEqual(await self.service.store.have_events([compute_event_id(pdu, V10)]), set())

    async def invite(self, pdu, room_version="10"):
        eid = compute_event_id(pdu, V10)
        path = f"/_matrix/federation/v2/invite/{quote(self.room, safe='')}/{quote(eid, safe='')}"
        return await self.request("PUT", path, {"event": pdu, "room_version": room_version, "invite_room_state": []})

    async def test_row24_invite_unsupported_version(self):
        """Row 24: an invite for a room version we do not support: 400
        M_INCOMPATIBLE_ROOM_VERSION."""
        pdu = self.peer.pdu(V10, self.room, type="m.room.member", state_key=ALICE, content={"membership": "invite"},
                            prev_event_ids=self.msg_fields["prev_event_ids"], auth_event_ids=self.msg_fields["auth_event_ids"])
        code, body, _ = await self.invite(pdu, room_version="org.example.unknown")
        self.assertEqual((code, body["errcode"]), (400, "M_INCOMPATIBLE_ROOM_VERSION"))

    async def test_row25_not_an_invite_or_not_our_user(self):
        """Row 25: an invite that is not an invite event is 400 M_BAD_JSON; one whose target
        is not our user is 403."""
        fields = dict(prev_event_ids=self.msg_fields["prev_event_ids"], auth_event_ids=self.msg_fields["auth_event_ids"])
        not_invite = self.peer.pdu(V10, self.room, type="m.room.member", state_key=ALICE,
                                   content={"membership": "join"}, **fields)
        code, body, _ = await self.invite(not_invite)
        self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"))
        not_ours = self.peer.pdu(V10, self.room, type="m.room.member", state_key="@x:elsewhere.test",
                                 content={"membership": "invite"}, **fields)
        code, body, _ = await self.invite(not_ours)
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
