"""Tests for fedserver.service and fedserver.crypto: keys, TLS files, atomic writes, and a real start."""

from __future__ import annotations

import json
import os

import treq
from cryptography import x509
from cryptography.x509.oid import NameOID
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json
from treq.testing import StubTreq
from twisted.internet import defer, reactor, ssl
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from fedserver.config import config_from_dict
from fedserver.crypto import (
    KeyFileError,
    atomic_write,
    key_id,
    load_or_generate_signing_key,
    load_or_generate_tls,
    read_signing_key,
    self_signed_certificate,
)
from fedserver.events.hashing import decode_unpadded_base64
from fedserver.http.site import StartingResource
from fedserver.service import FedserverService, Options, _level_filtered_twistd_observer, makeService


class AtomicWriteTests(SynchronousTestCase):
    """atomic_write: complete files with the right mode, never clobbering unless asked."""

    def setUp(self):
        self.dir = self.mktemp()
        os.mkdir(self.dir)

    def test_mode_and_content(self):
        """A new file has exactly the data and mode, and no temp files remain."""
        path = os.path.join(self.dir, "k")
        self.assertTrue(atomic_write(path, b"secret", 0o600))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"secret")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(os.listdir(self.dir), ["k"])

    def test_no_clobber(self):
        """Without replace an existing file is kept (False returned); with replace it is swapped."""
        path = os.path.join(self.dir, "k")
        atomic_write(path, b"one")
        self.assertFalse(atomic_write(path, b"two"))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"one")
        self.assertTrue(atomic_write(path, b"three", 0o644, replace=True))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"three")
        self.assertEqual(sorted(os.listdir(self.dir)), ["k"])


class SigningKeyTests(SynchronousTestCase):
    """The signing key is generated once (0600) and the same key is loaded afterwards."""

    def test_generate_then_reuse(self):
        """The second load returns the same key id and seed, and reports it was not generated."""
        path = self.mktemp()
        k1, gen1 = load_or_generate_signing_key(path)
        k2, gen2 = load_or_generate_signing_key(path)
        self.assertEqual((gen1, gen2), (True, False))
        self.assertEqual(key_id(k1), key_id(k2))
        self.assertTrue(key_id(k1).startswith("ed25519:"))
        self.assertEqual(k1.encode(), k2.encode())
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_malformed_key_file(self):
        """Malformed key files raise KeyFileError with a one-line message and are not replaced."""
        for content in (b"", b"rsa a AAAA\n", b"ed25519 a notbase64!!\n", b"ed25519 b@d AAAA\n", b"\xff\xfe"):
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(content)
            e = self.assertRaises(KeyFileError, load_or_generate_signing_key, path)
            self.assertNotIn("\n", str(e))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), content)

    def test_synapse_format(self):
        """A key in the 'ed25519 VERSION BASE64' format other servers use is read as is."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("ed25519 a_abcd 2fJkRkRhxMOJqfYDz1TzjL5iPEfoOSPsQbkc2TVqWIM\n")
        self.assertEqual(key_id(read_signing_key(path)), "ed25519:a_abcd")


class TlsTests(SynchronousTestCase):
    """Self-signed TLS certificates for the server name's host."""

    def paths(self):
        d = self.mktemp()
        os.mkdir(d)
        return os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")

    def san(self, cert_path):
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return cn, san

    def test_dns_name(self):
        """A DNS host gets CN and a DNS subjectAltName; the key file is 0600."""
        crt, key = self.paths()
        files = load_or_generate_tls(crt, key, "example.org")
        self.assertTrue(files.generated)
        cn, san = self.san(crt)
        self.assertEqual(cn, "example.org")
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["example.org"])
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)

    def test_ip_literal(self):
        """An IP literal host gets an IP subjectAltName."""
        import ipaddress

        crt, key = self.paths()
        load_or_generate_tls(crt, key, "::1")
        self.assertEqual(self.san(crt)[1].get_values_for_type(x509.IPAddress), [ipaddress.ip_address("::1")])

    def test_reuse(self):
        """A second start reuses the same certificate."""
        crt, key = self.paths()
        first = load_or_generate_tls(crt, key, "example.org")
        second = load_or_generate_tls(crt, key, "other.example")
        self.assertFalse(second.generated)
        self.assertEqual(first.fingerprint_sha256, second.fingerprint_sha256)

    def test_cert_regenerated_from_existing_key(self):
        """If only the key exists, a certificate is made for it (the key is kept)."""
        crt, key = self.paths()
        load_or_generate_tls(crt, key, "example.org")
        with open(key, "rb") as f:
            key_pem = f.read()
        os.unlink(crt)
        self.assertTrue(load_or_generate_tls(crt, key, "example.org").generated)
        with open(key, "rb") as f:
            self.assertEqual(f.read(), key_pem)

    def test_errors(self):
        """A certificate without its key, a mismatched key or garbage are KeyFileErrors."""
        crt, key = self.paths()
        load_or_generate_tls(crt, key, "example.org")
        os.unlink(key)
        self.assertRaises(KeyFileError, load_or_generate_tls, crt, key, "example.org")
        _, other_key = self_signed_certificate("example.org")
        with open(key, "wb") as f:
            f.write(other_key)
        e = self.assertRaises(KeyFileError, load_or_generate_tls, crt, key, "example.org")
        self.assertIn("does not match", str(e))
        with open(crt, "wb") as f:
            f.write(b"junk")
        self.assertRaises(KeyFileError, load_or_generate_tls, crt, key, "example.org")


