"""Tests for fedserver.federation.discovery: every case of the spec's "Resolving server
names", with fake well-known and SRV sources and a fake clock."""

from __future__ import annotations

import json
import random
from email.utils import formatdate

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError
from twisted.trial.unittest import SynchronousTestCase

from fedserver.federation.discovery import (
    WELL_KNOWN_DEFAULT_CACHE,
    WELL_KNOWN_MAX_CACHE,
    ResolvedServer,
    ServerNameResolver,
    WellKnownResponse,
)
from fedserver.federation.xmatrix import InvalidServerName

NOW = 1_700_000_000.0


def wk_url(host):
    return f"https://{host}/.well-known/matrix/server"


def ok(body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WellKnownResponse(200, headers or {}, data)


class FakeWellKnown:
    """URL -> WellKnownResponse, exception, or Deferred; counts fetches per URL."""

    def __init__(self):
        self.responses = {}
        self.fetches = []

    def __call__(self, url):
        self.fetches.append(url)
        r = self.responses.get(url, WellKnownResponse(404, {}, b'{"errcode":"M_NOT_FOUND"}'))
        if isinstance(r, defer.Deferred):
            return r
        if isinstance(r, Exception):
            return defer.fail(r)
        return defer.succeed(r)


class FakeSRV:
    """SRV name -> list of (priority, weight, port, target, ttl), or an exception."""

    def __init__(self):
        self.records = {}
        self.lookups = []

    def lookupService(self, name):
        self.lookups.append(name)
        r = self.records.get(name)
        if r is None:
            return defer.fail(DNSNameError(name))
        if isinstance(r, Exception):
            return defer.fail(r)
        answers = [
            dns.RRHeader(name, type=dns.SRV, ttl=ttl, payload=dns.Record_SRV(prio, weight, port, "" if target == "." else target, ttl))
            for prio, weight, port, target, ttl in r
        ]
        return defer.succeed((answers, [], []))


class ResolverTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.wk = FakeWellKnown()
        self.srv = FakeSRV()
        self.resolver = ServerNameResolver(self.clock, self.wk, self.srv, rng=random.Random(4))

    def resolve(self, name):
        return self.successResultOf(self.resolver.resolve(name))


class IPLiteralAndPortTests(ResolverTestCase):
    """Steps 1 and 2: no well-known, no SRV."""

    def test_ipv4_literal(self):
        """Step 1: an IPv4 literal is used with 8448 or its port; Host is the server name
        as given; the certificate must be valid for the IP."""
        self.assertEqual(self.resolve("1.2.3.4"), ResolvedServer("1.2.3.4", "1.2.3.4", (("1.2.3.4", 8448),)))
        self.assertEqual(self.resolve("1.2.3.4:99"), ResolvedServer("1.2.3.4:99", "1.2.3.4", (("1.2.3.4", 99),)))
        self.assertEqual((self.wk.fetches, self.srv.lookups), ([], []))

    def test_ipv6_literal(self):
        """Step 1 for IPv6: Host keeps the brackets (and port); the connect address and TLS
        name are the bare address."""
        self.assertEqual(
            self.resolve("[2001:db8::1]"), ResolvedServer("[2001:db8::1]", "2001:db8::1", (("2001:db8::1", 8448),))
        )
        self.assertEqual(
            self.resolve("[2001:DB8::1]:8449"),
            ResolvedServer("[2001:DB8::1]:8449", "2001:db8::1", (("2001:db8::1", 8449),)),
        )
        self.assertEqual((self.wk.fetches, self.srv.lookups), ([], []))

    def test_explicit_port_skips_well_known(self):
        """Step 2: a hostname with a port is used as is (AAAA/A later), Host is the server
        name with port, certificate for the hostname; no well-known, no SRV."""
        self.wk.responses[wk_url("example.org")] = ok({"m.server": "elsewhere.org"})
        self.assertEqual(
            self.resolve("example.org:8000"), ResolvedServer("example.org:8000", "example.org", (("example.org", 8000),))
        )
        self.assertEqual((self.wk.fetches, self.srv.lookups), ([], []))

    def test_invalid_names(self):
        """A string that is not a server name fails with InvalidServerName, looking nothing up."""
        for name in ("", "bad name", "example.org:0", "[::1", "1.2.3.999", "a/b"):
            self.failureResultOf(self.resolver.resolve(name), InvalidServerName)
        self.assertEqual((self.wk.fetches, self.srv.lookups), ([], []))


class WellKnownDelegationTests(ResolverTestCase):
    """Step 3: the well-known response names a delegated server."""

    def test_delegated_name_with_port(self):
        """3.2: delegated hostname and port: Host <delegated_hostname>:<port>, certificate
        for the delegated hostname, no SRV."""
        self.wk.responses[wk_url("example.org")] = ok({"m.server": "matrix.example.net:1234"})
        self.assertEqual(
            self.resolve("example.org"),
            ResolvedServer("matrix.example.net:1234", "matrix.example.net", (("matrix.example.net", 1234),)),
        )
        self.assertEqual(self.srv.lookups, [])

    def test_delegated_ip_literal(self):
        """3.1: a delegated IP literal is used with its port or 8448; Host is the IP
        (with port if given), certificate for the IP."""
        self.wk.responses[wk_url("a.org")] = ok({"m.server": "5.6.7.8"})
        self.wk.responses[wk_url("b.org")] = ok({"m.server": "[2001:db8::2]:9000"})
        self.assertEqual(self.resolve("a.org"), ResolvedServer("5.6.7.8", "5.6.7.8", (("5.6.7.8", 8448),)))
        self.assertEqual(
            self.resolve("b.org"), ResolvedServer("[2001:db8::2]:9000", "2001:db8::2", (("2001:db8::2", 9000),))
        )
        self.assertEqual(self.srv.lookups, [])

    def test_delegated_name_uses_matrix_fed_srv(self):
        """3.3: no delegated port: SRV _matrix-fed._tcp.<delegated>; Host and certificate
        are the delegated hostname, not the SRV target."""
        self.wk.responses[wk_url("example.org")] = ok({"m.server": "deleg.example.net"})
        self.srv.records["_matrix-fed._tcp.deleg.example.net"] = [(10, 0, 8443, "srv.example.net", 300)]
        self.srv.records["_matrix._tcp.deleg.example.net"] = [(10, 0, 1111, "legacy.example.net", 300)]
        self.assertEqual(
            self.resolve("example.org"),
            ResolvedServer("deleg.example.net", "deleg.example.net", (("srv.example.net", 8443),)),
        )
        self.assertEqual(self.srv.lookups, ["_matrix-fed._tcp.deleg.example.net"])

    def test_delegated_name_falls_back_to_legacy_srv(self):
        """3.4 (deprecated): without _matrix-fed, SRV _matrix._tcp.<delegated> is used."""
        self.wk.responses[wk_url("example.org")] = ok({"m.server": "deleg.example.net"})
        self.srv.records["_matrix._tcp.deleg.example.net"] = [(10, 0, 1111, "legacy.example.net.", 300)]
        self.assertEqual(
            self.resolve("example.org"),
            ResolvedServer("deleg.example.net", "deleg.example.net", (("legacy.example.net", 1111),)),
        )
        self.assertEqual(
            self.srv.lookups, ["_matrix-fed._tcp.deleg.example.net", "_matrix._tcp.deleg.example.net"]
        )

    def test_delegated_name_without_srv_uses_8448(self):
        """3.5: no SRV at all: the delegated hostname on 8448."""
        self.wk.responses[wk_url("example.org")] = ok({"m.server": "deleg.example.net"})
        self.assertEqual(
            self.resolve("example.org"),
            ResolvedServer("deleg.example.net", "deleg.example.net", (("deleg.example.net", 8448),)),
        )

    def test_redirects_followed(self):
        """30x redirects are followed (relative and absolute Location)."""
        self.wk.responses[wk_url("example.org")] = WellKnownResponse(301, {"location": "/moved"}, b"")
        self.wk.responses["https://example.org/moved"] = WellKnownResponse(
            308, {"location": "https://www.example.org/wk"}, b""
        )
        self.wk.responses["https://www.example.org/wk"] = ok({"m.server": "m.example.org:443"})
        self.assertEqual(self.resolve("example.org").targets, (("m.example.org", 443),))
        self.assertEqual(len(self.wk.fetches), 3)

    def test_redirect_loop_http_downgrade_and_too_many(self):
        """A redirect loop, a redirect to plain HTTP, a 30x without Location and an endless
        chain are errors: discovery continues at step 4 (SRV, then 8448)."""
        self.wk.responses[wk_url("loop.org")] = WellKnownResponse(302, {"location": "/a"}, b"")
        self.wk.responses["https://loop.org/a"] = WellKnownResponse(302, {"location": wk_url("loop.org")}, b"")
        self.wk.responses[wk_url("http.org")] = WellKnownResponse(301, {"location": "http://http.org/x"}, b"")
        self.wk.responses[wk_url("noloc.org")] = WellKnownResponse(302, {}, b"")
        for i in range(20):
            self.wk.responses[f"https://chain.org/{i}" if i else wk_url("chain.org")] = WellKnownResponse(
                302, {"location": f"/{i + 1}"}, b""
            )
        for host in ("loop.org", "http.org", "noloc.org", "chain.org"):
            self.assertEqual(self.resolve(host), ResolvedServer(host, host, ((host, 8448),)), host)
        self.assertLessEqual(sum(1 for u in self.wk.fetches if "chain.org" in u), 6)

    def test_invalid_well_known_responses_fall_through(self):
        """Bad JSON, a non-object, a missing or non-string m.server, an m.server off the
        server-name grammar, a non-200 status or a fetch error all skip to step 4."""
        bodies = {
            "a.org": ok(b"{not json"),
            "b.org": ok(b"[1]"),
            "c.org": ok({"m.homeserver": "x.org"}),
            "d.org": ok({"m.server": 5}),
            "e.org": ok({"m.server": "bad name:80"}),
            "f.org": ok({"m.server": "x.org:99999"}),
            "g.org": WellKnownResponse(500, {}, b'{"m.server": "x.org"}'),
            "h.org": ConnectionRefusedError("refused"),
            "i.org": ok(b'{"m.server": "x.org", "n": NaN}'),
        }
        for host, response in bodies.items():
            self.wk.responses[wk_url(host)] = response
            self.srv.records[f"_matrix-fed._tcp.{host}"] = [(1, 0, 7000, "fed." + host, 300)]
            self.assertEqual(self.resolve(host), ResolvedServer(host, host, (("fed." + host, 7000),)), host)


class SRVTests(ResolverTestCase):
    """Steps 4-6: no valid well-known."""

    def test_matrix_fed_srv(self):
        """Step 4: SRV _matrix-fed._tcp.<hostname>; Host and certificate are the hostname."""
        self.srv.records["_matrix-fed._tcp.example.org"] = [(0, 0, 8443, "fed.example.org", 300)]
        self.assertEqual(
            self.resolve("example.org"), ResolvedServer("example.org", "example.org", (("fed.example.org", 8443),))
        )
        self.assertEqual(self.srv.lookups, ["_matrix-fed._tcp.example.org"])

    def test_legacy_srv(self):
        """Step 5 (deprecated): SRV _matrix._tcp.<hostname> when there is no _matrix-fed."""
        self.srv.records["_matrix._tcp.example.org"] = [(0, 0, 8009, "old.example.org", 300)]
        self.assertEqual(
            self.resolve("example.org"), ResolvedServer("example.org", "example.org", (("old.example.org", 8009),))
        )
        self.assertEqual(self.srv.lookups, ["_matrix-fed._tcp.example.org", "_matrix._tcp.example.org"])

    def test_no_srv_uses_8448(self):
        """Step 6: no SRV: the hostname on 8448; also when the SRV target is '.' (service
        not offered) or a DNS server error occurs."""
        self.assertEqual(self.resolve("a.org"), ResolvedServer("a.org", "a.org", (("a.org", 8448),)))
        self.srv.records["_matrix-fed._tcp.b.org"] = [(0, 0, 0, ".", 300)]
        self.assertEqual(self.resolve("b.org").targets, (("b.org", 8448),))
        self.srv.records["_matrix-fed._tcp.c.org"] = DNSServerError("SERVFAIL")
        self.assertEqual(self.resolve("c.org").targets, (("c.org", 8448),))

    def test_srv_ordering(self):
        """Targets come in priority order; within a priority every record appears once."""
        self.srv.records["_matrix-fed._tcp.example.org"] = [
            (20, 0, 3, "c.example.org", 300),
            (10, 5, 1, "a.example.org", 300),
            (10, 50, 2, "b.example.org", 300),
            (30, 0, 4, "d.example.org", 300),
        ]
        targets = self.resolve("example.org").targets
        self.assertEqual(set(targets[:2]), {("a.example.org", 1), ("b.example.org", 2)})
        self.assertEqual(targets[2:], (("c.example.org", 3), ("d.example.org", 4)))

    def test_srv_weights(self):
        """Within one priority a heavier record comes first more often (RFC 2782)."""
        self.srv.records["_matrix-fed._tcp.example.org"] = [
            (10, 1, 1, "light.example.org", 300),
            (10, 99, 2, "heavy.example.org", 300),
        ]
        first = []
        for _ in range(200):
            self.resolver.forget("example.org")
            self.resolver._srv_cache.clear()
            targets = self.resolve("example.org").targets
            self.assertEqual(sorted(t[0] for t in targets), ["heavy.example.org", "light.example.org"])
            first.append(targets[0][0])
        self.assertGreater(first.count("heavy.example.org"), 180)

    def test_srv_cached_by_ttl(self):
        """SRV answers are reused until their TTL (at least 60 s) passes."""
        self.srv.records["_matrix-fed._tcp.example.org"] = [(0, 0, 1, "a.example.org", 120)]
        self.resolve("example.org")
        self.resolve("example.org")
        self.assertEqual(len(self.srv.lookups), 1)
        self.clock.advance(121)
        self.srv.records["_matrix-fed._tcp.example.org"] = [(0, 0, 2, "b.example.org", 120)]
        self.assertEqual(self.resolve("example.org").targets, (("b.example.org", 2),))
        self.assertEqual(len(self.srv.lookups), 2)


class WellKnownCacheTests(ResolverTestCase):
    """Step 3's caching rules."""

    def test_default_cache_is_24_hours(self):
        """Without cache headers a valid response is reused for 24 hours, then refetched."""
        self.wk.responses[wk_url("example.org")] = ok({"m.server": "a.example.org:1"})
        self.resolve("example.org")
        self.clock.advance(WELL_KNOWN_DEFAULT_CACHE - 1)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 1)
        self.wk.responses[wk_url("example.org")] = ok({"m.server": "b.example.org:2"})
        self.clock.advance(2)
        self.assertEqual(self.resolve("example.org").targets, (("b.example.org", 2),))
        self.assertEqual(len(self.wk.fetches), 2)

    def test_cache_control_respected_and_capped(self):
        """max-age is respected, capped at 48 hours; Expires is used without
        Cache-Control; no-cache is floored at a few minutes, not refetched per request."""
        cases = [
            (lambda: {"cache-control": "public, max-age=3600"}, 3600),
            (lambda: {"cache-control": "max-age=999999999"}, WELL_KNOWN_MAX_CACHE),
            (lambda: {"expires": formatdate(self.clock.seconds() + 7200, usegmt=True)}, 7200),
            (lambda: {"cache-control": "no-cache"}, 300),
            (lambda: {"cache-control": "max-age=60", "expires": formatdate(0, usegmt=True)}, 300),
        ]
        for i, (make_headers, period) in enumerate(cases):
            headers = make_headers()
            host = f"h{i}.org"
            self.wk.responses[wk_url(host)] = ok({"m.server": "x.org:1"}, headers)
            self.resolver._well_known.clear()
            start = self.clock.seconds()
            self.resolve(host)
            fetched = len(self.wk.fetches)
            self.clock.advance(period - 1)
            self.resolver.forget(host)
            self.resolve(host)
            self.assertEqual(len(self.wk.fetches), fetched, headers)
            self.clock.advance(2)
            self.resolve(host)
            self.assertEqual(len(self.wk.fetches), fetched + 1, headers)
            self.assertAlmostEqual(self.clock.seconds() - start, period + 1)

    def test_errors_cached_with_backoff(self):
        """An error is cached (5 minutes first), repeated failures back off exponentially up
        to an hour, and a success resets the back-off."""
        url = wk_url("example.org")
        self.resolve("example.org")
        periods = []
        for _ in range(6):
            fetched = len(self.wk.fetches)
            waited = 0
            while len(self.wk.fetches) == fetched:
                self.clock.advance(60)
                waited += 60
                self.resolve("example.org")
            periods.append(waited)
        self.assertEqual(periods, [300, 600, 1200, 2400, 3600, 3600])
        self.wk.responses[url] = ok({"m.server": "x.org:1"})
        self.clock.advance(3601)
        self.assertEqual(self.resolve("example.org").targets, (("x.org", 1),))
        del self.wk.responses[url]
        self.clock.advance(WELL_KNOWN_DEFAULT_CACHE + 1)
        fetched = len(self.wk.fetches)
        self.resolve("example.org")
        self.clock.advance(301)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), fetched + 2)

    def test_hanging_fetch_times_out(self):
        """A well-known fetch that never answers is abandoned after the lookup timeout and
        discovery continues with SRV / 8448."""
        hanging = defer.Deferred()
        self.wk.responses[wk_url("slow.org")] = hanging
        d = self.resolver.resolve("slow.org")
        self.assertNoResult(d)
        self.clock.advance(15)
        self.assertEqual(self.successResultOf(d), ResolvedServer("slow.org", "slow.org", (("slow.org", 8448),)))

    def test_concurrent_resolves_share_one_lookup(self):
        """Resolving one name twice at once fetches the well-known once; both callers get
        the answer; a cancelled caller does not disturb the other."""
        pending = defer.Deferred()
        self.wk.responses[wk_url("example.org")] = pending
        d1 = self.resolver.resolve("example.org")
        d2 = self.resolver.resolve("example.org")
        d3 = self.resolver.resolve("example.org")
        d3.cancel()
        self.failureResultOf(d3, defer.CancelledError)
        pending.callback(ok({"m.server": "x.org:5"}))
        self.assertEqual(self.successResultOf(d1).targets, (("x.org", 5),))
        self.assertEqual(self.successResultOf(d2).targets, (("x.org", 5),))
        self.assertEqual(len(self.wk.fetches), 1)

    def test_result_cache_bounded(self):
        """Caches never hold more than max_cache_entries names."""
        resolver = ServerNameResolver(self.clock, self.wk, self.srv, max_cache_entries=10)
        for i in range(50):
            self.successResultOf(resolver.resolve(f"h{i}.org"))
        self.assertLessEqual(len(resolver._resolved), 10)
        self.assertLessEqual(len(resolver._well_known), 10)
        self.assertLessEqual(len(resolver._srv_cache), 10)
