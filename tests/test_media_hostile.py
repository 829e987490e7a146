"""HOSTILE rows 30-33 against a running server: oversized and endless uploads, traversal in
ids and server names, active content served as attachments, remote servers that send too
much or garbage; and images that must not be decoded."""

from __future__ import annotations

import io
import json
import os

from twisted.internet import reactor, ssl
from twisted.internet.task import deferLater
from twisted.web import resource, server

from fedserver.handlers.media.common import CONTENT_SECURITY_POLICY
from tests.interop.peers import self_signed_cert
from tests.test_media_http import media_id_of
from tests.test_media_support import MediaServerTestCase, png_bytes, raw_connect


class OversizedUploadTests(MediaServerTestCase):
    """Row 30: larger than max_upload_size, or never ending: 413 M_TOO_LARGE while
    streaming, nothing kept."""

    options = {"max_upload_size": 100_000}

    async def assert_nothing_kept(self):
        self.assertEqual(self.media_rows(), [])
        self.assertEqual(self.tmp_files(), [])
        self.assertFalse([f for f in self.media_files() if f"{os.sep}content{os.sep}" in f])

    async def test_announced_length_refused_before_the_body(self):
        """A Content-Length above the limit is answered 413 at once, before any body byte is
        sent, and the connection is closed."""
        await self.start()
        _, token = await self.user("alice")
        conn = await raw_connect(self.client_port)
        conn.transport.write(
            b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 100001\r\n\r\n"
        )
        data = await conn.closed
        self.assertTrue(data.startswith(b"HTTP/1.1 413"), data[:100])
        self.assertIn(b'"M_TOO_LARGE"', data)
        await self.assert_nothing_kept()

    async def test_endless_chunked_body_cut_off(self):
        """A chunked body that never ends is cut off at the limit with 413; the spool is
        deleted; the server keeps serving."""
        await self.start()
        _, token = await self.user("alice")
        conn = await raw_connect(self.client_port)
        conn.transport.write(
            b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (8192, b"z" * 8192)
        for _ in range(200):  # 1.6 MB offered, far past the limit
            if conn.closed.called:
                break
            conn.transport.write(chunk)
            await deferLater(reactor, 0.001, lambda: None)
        data = await conn.closed
        self.assertTrue(data.startswith(b"HTTP/1.1 413"), data[:100])
        self.assertIn(b'"M_TOO_LARGE"', data)
        await self.assert_nothing_kept()
        # Still serving, and a body within the limit is accepted.
        uri = await self.upload(token, b"small", "text/plain")
        self.assertTrue(uri.startswith("mxc://"))

    async def test_client_gone_mid_upload(self):
        """A client that disconnects half way through its body leaves nothing behind."""
        await self.start()
        _, token = await self.user("alice")
        conn = await raw_connect(self.client_port)
        conn.transport.write(
            b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
            + b"\r\nContent-Length: 50000\r\n\r\n" + b"a" * 20000
        )
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.tmp_files()), 1)  # the body streams into a spool
        conn.transport.loseConnection()
        await conn.closed
        for _ in range(100):
            if not self.tmp_files():
                break
            await deferLater(reactor, 0.01, lambda: None)
        await self.assert_nothing_kept()

    async def test_quota(self):
        """Past media_user_quota an upload is 403 M_FORBIDDEN and not kept."""
        await self.start(media_user_quota=1000)
        _, token = await self.user("alice")
        await self.upload(token, b"a" * 600, "text/plain")
        resp, body = await self.request("POST", "/_matrix/media/v3/upload", token, b"b" * 600)
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (403, "M_FORBIDDEN"))
        self.assertEqual(len(self.media_rows()), 1)
        self.assertEqual(self.tmp_files(), [])


