"""Tests for fedserver.federation.client against a real TLS server on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import SignatureVerifyException, verify_signed_json
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from fedserver.federation.client import (
    FederationClient,
    FederationUnreachable,
    HttpResponseError,
    InvalidResponse,
    RequestTimedOut,
    ResponseTooLarge,
    TLSVerificationFailed,
    build_federation_client,
    fed_path,
    make_https_agent,
    make_well_known_getter,
)
from fedserver.federation.discovery import ServerNameResolver, WellKnownResponse
from fedserver.federation.keyring import KeyVerificationError
from fedserver.federation.tls import FederationConnector, FederationTLSPolicy
from fedserver.errors import forbidden
from fedserver.http.resource import JsonResource, build_tree, read_json_body
from fedserver.http.federation.xmatrix_auth import XMatrixAuthenticator

ORIGIN = "origin.test"


def _make_cert():
    """A self-signed EC certificate for DNS:localhost and IP:127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


CERT, CERT_KEY = _make_cert()
CERT_PEM = CERT.public_bytes(serialization.Encoding.PEM)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name):
        self.name = name

    def cancel(self):
        pass


@implementer(IHostnameResolver)
class FakeNameResolver:
    """Hostname -> list of IPv4 addresses, for deterministic AAAA/A answers."""

    def __init__(self, table):
        self.table = table
        self.asked = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        self.asked.append(hostName)
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        for address in self.table.get(hostName, ()):
            receiver.addressResolved(IPv4Address("TCP", address, portNumber))
        receiver.resolutionComplete()
        return resolution


class FakeKeyring:
    """Verifies signatures by the one server whose key it was given."""

    def __init__(self, server_name, verify_key):
        self.server_name = server_name
        self.verify_key = verify_key

    def verify_json_for_server(self, server_name, json_obj, minimum_valid_until_ts):
        if server_name != self.server_name:
            return defer.fail(KeyVerificationError("unknown server"))
        try:
            verify_signed_json(json_obj, server_name, self.verify_key)
        except SignatureVerifyException as e:
            return defer.fail(KeyVerificationError(str(e)))
        return defer.succeed(None)


class TrackingChannel(HTTPChannel):
    """Records its connection on the site so tests can count and close them."""

    def connectionMade(self):
        super().connectionMade()
        self.factory.connections.append(self)
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost.callback(None)


class TestSite(server.Site):
    protocol = TrackingChannel

    def __init__(self, root):
        super().__init__(root)
        self.connections = []
        self.noisy = False


