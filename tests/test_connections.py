"""Slow and abusive connections (issue 12): per-phase deadlines of MatrixChannel and the
connection caps of GuardedFactory/ConnectionRegistry, driven with an injected clock
(MemoryReactorClock) over StringTransport."""

from __future__ import annotations

import ipaddress

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fedserver.config import Config, load_config
from fedserver.http.connections import (
    MIN_AUTO_CONNECTIONS,
    SUMMARY_INTERVAL_S,
    ConnectionLimits,
    ConnectionRegistry,
    GuardedFactory,
    address_key,
    auto_max_connections,
)
from fedserver.http.resource import JsonResource, MatrixSite, build_tree
from fedserver.service import connection_limits

LIMITS = ConnectionLimits(header_timeout=20, body_timeout=20, body_min_rate=500, idle_timeout=60,
                          max_connections=1000, max_connections_per_address=1000, exempt=())


def addr(host: str = "192.0.2.1", port: int = 40000):
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


class _App:
    """``GET /x/ok`` answers at once, ``GET /x/wait`` when the test fires
    ``self.waiting``, ``PUT /x/echo`` answers the body's length."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred] = []
        res = JsonResource()
        res.add_route("GET", "/ok", lambda request: {"ok": True})
        res.add_route("GET", "/wait", self._wait)
        res.add_route("PUT", "/echo", lambda request: {"length": len(request.content.getvalue())})
        self.root = build_tree({"/x": res})

    def _wait(self, request):
        d = defer.Deferred()
        self.waiting.append(d)
        return d


class ChannelDeadlineTests(SynchronousTestCase):
    """MatrixChannel: deadlines for the head, the body and idle keep-alive; none while a
    request is answered."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.app = _App()
        self.site = MatrixSite(self.app.root, reactor=self.clock, limits=LIMITS)

    def connect(self):
        proto = self.site.buildProtocol(addr())
        transport = StringTransport(peerAddress=addr())
        proto.makeConnection(transport)
        return proto, transport

    def trickle(self, proto, data: bytes, every: float):
        for i in range(len(data)):
            proto.dataReceived(data[i : i + 1])
            self.clock.advance(every)

    def test_head_deadline_however_slow_the_bytes(self):
        """A byte every 5 s does not keep a connection alive: 20 s after it was made,
        with the request line still incomplete, it is aborted; just before, it is open."""
        proto, transport = self.connect()
        self.trickle(proto, b"GET /x/ok", 4.9)  # 9 bytes over 44 s
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        proto2, transport2 = self.connect()
        self.trickle(proto2, b"GET", 6)  # 18 s
        self.assertFalse(transport2.disconnected)
        self.clock.advance(2.1)
        self.assertTrue(transport2.disconnected)
        self.assertEqual(transport2.value(), b"")

    def test_complete_request_then_idle_timeout(self):
        """A request whose head arrives in time is answered; the keep-alive connection then
        waits up to idle_timeout for the next request, and is closed after it."""
        proto, transport = self.connect()
        self.clock.advance(19)
        proto.dataReceived(b"GET /x/ok HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(b'{"ok":true}', transport.value())
        self.clock.advance(59)
        self.assertFalse(transport.disconnected)
        self.clock.advance(1.1)
        self.assertTrue(transport.disconnected)

    def test_next_request_gets_its_own_head_deadline(self):
        """The first byte of the next request on a keep-alive connection ends the idle wait
        and starts that request's head deadline (20 s), not another 60 s."""
        proto, transport = self.connect()
        proto.dataReceived(b"GET /x/ok HTTP/1.1\r\nHost: a\r\n\r\n")
        self.clock.advance(50)
        self.trickle(proto, b"GET /x/", 4)  # 7 bytes: 28 s
        self.assertTrue(transport.disconnected)

    def test_pipelined_requests_are_answered(self):
        """Two requests in one write are both answered (the second's head arrived with
        the first)."""
        proto, transport = self.connect()
        proto.dataReceived(b"GET /x/ok HTTP/1.1\r\nHost: a\r\n\r\nGET /x/ok HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(transport.value().count(b"200 OK"), 2)
        self.assertFalse(transport.disconnected)

    def test_body_minimum_rate(self):
        """A body must arrive at body_min_rate after body_timeout's grace: at 400 B/s a
        60,000-byte body is cut off once 20 s + received/500 s have passed (after about
        100 s and 40,000 bytes); at 1,000 B/s it is answered."""
        body = b'"' + b"a" * 59_998 + b'"'
        head = b"PUT /x/echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
        slow, slow_t = self.connect()
        slow.dataReceived(head)
        sent = 0
        while not slow_t.disconnected and sent < len(body):
            slow.dataReceived(body[sent : sent + 400])
            sent += 400
            self.clock.advance(1)
        self.assertTrue(slow_t.disconnected)
        self.assertEqual(sent, 40_000)
        self.assertNotIn(b"200 OK", slow_t.value())
        fast, fast_t = self.connect()
        fast.dataReceived(head)
        for i in range(0, len(body), 1000):
            fast.dataReceived(body[i : i + 1000])
            self.clock.advance(1)
        self.assertIn(b'{"length":60000}', fast_t.value())
        self.assertFalse(fast_t.disconnected)

    def test_long_poll_has_no_deadline(self):
        """A request being answered (a long-polling /sync) has no deadline: 300 s later it
        is still open and its answer goes out."""
        proto, transport = self.connect()
        proto.dataReceived(b"GET /x/wait HTTP/1.1\r\nHost: a\r\n\r\n")
        self.clock.advance(300)
        self.assertFalse(transport.disconnected)
        self.app.waiting[0].callback({"done": 1})
        self.assertIn(b'{"done":1}', transport.value())

    def test_slow_reader_of_a_response(self):
        """A response the client does not read: once the server is done, the idle timer
        runs, and a client that makes no progress is closed after it; one that keeps
        reading (the transport resumes us) gets more time."""
        proto, transport = self.connect()
        proto.dataReceived(b"GET /x/ok HTTP/1.1\r\nHost: a\r\n\r\n")
        channel = proto._channel
        channel.pauseProducing()  # the transport's buffer is full
        self.clock.advance(60)
        self.assertTrue(transport.disconnected)
        proto, transport = self.connect()
        proto.dataReceived(b"GET /x/ok HTTP/1.1\r\nHost: a\r\n\r\n")
        channel = proto._channel
        channel.pauseProducing()
        self.clock.advance(30)
        channel.resumeProducing()
        channel.pauseProducing()
        self.clock.advance(30)
        self.assertFalse(transport.disconnected)
        self.clock.advance(60)
        self.assertTrue(transport.disconnected)


class CapTests(SynchronousTestCase):
    """GuardedFactory and ConnectionRegistry: total and per-address caps, eviction of the
    longest waiting connection, refusal when all are busy."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.app = _App()
        self.limits = ConnectionLimits(header_timeout=20, body_timeout=20, body_min_rate=500, idle_timeout=60,
                                       max_connections=4, max_connections_per_address=2,
                                       exempt=(ipaddress.ip_network("127.0.0.0/8"),))
        self.registry = ConnectionRegistry(self.clock, self.limits)
        site = MatrixSite(self.app.root, reactor=self.clock, limits=self.limits)
        self.factory = GuardedFactory(site, self.clock, self.registry)
        self.log = []
        globalLogPublisher.addObserver(self.log.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log.append)

    def connect(self, host="192.0.2.1"):
        proto = self.factory.buildProtocol(addr(host))
        transport = StringTransport(peerAddress=addr(host))
        proto.makeConnection(transport)
        return proto, transport

    def busy(self, host="192.0.2.1"):
        proto, transport = self.connect(host)
        proto.dataReceived(b"GET /x/wait HTTP/1.1\r\nHost: a\r\n\r\n")
        return proto, transport

    def lose(self, proto, transport):
        proto.connectionLost(Exception("closed"))

    def test_per_address_cap_evicts_that_address_oldest_waiting(self):
        """A third connection from one address takes the place of that address's
        connection waiting longest for its request; other addresses are untouched."""
        a1, t1 = self.connect("192.0.2.1")
        self.clock.advance(1)
        a2, t2 = self.connect("192.0.2.1")
        b1, tb = self.connect("198.51.100.7")
        a3, t3 = self.connect("192.0.2.1")
        self.assertTrue(t1.disconnected)
        self.assertFalse(t2.disconnected or tb.disconnected or t3.disconnected)
        self.assertEqual(self.registry.per_address("192.0.2.1"), 2)
        self.assertEqual(self.registry.total, 3)

    def test_per_address_cap_refuses_when_all_busy(self):
        """When an address's connections are all busy with requests, its next connection
        is closed at once (nothing is evicted)."""
        a1, t1 = self.busy()
        a2, t2 = self.busy()
        a3, t3 = self.connect()
        self.assertTrue(t3.disconnected)
        self.assertFalse(t1.disconnected or t2.disconnected)
        self.assertEqual(self.registry.total, 2)

    def test_total_cap_evicts_oldest_then_refuses(self):
        """At max_connections a new connection evicts the one waiting longest for its
        head (or idling), across addresses; when all are busy it is refused; once one
        finishes and idles, it can be evicted again."""
        conns = []
        for i in range(4):
            conns.append(self.busy(f"203.0.113.{i}") if i < 3 else self.connect(f"203.0.113.{i}"))
            self.clock.advance(1)
        new, tn = self.connect("203.0.113.50")
        self.assertTrue(conns[3][1].disconnected)
        self.assertFalse(tn.disconnected)
        new.dataReceived(b"GET /x/wait HTTP/1.1\r\nHost: a\r\n\r\n")
        refused, tr = self.connect("203.0.113.51")
        self.assertTrue(tr.disconnected)
        self.assertEqual(self.registry.total, 4)
        # The first busy one is answered and idles: evictable.
        self.app.waiting[0].callback({})
        self.assertIn(b"200 OK", conns[0][1].value())
        later, tl = self.connect("203.0.113.52")
        self.assertFalse(tl.disconnected)
        self.assertTrue(conns[0][1].disconnected)

    def test_slowloris_cannot_lock_out(self):
        """A thousand connections that trickle header bytes, against a cap of 4: every
        new client still gets in and is answered, and the count never passes the cap."""
        for i in range(1000):
            proto, transport = self.connect(f"10.{i // 250}.{i % 250}.1")
            proto.dataReceived(b"G")
            self.assertLessEqual(self.registry.total, 4)
            if i % 100 == 0:
                client, ct = self.connect("192.0.2.200")
                client.dataReceived(b"GET /x/ok HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertIn(b"200 OK", ct.value())
                self.lose(client, ct)

    def test_loopback_exempt_from_per_address_cap(self):
        """Networks in connection_limit_exempt (loopback by default: a reverse proxy) are
        not capped per address, only by the total."""
        conns = [self.connect("127.0.0.1") for _ in range(4)]
        self.assertFalse(any(t.disconnected for _, t in conns))
        self.assertEqual(self.registry.total, 4)

    def test_lost_connections_are_uncounted(self):
        """A connection closed by either side no longer counts (nor stays evictable)."""
        p, t = self.connect()
        self.assertEqual(self.registry.total, 1)
        self.lose(p, t)
        self.assertEqual((self.registry.total, self.registry.per_address("192.0.2.1")), (0, 0))
        self.assertEqual(len(self.registry._evictable), 0)

    def test_deadline_closes_uncount(self):
        """A connection cut at its head deadline is counted in the summary and, once
        lost, no longer counted as open."""
        p, t = self.connect()
        self.clock.advance(20)
        self.assertTrue(t.disconnected)
        self.lose(p, t)
        self.assertEqual(self.registry.total, 0)
        self.assertEqual(self.registry.counts, {"closed: header deadline": 1})

    def test_one_summary_line(self):
        """Refusals, evictions and deadlines are logged as one summary line per
        SUMMARY_INTERVAL_S, not one per connection."""
        for _ in range(2):
            self.busy()
        for _ in range(10):
            self.connect()
        self.clock.advance(SUMMARY_INTERVAL_S)
        lines = [e for e in self.log if "Connections in the last" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertIn("10 refused (per-address cap)", lines[0]["what"])


class LimitsTests(SynchronousTestCase):
    """Defaults and their derivation from the configuration."""

    def test_auto_max_connections(self):
        """The automatic cap keeps a quarter of the descriptor limit (at least 256) in
        reserve: 768 of 1,024; never below the minimum; 10,000 at most."""
        self.assertEqual(auto_max_connections(1024), 768)
        self.assertEqual(auto_max_connections(4096), 3072)
        self.assertEqual(auto_max_connections(200), MIN_AUTO_CONNECTIONS)
        self.assertEqual(auto_max_connections(1_048_576), 10_000)
        self.assertEqual(auto_max_connections(None), 10_000)

    def test_config_to_limits(self):
        """connection_limits maps every option; max_connections null is derived from the
        descriptor limit; the defaults of Config and ConnectionLimits agree."""
        limits = connection_limits(Config(), fds=1024)
        defaults = ConnectionLimits()
        self.assertEqual(limits.max_connections, 768)
        for name in ("header_timeout", "body_timeout", "body_min_rate", "idle_timeout", "max_connections_per_address", "exempt"):
            self.assertEqual(getattr(limits, name), getattr(defaults, name), name)
        config = load_config(None, {"max_connections": 50, "http_header_timeout": 5, "connection_limit_exempt": []})
        limits = connection_limits(config, fds=1024)
        self.assertEqual((limits.max_connections, limits.header_timeout, limits.exempt), (50, 5.0, ()))

    def test_address_key(self):
        """IPv4 by address, IPv6 by /64 (IPv4-mapped as IPv4), UNIX sockets not at all."""
        from twisted.internet.address import UNIXAddress

        self.assertEqual(address_key(addr("192.0.2.1")), "192.0.2.1")
        self.assertEqual(address_key(addr("2001:db8:1:2::5")), address_key(addr("2001:db8:1:2:ffff::1")))
        self.assertNotEqual(address_key(addr("2001:db8:1:2::5")), address_key(addr("2001:db8:1:3::5")))
        self.assertEqual(address_key(addr("::ffff:192.0.2.1")), "192.0.2.1")
        self.assertIsNone(address_key(UNIXAddress(b"/tmp/s")))