class TraversalTests(MediaServerTestCase):
    """Row 31: ids and server names with ../, /, NUL or encoded separators are 400 and
    never reach the file system."""

    async def test_bad_ids_and_server_names(self):
        """Every download, thumbnail and upload path with such a segment answers 400
        M_INVALID_PARAM (or 404 M_UNRECOGNIZED when the separator splits the path)."""
        await self.start(enable_legacy_media=True)
        _, token = await self.user("alice")
        name = self.svc.config.server_name
        bad_ids = ["..", "%2E%2E", "a%2Fb", "a%00b", "%2F..%2F..%2Fetc%2Fpasswd", "a%5Cb", "a.png", "a%20b", "x" * 256]
        bad_servers = ["..", "a%2Fb", "a%00b", "%2E%2E%2F", "evil.com%2F..", "a..b", "[::1", "x:99999"]
        paths = []
        for media_id in bad_ids:
            paths += [f"/_matrix/client/v1/media/download/{name}/{media_id}",
                      f"/_matrix/client/v1/media/thumbnail/{name}/{media_id}?width=32&height=32",
                      f"/_matrix/media/v3/download/{name}/{media_id}"]
        for srv in bad_servers:
            paths += [f"/_matrix/client/v1/media/download/{srv}/abc", f"/_matrix/media/v3/download/{srv}/abc"]
        for path in paths:
            resp, body = await self.request("GET", path, token)
            self.assertEqual(resp.code, 400, path)
            self.assertEqual(json.loads(body)["errcode"], "M_INVALID_PARAM", path)
        for media_id in bad_ids:
            resp, body = await self.request("PUT", f"/_matrix/media/v3/upload/{name}/{media_id}", token, b"x")
            self.assertEqual((resp.code, json.loads(body)["errcode"]), (400, "M_INVALID_PARAM"), media_id)
        # A raw "../" in the path never leaves the media tree either.
        resp, body = await self.request("GET", f"/_matrix/client/v1/media/download/{name}/../../../etc/passwd", token)
        self.assertIn(resp.code, (400, 404))
        self.assertNotIn(b"root:", body)


class ActiveContentTests(MediaServerTestCase):
    """Row 32: SVG, HTML and other active content are attachments with a sandboxing CSP."""

    async def test_svg_and_html_are_attachments(self):
        """SVG, HTML, XHTML and JavaScript come back with Content-Disposition: attachment,
        the sandbox CSP and nosniff, on the authenticated and the legacy endpoints; SVG
        gives no thumbnail (400), never a 500."""
        await self.start(enable_legacy_media=True)
        _, token = await self.user("alice")
        svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
        for ctype, data in (("image/svg+xml", svg), ("text/html", b"<script>alert(1)</script>"),
                            ("application/xhtml+xml", b"<html/>"), ("application/javascript", b"alert(1)"),
                            ("text/html; charset=utf-8", b"<b>x</b>")):
            server, media_id = media_id_of(await self.upload(token, data, ctype, filename="x.svg"))
            for path in (f"/_matrix/client/v1/media/download/{server}/{media_id}",
                         f"/_matrix/client/v1/media/download/{server}/{media_id}/evil.html",
                         f"/_matrix/media/v3/download/{server}/{media_id}"):
                resp, body = await self.request("GET", path, token)
                self.assertEqual((resp.code, body), (200, data))
                self.assertTrue(self.header(resp, "Content-Disposition").startswith("attachment"), (ctype, path))
                self.assertEqual(self.header(resp, "Content-Security-Policy"), CONTENT_SECURITY_POLICY)
                self.assertEqual(self.header(resp, "X-Content-Type-Options"), "nosniff")
        server, media_id = media_id_of(await self.upload(token, svg, "image/svg+xml"))
        resp, body = await self.request("GET", f"/_matrix/client/v1/media/thumbnail/{server}/{media_id}", token,
                                        params={"width": "32", "height": "32"})
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (400, "M_UNKNOWN"))