class RawResource(resource.Resource):
    """Non-JSON, oversized and never-answering responses."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.hanging = []
        self.arrived = defer.Deferred()
        self.waiters = []

    def wait_for_hanging(self, n):
        """Fire once ``n`` requests have arrived at /hang in total."""
        if len(self.hanging) >= n:
            return defer.succeed(None)
        d = defer.Deferred()
        self.waiters.append((n, d))
        return d

    def render_GET(self, request):
        what = request.postpath[0]
        if what == b"plain502":
            request.setResponseCode(502)
            request.setHeader(b"Content-Type", b"text/plain")
            return b"Bad gateway"
        if what == b"notjson":
            return b"<html>hello</html>"
        if what == b"duplicate":
            return b'{"server_name": "a.test", "server_name": "b.test"}'
        if what == b"surrogate":
            return b'{"server_name": "\\ud800"}'
        if what == b"nan":
            return b'{"valid_until_ts": NaN}'
        if what == b"big":
            return b'{"x":"' + b"a" * (2 * 1024 * 1024) + b'"}'
        if what == b"items":
            # A send_join-like answer: big arrays of small objects, chunked.
            body = json.dumps({"auth_chain": [{"a": i} for i in range(5)], "members_omitted": True,
                               "state": [{"s": i, "pad": "p" * 100} for i in range(3000)]}).encode()

            def write_from(i):
                if request._disconnected or request.finished:
                    return
                if i >= len(body):
                    request.finish()
                    return
                request.write(body[i:i + 8192])
                reactor.callLater(0, write_from, i + 8192)

            write_from(0)
            return server.NOT_DONE_YET
        if what == b"bigchunked":
            # No Content-Length: the size is only discovered while reading.
            def write_more(n):
                if request._disconnected or request.finished:
                    return
                if n == 0:
                    request.write(b'"}')
                    request.finish()
                    return
                request.write(b"a" * 65536)
                reactor.callLater(0, write_more, n - 1)

            request.write(b'{"x":"')
            write_more(64)
            return server.NOT_DONE_YET
        if what == b"hang":
            self.hanging.append(request)
            if not self.arrived.called:
                self.arrived.callback(request)
            for n, d in list(self.waiters):
                if len(self.hanging) >= n:
                    self.waiters.remove((n, d))
                    d.callback(None)
            return server.NOT_DONE_YET
        request.setResponseCode(404)
        return b"{}"


class ClockedReactor:
    """The real reactor for I/O and a Clock for time, so timeouts fire when a test says."""

    def __init__(self, real, clock):
        self._real = real
        self._clock = clock

    def callLater(self, *args, **kwargs):
        return self._clock.callLater(*args, **kwargs)

    def seconds(self):
        return self._clock.seconds()

    def getDelayedCalls(self):
        return self._clock.getDelayedCalls()

    def __getattr__(self, name):
        return getattr(self._real, name)


class LoopbackTLSTestCase(TestCase):
    """A real twisted.web Site on a self-signed TLS port on 127.0.0.1."""

    def setUp(self):
        self.key = generate_signing_key("k1")
        self.handled = []
        self.raw = RawResource()
        self.snis = []
        self.site = TestSite(self._root())
        options = CertificateOptions(privateKey=_pyopenssl_key(), certificate=_pyopenssl_cert())
        ctx = options.getContext()
        ctx.set_tlsext_servername_callback(lambda conn: self.snis.append(conn.get_servername()))
        self.port = reactor.listenSSL(0, self.site, options, interface="127.0.0.1")
        self.addCleanup(self._stop)
        self.portnum = self.port.getHost().port
        self.destination = f"127.0.0.1:{self.portnum}"
        self.clients = []

    async def _stop(self):
        for client in self.clients:
            await client.close()
        for channel in self.site.connections:
            if channel.transport is not None and channel.transport.connected:
                channel.transport.abortConnection()
        await defer.DeferredList([c.lost for c in self.site.connections])
        await self.port.stopListening()

    def _root(self):
        keyring = FakeKeyring(ORIGIN, get_verify_key(self.key))
        test = self

        async def echo(request, thing):
            # The server's own name is whatever destination the test expects the client to
            # sign for.
            auth = XMatrixAuthenticator(keyring, test.expected_destination, Clock())
            origin = await auth.authenticate(request)
            test.handled.append(request)
            return {
                "origin": origin,
                "thing": thing,
                "uri": request.uri.decode(),
                "host": request.getHeader(b"host").decode(),
                "authorization": request.getHeader(b"authorization").decode(),
                "body": read_json_body(request) if request.method == b"PUT" else None,
            }

        def refuse(request):
            test.handled.append(request)
            raise forbidden("not you")

        res = JsonResource()
        res.add_route("GET", "/echo/{thing}", echo)
        res.add_route("PUT", "/echo/{thing}", echo)
        res.add_route("GET", "/forbidden", refuse)
        wk = JsonResource()
        wk.add_route("GET", "/server", lambda request: {"m.server": "delegated.test:1234"})
        return build_tree({"/_matrix/federation/v1": res, "/_matrix/test": self.raw, "/.well-known/matrix": wk})

    #: The server name the loopback server answers to (set by each test).
    expected_destination = None

    def make_client(self, **kwargs):
        kwargs.setdefault("verify_tls", False)
        kwargs.setdefault("allow_private_addresses", True)
        resolver = kwargs.pop("resolver", None) or ServerNameResolver(reactor, _no_well_known, _NoSRV())
        react = kwargs.pop("reactor", reactor)
        client = FederationClient(react, ORIGIN, self.key, resolver, **kwargs)
        self.clients.append(client)
        return client


def _pyopenssl_key():
    from OpenSSL import crypto

    return crypto.PKey.from_cryptography_key(CERT_KEY)


def _pyopenssl_cert():
    from OpenSSL import crypto

    return crypto.X509.from_cryptography(CERT)


def _no_well_known(url):
    return defer.succeed(WellKnownResponse(404, {}, b""))


class _NoSRV:
    def lookupService(self, name):
        from twisted.names.error import DNSNameError

        return defer.fail(DNSNameError(name))


class RoundTripTests(LoopbackTLSTestCase):
    """Requests that reach the server and come back."""

    async def test_get_round_trip_signed(self):
        """A GET with query args reaches the server with Host = the server name and a
        verifiable X-Matrix header naming the destination; the JSON answer comes back."""
        client = self.make_client()
        self.expected_destination = self.destination
        path = fed_path("/_matrix/federation/v1/echo/{}", "!room:ex/ample?#")
        result = await client.get_json(self.destination, path, {"user_id": "@a:b.c", "v": ["1", "2 3"], "f": True})
        self.assertEqual(result["origin"], ORIGIN)
        self.assertEqual(result["thing"], "!room:ex/ample?#")
        self.assertEqual(result["uri"], path + "?user_id=%40a%3Ab.c&v=1&v=2%203&f=true")
        self.assertEqual(result["host"], self.destination)
        self.assertIn(f'destination="{self.destination}"', result["authorization"])
        self.assertIn(None, self.snis)  # IP literal: no SNI

    async def test_put_round_trip_signed(self):
        """A PUT sends the body as JSON; the signature covers it and the server gets it."""
        client = self.make_client()
        self.expected_destination = self.destination
        body = {"pdus": [{"content": {"body": "héllo", "n": 2**60}}], "edus": []}
        result = await client.put_json(self.destination, "/_matrix/federation/v1/echo/t1", body)
        self.assertEqual((result["origin"], result["body"]), (ORIGIN, body))

    async def test_connection_reused(self):
        """Consecutive requests to one destination share a pooled connection."""
        client = self.make_client()
        self.expected_destination = self.destination
        for i in range(3):
            await client.get_json(self.destination, f"/_matrix/federation/v1/echo/{i}")
        self.assertEqual(len(self.site.connections), 1)

    async def test_wrong_destination_refused_by_peer(self):
        """The peer refuses (401) a request whose signed destination is not its name;
        the client reports HttpResponseError with the Matrix errcode."""
        client = self.make_client()
        self.expected_destination = "someone.else"
        e = await self.assertFailure(client.get_json(self.destination, "/_matrix/federation/v1/echo/x"), HttpResponseError)
        self.assertEqual((e.code, e.errcode), (401, "M_UNAUTHORIZED"))

    async def test_error_responses(self):
        """Non-2xx answers become HttpResponseError: with errcode/error for Matrix JSON,
        without for other bodies; a 2xx that is not JSON is InvalidResponse."""
        client = self.make_client()
        e = await self.assertFailure(client.get_json(self.destination, "/_matrix/federation/v1/forbidden"), HttpResponseError)
        self.assertEqual((e.code, e.errcode, e.error), (403, "M_FORBIDDEN", "not you"))
        e = await self.assertFailure(client.get_json(self.destination, "/_matrix/test/plain502"), HttpResponseError)
        self.assertEqual((e.code, e.errcode, e.body), (502, None, b"Bad gateway"))
        e = await self.assertFailure(client.get_json(self.destination, "/_matrix/nothing"), HttpResponseError)
        self.assertEqual((e.code, e.errcode), (404, "M_UNRECOGNIZED"))
        await self.assertFailure(client.get_json(self.destination, "/_matrix/test/notjson"), InvalidResponse)

    async def test_ambiguous_json_responses_refused(self):
        """JSON a peer answers with goes through the same strict parser as requests: a
        duplicate key, a lone surrogate or NaN in a 2xx body is InvalidResponse, never a
        value one parser or another would pick."""
        client = self.make_client()
        for what in ("duplicate", "surrogate", "nan"):
            e = await self.assertFailure(client.get_json(self.destination, f"/_matrix/test/{what}"), InvalidResponse)
            self.assertIn("invalid JSON", str(e))

    async def test_oversize_response_refused(self):
        """Bodies beyond the cap fail with ResponseTooLarge, announced (Content-Length) or
        discovered while streaming (chunked); the connection is dropped."""
        client = self.make_client(max_response_size=1024 * 1024)
        await self.assertFailure(client.get_json(self.destination, "/_matrix/test/big"), ResponseTooLarge)
        await self.assertFailure(client.get_json(self.destination, "/_matrix/test/bigchunked"), ResponseTooLarge)
        result = await client.get_json(self.destination, "/_matrix/test/big", max_size=3 * 1024 * 1024)
        self.assertEqual(len(result["x"]), 2 * 1024 * 1024)

    async def test_streamed_answer(self):
        """request_json_stream hands the items of the named arrays to the consumer in
        order, in batches, while the body arrives; a consumer's Deferred holds the next
        batch back until it fires; the other members are the result."""
        client = self.make_client()
        got: list = []
        busy = []

        def on_batch(key, items):
            self.assertEqual(busy, [])  # never called while the previous batch is busy
            got.append((key, items))
            d = defer.Deferred()
            busy.append(d)

            def done():
                busy.remove(d)
                d.callback(None)

            reactor.callLater(0.001, done)
            return d

        top = await client.request_json_stream(
            "GET", self.destination, "/_matrix/test/items", None, on_batch, stream_keys=("state", "auth_chain"),
            batch_size=1000,
        )
        self.assertEqual(top, {"auth_chain": None, "members_omitted": True, "state": None})
        self.assertEqual([(k, len(v)) for k, v in got], [("auth_chain", 5), ("state", 1000), ("state", 1000), ("state", 1000)])
        self.assertEqual([x["s"] for k, v in got if k == "state" for x in v], list(range(3000)))

    async def test_streamed_answer_limits_and_errors(self):
        """A streamed answer past max_size fails with ResponseTooLarge while reading; a
        body that is not the expected object is InvalidResponse; a consumer's exception
        reaches the caller as it is; error statuses are HttpResponseError as usual."""
        client = self.make_client()
        no_op = lambda key, items: None  # noqa: E731
        await self.assertFailure(client.request_json_stream(
            "GET", self.destination, "/_matrix/test/items", None, no_op, stream_keys=("state",), max_size=100_000,
        ), ResponseTooLarge)
        await self.assertFailure(client.request_json_stream(
            "GET", self.destination, "/_matrix/test/notjson", None, no_op, stream_keys=("state",),
        ), InvalidResponse)

        class Stop(Exception):
            pass

        def refuse(key, items):
            raise Stop("no")

        await self.assertFailure(client.request_json_stream(
            "GET", self.destination, "/_matrix/test/items", None, refuse, stream_keys=("state",),
        ), Stop)
        e = await self.assertFailure(client.request_json_stream(
            "GET", self.destination, "/_matrix/federation/v1/forbidden", None, no_op, stream_keys=("state",),
        ), HttpResponseError)
        self.assertEqual((e.code, e.errcode), (403, "M_FORBIDDEN"))

    async def test_timeout(self):
        """A server that never answers gives RequestTimedOut once the timeout passes on the
        client's clock; the connection is dropped."""
        clock = Clock()
        client = self.make_client(reactor=ClockedReactor(reactor, clock), timeout=30)
        d = client.get_json(self.destination, "/_matrix/test/hang")
        request = await self.raw.arrived
        self.assertNoResult(d)
        clock.advance(29)
        self.assertNoResult(d)
        clock.advance(2)
        await self.assertFailure(d, RequestTimedOut)
        await self.site.connections[0].lost
        self.assertTrue(request._disconnected)

    async def test_concurrency_per_destination_limited(self):
        """At most max_concurrent_per_destination requests are in flight to one
        destination (each on its own connection); the rest wait and then complete."""
        client = self.make_client(max_concurrent_per_destination=3)
        ds = [client.get_json(self.destination, "/_matrix/test/hang") for _ in range(7)]
        answered = 0
        while answered < 7:
            await self.raw.wait_for_hanging(min(answered + 3, 7))
            self.assertLessEqual(len(self.site.connections), 3)
            for request in self.raw.hanging[answered:]:
                request.write(b'{"n":1}')
                request.finish()
            answered = len(self.raw.hanging)
        results = await defer.gatherResults(ds)
        self.assertEqual(results, [{"n": 1}] * 7)
        self.assertLessEqual(len(self.site.connections), 3)

    async def test_delegated_host_header_and_sni(self):
        """With a well-known delegation to localhost:PORT the request goes there with Host
        localhost:PORT, SNI localhost and a certificate valid for localhost."""
        self.expected_destination = "example.test"

        def well_known(url):
            self.assertEqual(url, "https://example.test/.well-known/matrix/server")
            return defer.succeed(WellKnownResponse(200, {}, json.dumps({"m.server": f"localhost:{self.portnum}"}).encode()))

        client = self.make_client(
            resolver=ServerNameResolver(reactor, well_known, _NoSRV()),
            tls_policy=FederationTLSPolicy.trusting_pem(CERT_PEM),
            name_resolver=FakeNameResolver({"localhost": ["127.0.0.1"]}),
        )
        result = await client.get_json("example.test", "/_matrix/federation/v1/echo/x")
        self.assertEqual(result["host"], f"localhost:{self.portnum}")
        self.assertIn('destination="example.test"', result["authorization"])
        self.assertEqual(self.snis, [b"localhost"])

    async def test_build_federation_client_end_to_end(self):
        """The wired client: the well-known fetch fails (nothing on port 443), SRV
        _matrix-fed._tcp points at the loopback port; Host and SNI are the server name."""
        self.expected_destination = "srv.test"
        srv = _StaticSRV({"_matrix-fed._tcp.srv.test": ("127.0.0.1", self.portnum)})
        client = build_federation_client(
            reactor,
            ORIGIN,
            self.key,
            verify_tls=False,
            allow_private_addresses=True,
            srv_resolver=srv,
            name_resolver=FakeNameResolver({"srv.test": ["127.0.0.1"]}),
        )
        self.clients.append(client)
        result = await client.get_json("srv.test", "/_matrix/federation/v1/echo/x")
        self.assertEqual((result["origin"], result["host"]), (ORIGIN, "srv.test"))
        self.assertIn(b"srv.test", self.snis)