class MakeServiceTests(SynchronousTestCase):
    """makeService turns bad key files into a clean exit message."""

    def test_bad_key_file_exits_with_message(self):
        """A malformed signing key stops startup with a one-line message, not a traceback."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("garbage\n")
        o = Options()
        o.parseOptions(["--signing-key", path])
        e = self.assertRaises(SystemExit, makeService, o)
        self.assertIn(path, str(e.code))
        self.assertNotIn("\n", str(e.code))

    def test_bad_plugin_exits_with_message(self):
        """A plugin module that cannot be imported stops startup with a message naming it,
        before any key file is written."""
        d = self.mktemp()
        os.mkdir(d)
        o = Options()
        o.parseOptions(["--set", "plugins=[no_such_module_xyz]", "--signing-key", os.path.join(d, "k")])
        e = self.assertRaises(SystemExit, makeService, o)
        self.assertIn("no_such_module_xyz", str(e.code))
        self.assertEqual(os.listdir(d), [])

    def test_starting_resource(self):
        """Before the store is open, requests get 503 M_UNKNOWN with Retry-After."""
        resp = self.successResultOf(StubTreq(StartingResource()).get("http://x/_matrix/key/v2/server"))
        self.assertEqual(resp.code, 503)
        self.assertEqual(self.successResultOf(resp.json())["errcode"], "M_UNKNOWN")

    def test_log_level_filter(self):
        """The twistd observer built for log_level drops events below that level."""
        from twisted.scripts.twistd import ServerOptions

        logfile = os.path.abspath(self.mktemp())
        opts = ServerOptions()
        opts.parseOptions(["--nodaemon", "--logfile", logfile, "fedserver"])
        observer = _level_filtered_twistd_observer(opts, "warn")
        log = Logger(observer=observer)
        log.info("quiet-info-line")
        log.warn("loud-warn-line")
        with open(logfile) as f:
            text = f.read()
        self.assertIn("loud-warn-line", text)
        self.assertNotIn("quiet-info-line", text)
        self.assertIsNone(_level_filtered_twistd_observer(None, "info"))


@implementer(IPolicyForHTTPS)
class _TrustOnly:
    """Client TLS policy trusting exactly one certificate (and checking the hostname),
    offering ALPN like curl and browsers do."""

    def __init__(self, pem: bytes) -> None:
        self.cert = ssl.Certificate.loadPEM(pem)

    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.cert, acceptableProtocols=[b"http/1.1"])


class RunningServerTests(TestCase):
    """A whole server started in-process on loopback ports, fetched over real TLS."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)
        self.config = config_from_dict(
            {
                "database_path": os.path.join(self.dir, "fedserver.db"),
                "signing_key_path": os.path.join(self.dir, "fedserver.signing.key"),
                "tls_certificate_path": os.path.join(self.dir, "fedserver.tls.crt"),
                "tls_private_key_path": os.path.join(self.dir, "fedserver.tls.key"),
                "federation_listen": "127.0.0.1:0",
                "client_listen": "127.0.0.1:0",
            }
        )

    async def start(self):
        svc = FedserverService(self.config, reactor)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(lambda: svc.stopService() if svc.running else None)
        await svc.when_ready()
        return svc

    async def fetch_keys(self, svc):
        with open(self.config.tls_certificate_path, "rb") as f:
            pem = f.read()
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        client = treq.client.HTTPClient(Agent(reactor, contextFactory=_TrustOnly(pem), pool=pool))
        port = svc.federation_listener.port.getHost().port
        resp = await client.get(f"https://localhost:{port}/_matrix/key/v2/server")
        body = await resp.content()
        return resp, json.loads(body)

    async def test_start_fetch_restart(self):
        """The key document fetched over TLS (hostname-checked against the generated
        certificate) verifies against its own key; stopping closes open connections; after a
        restart the key id is unchanged."""
        svc = await self.start()
        self.assertIsNotNone(svc.store)
        self.assertTrue(os.path.exists(self.config.database_path))
        resp, doc = await self.fetch_keys(svc)
        self.assertEqual(resp.code, 200)
        self.assertEqual(doc["server_name"], "localhost:8448")
        (kid,) = doc["verify_keys"]
        self.assertEqual(kid, svc.key_id)
        vk = decode_verify_key_bytes(kid, decode_unpadded_base64(doc["verify_keys"][kid]["key"]))
        verify_signed_json(doc, "localhost:8448", vk)

        client_port = svc.client_listener.port.getHost().port
        resp = await treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))).get(
            f"http://127.0.0.1:{client_port}/_matrix/unknown"
        )
        self.assertEqual(resp.code, 404)
        self.assertEqual((await resp.json())["errcode"], "M_UNRECOGNIZED")
        self.assertEqual(resp.headers.getRawHeaders(b"Access-Control-Allow-Origin"), [b"*"])
        # The keep-alive connection of the key fetch is still open; stopping closes it.
        self.assertEqual(svc.federation_listener.open_connections(), 1)
        await svc.stopService()
        self.assertEqual(svc.federation_listener.open_connections(), 0)
        self.assertEqual(svc.client_listener.open_connections(), 0)
        self.assertIsNone(svc.store)

        svc2 = await self.start()
        self.assertEqual(svc2.key_id, kid)
        self.assertFalse(svc2.key_generated)
        _, doc2 = await self.fetch_keys(svc2)
        verify_signed_json(doc2, "localhost:8448", vk)
        await svc2.stopService()

    async def test_database_failure_fails_ready(self):
        """If the database cannot be opened, ready fails and on_fatal is told; nothing hangs."""
        fatal = []
        config = self.config.replace(database_path=os.path.join(self.dir, "missing-dir", "x.db"))
        svc = FedserverService(config, reactor, on_fatal=fatal.append)
        svc.privilegedStartService()
        svc.startService()
        with self.assertRaises(Exception) as cm:
            await svc.when_ready()
        self.assertIn("unable to open database file", str(cm.exception))
        self.assertEqual(len(fatal), 1)
        self.assertIs(fatal[0].value, cm.exception)
        self.flushLoggedErrors()
        await svc.stopService()

    async def test_busy_port_fails_start(self):
        """If the federation port is taken, starting raises instead of running deaf."""
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        config = self.config.replace(federation_listen=f"127.0.0.1:{taken.getHost().port}")
        svc = FedserverService(config, reactor)
        self.assertRaises(CannotListenError, svc.privilegedStartService)
        await defer.maybeDeferred(svc.stopService)