class HostileImageTests(MediaServerTestCase):
    """Images that are corrupt or too large to decode: no thumbnail, no 500."""

    async def thumb(self, token, data, ctype="image/png"):
        server, media_id = media_id_of(await self.upload(token, data, ctype))
        return await self.request("GET", f"/_matrix/client/v1/media/thumbnail/{server}/{media_id}", token,
                                  params={"width": "32", "height": "32", "method": "crop"})

    async def test_corrupt_images(self):
        """A truncated PNG, a PNG header over garbage, random bytes claiming image/jpeg and
        an empty file all give 400 M_UNKNOWN; the download still serves the bytes."""
        await self.start()
        _, token = await self.user("alice")
        good = png_bytes(300, 300)
        for data, ctype in ((good[: len(good) // 2], "image/png"), (good[:40] + os.urandom(400), "image/png"),
                            (os.urandom(3000), "image/jpeg"), (b"", "image/png"),
                            (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "image/png")):
            resp, body = await self.thumb(token, data, ctype)
            self.assertEqual((resp.code, json.loads(body)["errcode"]), (400, "M_UNKNOWN"), data[:20])
        self.assertEqual(self.media_rows("media_thumbnails"), [])

    async def test_decompression_bomb(self):
        """An image whose header announces more pixels than max_image_pixels is refused
        (413 M_TOO_LARGE) before it is decoded; so is a 20000x20000 PNG of a few kB."""
        await self.start(max_image_pixels=10_000)
        _, token = await self.user("alice")
        resp, body = await self.thumb(token, png_bytes(200, 200))
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (413, "M_TOO_LARGE"))
        from PIL import Image

        out = io.BytesIO()
        Image.new("1", (20000, 20000)).save(out, "PNG")
        self.assertLess(len(out.getvalue()), 200_000)
        resp, body = await self.thumb(token, out.getvalue())
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (413, "M_TOO_LARGE"))


# -- row 33: a hostile remote server ---------------------------------------------------------


class _Endless:
    """Writes ``chunk`` forever as the connection drains (until it is cut)."""

    def __init__(self, request, head: bytes = b""):
        self.request = request
        self.head = head
        self.sent = 0

    def resumeProducing(self):
        if self.head:
            self.request.write(self.head)
            self.head = b""
        self.request.write(b"\0" * 65536)
        self.sent += 65536

    def pauseProducing(self):
        pass

    def stopProducing(self):
        self.request = None