class DefaultWiringTests(LoopbackTLSTestCase):
    """build_federation_client with nothing injected."""

    async def test_default_resolvers(self):
        """Without injected resolvers the client builds its own twisted.names resolver on
        the given reactor (not the global one) and still reaches an IP-literal peer."""
        clock = Clock()
        client = build_federation_client(
            ClockedReactor(reactor, clock), ORIGIN, self.key, verify_tls=False, allow_private_addresses=True
        )
        self.clients.append(client)
        self.expected_destination = self.destination
        result = await client.get_json(self.destination, "/_matrix/federation/v1/echo/x")
        self.assertEqual(result["origin"], ORIGIN)
        self.assertTrue(clock.getDelayedCalls())  # resolv.conf re-reads live on our clock


class _StaticSRV:
    def __init__(self, table):
        self.table = table

    def lookupService(self, name):
        from twisted.names import dns
        from twisted.names.error import DNSNameError

        if name not in self.table:
            return defer.fail(DNSNameError(name))
        host, port = self.table[name]
        rr = dns.RRHeader(name, type=dns.SRV, ttl=300, payload=dns.Record_SRV(0, 0, port, host, 300))
        return defer.succeed(([rr], [], []))


class PolicyTests(LoopbackTLSTestCase):
    """Address and TLS policy: nothing is sent where it must not be."""

    async def test_private_address_refused(self):
        """Without allow_private_addresses a loopback IP literal, and a name resolving to
        a private address (alone or next to a public one), are refused before connecting."""
        names = FakeNameResolver({"evil.test": ["127.0.0.1"], "mixed.test": ["8.8.8.8", "10.1.2.3"]})
        client = self.make_client(allow_private_addresses=False, name_resolver=names)
        for destination in (self.destination, f"evil.test:{self.portnum}", f"mixed.test:{self.portnum}"):
            e = await self.assertFailure(client.get_json(destination, "/_matrix/federation/v1/echo/x"), FederationUnreachable)
            self.assertIn("private address", e.reason)
        self.assertEqual(self.site.connections, [])

    async def test_self_signed_certificate_refused(self):
        """With verify_tls=True (platform trust) the self-signed certificate fails the
        handshake: TLSVerificationFailed, and the request never reaches the server."""
        client = self.make_client(verify_tls=True)
        await self.assertFailure(client.get_json(self.destination, "/_matrix/federation/v1/forbidden"), TLSVerificationFailed)
        self.assertEqual(self.handled, [])

    async def test_certificate_checked_against_expected_name(self):
        """Trusting the certificate's issuer, an IP literal destination in its IP SANs and
        a DNS name in its DNS SANs pass; a name the certificate does not cover fails."""
        names = FakeNameResolver({"localhost": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        client = self.make_client(tls_policy=FederationTLSPolicy.trusting_pem(CERT_PEM), name_resolver=names)
        e = await self.assertFailure(client.get_json(self.destination, "/_matrix/federation/v1/forbidden"), HttpResponseError)
        self.assertEqual(e.code, 403)
        e = await self.assertFailure(
            client.get_json(f"localhost:{self.portnum}", "/_matrix/federation/v1/forbidden"), HttpResponseError
        )
        self.assertEqual(e.code, 403)
        self.assertEqual(len(self.handled), 2)
        await self.assertFailure(
            client.get_json(f"other.test:{self.portnum}", "/_matrix/federation/v1/forbidden"), TLSVerificationFailed
        )
        self.assertEqual(len(self.handled), 2)

    async def test_unreachable_and_invalid_destinations(self):
        """A closed port, a name without addresses and an invalid server name are
        FederationUnreachable."""
        client = self.make_client(name_resolver=FakeNameResolver({}))
        closed = reactor.listenTCP(0, server.Site(resource.Resource()), interface="127.0.0.1")
        closed_port = closed.getHost().port
        await closed.stopListening()
        for destination in (f"127.0.0.1:{closed_port}", "nowhere.test:8448", "bad name", "[::1"):
            await self.assertFailure(client.get_json(destination, "/_matrix/federation/v1/x"), FederationUnreachable)

    async def test_bad_paths_refused(self):
        """Paths that are not percent-encoded, or carry a query, are a caller error."""
        client = self.make_client()
        for path in ("relative", "/with space", "/a?b=c", "/é", "/a#frag", "/a\n"):
            await self.assertFailure(client.get_json(self.destination, path), ValueError)


class WellKnownGetterTests(LoopbackTLSTestCase):
    """make_well_known_getter over make_https_agent, against the loopback server."""

    def _getter(self, **kwargs):
        connector = FederationConnector(
            reactor,
            FederationTLSPolicy.trusting_pem(CERT_PEM),
            allow_private_addresses=kwargs.pop("allow_private_addresses", True),
            name_resolver=FakeNameResolver({"localhost": ["127.0.0.1"]}),
        )
        agent = make_https_agent(reactor, connector)
        self.clients.append(_PoolCloser(agent))
        return make_well_known_getter(agent, **kwargs)

    async def test_fetch(self):
        """A well-known URL is fetched over verified TLS; headers come back lower-cased."""
        response = await self._getter()(f"https://localhost:{self.portnum}/.well-known/matrix/server")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(response.body), {"m.server": "delegated.test:1234"})
        self.assertEqual(response.headers["content-type"], "application/json")

    async def test_size_cap_and_policy(self):
        """Too large a body fails; plain http:// is refused; private addresses follow the
        connector's policy."""
        await self.assertFailure(
            self._getter(max_size=10)(f"https://localhost:{self.portnum}/.well-known/matrix/server"), ResponseTooLarge
        )
        await self.assertFailure(
            self._getter()(f"http://localhost:{self.portnum}/.well-known/matrix/server"), ValueError
        )
        from fedserver.federation.tls import AddressNotAllowed

        await self.assertFailure(
            self._getter(allow_private_addresses=False)(f"https://localhost:{self.portnum}/.well-known/matrix/server"),
            AddressNotAllowed,
        )


class _PoolCloser:
    def __init__(self, agent):
        self.agent = agent

    def close(self):
        return self.agent._pool.closeCachedConnections()
