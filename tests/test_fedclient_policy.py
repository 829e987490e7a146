"""Tests for fedserver.federation.tls: which addresses federation may connect to, TLS
creators per expected name, and the client's request-building helpers."""

from __future__ import annotations

from twisted.internet.error import DNSLookupError
from twisted.trial.unittest import SynchronousTestCase

from fedserver.federation.client import _query_string, fed_path
from fedserver.federation.tls import AddressNotAllowed, FederationConnector, FederationTLSPolicy, is_private_address


class PrivateAddressTests(SynchronousTestCase):
    """is_private_address covers every non-public range, IPv4 and IPv6."""

    def test_private_addresses(self):
        """Loopback, RFC 1918, CGNAT, link-local, unspecified, multicast, broadcast,
        documentation, benchmarking and reserved ranges, and IPv6 forms embedding them
        (mapped, 6to4, NAT64), ULA, site- and link-local, are all private."""
        for ip in (
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2002:7f00:1::1",  # 6to4 of 127.0.0.1
            "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
            "64:ff9b:1::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "not an ip",
        ):
            self.assertTrue(is_private_address(ip), ip)

    def test_public_addresses(self):
        """Ordinary public unicast addresses, and IPv6 forms embedding one, are allowed."""
        for ip in ("8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808"):
            self.assertFalse(is_private_address(ip), ip)


class _Names:
    def __init__(self, table):
        self.table = table

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        from twisted.internet.address import IPv4Address, IPv6Address

        receiver.resolutionBegan(None)
        for a in self.table.get(hostName, ()):
            receiver.addressResolved((IPv6Address if ":" in a else IPv4Address)("TCP", a, portNumber))
        receiver.resolutionComplete()


class ConnectorTests(SynchronousTestCase):
    """FederationConnector.resolve_addresses applies the address policy after DNS."""

    def _connector(self, allow=False):
        names = _Names({"pub.test": ["8.8.8.8", "2606:4700::1111"], "priv.test": ["8.8.8.8", "192.168.0.2"], "v6loop.test": ["::1"]})
        return FederationConnector(None, FederationTLSPolicy(verify=False), allow_private_addresses=allow, name_resolver=names)

    def test_policy(self):
        """Public names resolve; a name with any private address, or a private literal, is
        refused unless private addresses are allowed; a name without records fails."""
        c = self._connector()
        self.assertEqual(self.successResultOf(c.resolve_addresses("pub.test")), ["8.8.8.8", "2606:4700::1111"])
        for host in ("priv.test", "v6loop.test", "127.0.0.1", "::1"):
            self.failureResultOf(c.resolve_addresses(host), AddressNotAllowed)
        self.failureResultOf(c.resolve_addresses("none.test"), DNSLookupError)
        allowing = self._connector(allow=True)
        self.assertEqual(self.successResultOf(allowing.resolve_addresses("priv.test")), ["8.8.8.8", "192.168.0.2"])


class TLSPolicyTests(SynchronousTestCase):
    """FederationTLSPolicy caches one creator per expected name."""

    def test_creators_cached_per_name(self):
        """The same name gives the same creator, another name another one; the cache is
        bounded."""
        policy = FederationTLSPolicy(verify=False)
        a = policy.creator_for("a.test")
        self.assertIs(policy.creator_for("a.test"), a)
        self.assertIsNot(policy.creator_for("b.test"), a)
        for i in range(2000):
            policy.creator_for(f"h{i}.test")
        self.assertLessEqual(len(policy._creators), FederationTLSPolicy._MAX_CACHED)


class PathTests(SynchronousTestCase):
    """Request targets are percent-encoded exactly once."""

    def test_fed_path_quotes_segments(self):
        """Each segment is encoded completely, including '/', '?', '#', ':' and '!'."""
        self.assertEqual(
            fed_path("/_matrix/federation/v1/make_join/{}/{}", "!r/o?o#m:ex.org", "@u:ex.org"),
            "/_matrix/federation/v1/make_join/%21r%2Fo%3Fo%23m%3Aex.org/%40u%3Aex.org",
        )

    def test_query_string(self):
        """Lists repeat a parameter; booleans are true/false; everything is encoded."""
        self.assertEqual(
            _query_string({"ver": ["10", "11"], "limit": 5, "x&y": "a=b c", "flag": False}),
            "ver=10&ver=11&limit=5&x%26y=a%3Db%20c&flag=false",
        )