class HostileMediaServer(resource.Resource):
    """A 'homeserver' answering federation media downloads by ``mode``."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.mode = "garbage"
        self.requests = []

    def render_GET(self, request):
        self.requests.append(request.uri)
        if self.mode == "garbage":
            request.setHeader(b"Content-Type", b"text/plain")
            return b"this is not multipart"
        if self.mode == "bad_multipart":
            request.setHeader(b"Content-Type", b"multipart/mixed; boundary=abc")
            return b"--abc\r\nContent-Type: application/json\r\n\r\n{}\r\n--abc\r\nContent-Type: image/png\r\n\r\nno close"
        if self.mode == "huge_length":
            request.setHeader(b"Content-Type", b"multipart/mixed; boundary=abc")
            request.setHeader(b"Content-Length", b"999999999999")
            request.write(b"--abc\r\n")
            return server.NOT_DONE_YET
        if self.mode == "endless":
            request.setHeader(b"Content-Type", b"multipart/mixed; boundary=abc")
            head = b"--abc\r\nContent-Type: application/json\r\n\r\n{}\r\n--abc\r\nContent-Type: image/png\r\n\r\n"
            request.registerProducer(_Endless(request, head), False)
            return server.NOT_DONE_YET
        if self.mode == "endless_legacy":
            if b"/federation/" in request.uri:
                request.setResponseCode(404)
                request.setHeader(b"Content-Type", b"application/json")
                return b'{"errcode": "M_UNRECOGNIZED", "error": "no"}'
            request.setHeader(b"Content-Type", b"image/png")
            request.registerProducer(_Endless(request), False)
            return server.NOT_DONE_YET
        if self.mode == "legacy_ok":
            if b"/federation/" in request.uri:
                request.setResponseCode(404)
                request.setHeader(b"Content-Type", b"application/json")
                return b'{"errcode": "M_UNRECOGNIZED", "error": "no"}'
            request.setHeader(b"Content-Type", b"text/plain")
            request.setHeader(b"Content-Disposition", b"attachment; filename*=utf-8''old.txt")
            return b"old server bytes"
        raise AssertionError(self.mode)


class HostileRemoteTests(MediaServerTestCase):
    """Row 33: a remote server answering a media fetch with an endless, oversized or
    malformed body: cut off at the limit, nothing cached, 502 to our client."""

    options = {"max_upload_size": 200_000}

    async def setup_remote(self):
        directory = self.mktemp()
        os.makedirs(directory)
        crt, key = self_signed_cert(directory)
        with open(crt, "rb") as f:
            cert = ssl.PrivateCertificate.loadPEM(f.read() + open(key, "rb").read())
        self.remote = HostileMediaServer()
        site = server.Site(self.remote)
        port = reactor.listenSSL(0, site, cert.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"127.0.0.1:{port.getHost().port}"

    async def assert_502_nothing_cached(self, token, remote, errcode):
        resp, body = await self.request("GET", f"/_matrix/client/v1/media/download/{remote}/someMedia", token)
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (502, errcode), self.remote.mode)
        self.assertEqual(self.media_rows("remote_media"), [])
        self.assertEqual(self.tmp_files(), [])
        self.assertFalse([f for f in self.media_files() if f"{os.sep}content{os.sep}" in f])

    async def test_hostile_answers(self):
        """Garbage, a multipart body that never closes, an announced length beyond the
        limit, and endless bodies (new and legacy endpoint) all give 502 with nothing
        cached; the endless ones are cut near the limit, not read to the end."""
        await self.start()
        _, token = await self.user("alice")
        remote = await self.setup_remote()
        for mode, errcode in (("garbage", "M_UNKNOWN"), ("bad_multipart", "M_UNKNOWN"),
                              ("huge_length", "M_TOO_LARGE"), ("endless", "M_TOO_LARGE"),
                              ("endless_legacy", "M_TOO_LARGE")):
            self.remote.mode = mode
            await self.assert_502_nothing_cached(token, remote, errcode)
        # The legacy fallback asked without letting the remote fetch further.
        self.assertTrue(any(b"allow_remote=false" in uri for uri in self.remote.requests), self.remote.requests)

    async def test_fallback_to_legacy_download(self):
        """404 M_UNRECOGNIZED on /federation/v1/media/download (a server older than it): the
        media comes from /_matrix/media/v3/download?allow_remote=false and is cached with
        its type and file name."""
        await self.start()
        _, token = await self.user("alice")
        remote = await self.setup_remote()
        self.remote.mode = "legacy_ok"
        resp, body = await self.request("GET", f"/_matrix/client/v1/media/download/{remote}/oldMedia", token)
        self.assertEqual((resp.code, body), (200, b"old server bytes"))
        self.assertEqual(self.header(resp, "Content-Type"), "text/plain")
        self.assertEqual(self.header(resp, "Content-Disposition"), 'inline; filename="old.txt"')
        self.assertEqual(len(self.media_rows("remote_media")), 1)
        self.assertTrue(any(b"/_matrix/media/v3/download/" in u and b"allow_remote=false" in u
                            for u in self.remote.requests))

    async def test_legacy_endpoints_do_not_fetch(self):
        """The frozen legacy endpoint does not fetch remote media it could not serve; and
        the legacy endpoint on the federation listener never fetches from a third server,
        whatever allow_remote says."""
        await self.start()
        remote = await self.setup_remote()
        self.remote.mode = "legacy_ok"
        resp, body = await self.request("GET", f"/_matrix/media/v3/download/{remote}/someMedia")
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (404, "M_NOT_FOUND"))
        self.svc.media_downloader._legacy = True
        import treq
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

        class _Insecure(BrowserLikePolicyForHTTPS):
            def creatorForNetloc(self, hostname, port):
                return ssl.CertificateOptions(verify=False)

        http = treq.client.HTTPClient(Agent(reactor, contextFactory=_Insecure()))
        resp = await http.get(f"https://{self.svc.config.server_name}/_matrix/media/v3/download/{remote}/someMedia"
                              "?allow_remote=true")
        self.assertEqual((resp.code, json.loads(await resp.content())["errcode"]), (404, "M_NOT_FOUND"))
        self.assertEqual(self.remote.requests, [])
        # Through the client listener, with the legacy endpoints enabled, it is fetched.
        resp, body = await self.request("GET", f"/_matrix/media/v3/download/{remote}/someMedia")
        self.assertEqual((resp.code, body), (200, b"old server bytes"))

    async def test_unreachable_remote(self):
        """A server that cannot be reached gives 502 M_UNKNOWN, promptly, nothing cached."""
        await self.start()
        _, token = await self.user("alice")
        from fedserver.testing import free_port

        self.remote = HostileMediaServer()
        await self.assert_502_nothing_cached(token, f"127.0.0.1:{free_port()}", "M_UNKNOWN")


