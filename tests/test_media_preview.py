"""/preview_url: off by default; when on, blocked addresses refused, pages parsed for Open Graph."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web import resource, server

from fedserver.handlers.media.preview import is_allowed, parse_open_graph
from tests.test_media_support import MediaServerTestCase


class ParseTests(unittest.SynchronousTestCase):
    """Open Graph from HTML (html.parser)."""

    def test_open_graph(self):
        """og:* properties win; <title> and the description meta fill in; images are left
        out; broken HTML still gives what it has."""
        html = (b"<html><head><title> A  page </title><meta name=description content='Desc'>"
                b"<meta property='og:type' content='article'><meta property=og:image content=http://x/i.png>"
                b"<meta property='og:title' content='OG title'><p>unclosed <b>")
        self.assertEqual(parse_open_graph(html), {"og:title": "OG title", "og:type": "article", "og:description": "Desc"})
        self.assertEqual(parse_open_graph(b"<title>Caf\xe9</title>", "latin-1"), {"og:title": "Café"})
        self.assertEqual(parse_open_graph(b"\xff\xfe<<<>>>"), {})

    def test_ip_policy(self):
        """Blocked networks are refused, the allowlist overrides, IPv4-mapped IPv6 is
        checked as IPv4."""
        import ipaddress

        block = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.0.0.0/8", "::1/128")]
        allow = [ipaddress.ip_network("10.1.0.0/16")]
        self.assertFalse(is_allowed("127.0.0.1", block, allow))
        self.assertFalse(is_allowed("::ffff:127.0.0.1", block, allow))
        self.assertFalse(is_allowed("::1", block, allow))
        self.assertTrue(is_allowed("10.1.2.3", block, allow))
        self.assertTrue(is_allowed("93.184.216.34", block, allow))
        self.assertFalse(is_allowed("not an ip", block, allow))


class Page(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        if request.path == b"/redirect":
            request.redirect(b"/page")
            return b""
        if request.path == b"/big":
            request.setHeader(b"Content-Type", b"text/html")
            return b"<html>" + b"x" * 5000
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return b"<html><head><meta property='og:title' content='Hello'><title>T</title></head></html>"


class PreviewEndpointTests(MediaServerTestCase):
    """The endpoint on a running server."""

    def page_server(self):
        port = reactor.listenTCP(0, server.Site(Page()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def test_off_by_default(self):
        """Without url_preview_enabled both preview paths are unknown endpoints."""
        await self.start()
        _, token = await self.user("alice")
        for path in ("/_matrix/client/v1/media/preview_url", "/_matrix/media/v3/preview_url"):
            resp, body = await self.request("GET", path, token, params={"url": "http://example.org/"})
            self.assertEqual((resp.code, json.loads(body)["errcode"]), (404, "M_UNRECOGNIZED"), path)

    async def test_blocked_address(self):
        """With previews on and the default blocklist, a URL on loopback is refused 403
        M_FORBIDDEN and never fetched; other schemes are 400."""
        await self.start(url_preview_enabled=True)
        _, token = await self.user("alice")
        url = self.page_server() + "/page"
        resp, body = await self.request("GET", "/_matrix/client/v1/media/preview_url", token, params={"url": url})
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (403, "M_FORBIDDEN"))
        for bad in ("file:///etc/passwd", "ftp://example.org/", "http://"):
            resp, body = await self.request("GET", "/_matrix/client/v1/media/preview_url", token, params={"url": bad})
            self.assertEqual(resp.code, 400, bad)

    async def test_allowed_page(self):
        """An allowlisted address is fetched (redirects followed) and its Open Graph data
        returned; a page beyond url_preview_max_size is 502 M_TOO_LARGE."""
        await self.start(url_preview_enabled=True, url_preview_ip_allowlist=["127.0.0.1/32"], url_preview_max_size=2048)
        _, token = await self.user("alice")
        base = self.page_server()
        resp, body = await self.request("GET", "/_matrix/client/v1/media/preview_url", token,
                                        params={"url": base + "/redirect"})
        self.assertEqual((resp.code, json.loads(body)), (200, {"og:title": "Hello"}))
        resp, body = await self.request("GET", "/_matrix/media/v3/preview_url", token, params={"url": base + "/big"})
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (502, "M_TOO_LARGE"))
