"""Media across two fedservers on loopback: the federation multipart endpoints, fetching and
caching remote media, thumbnails of it, and the purge (admin API)."""

from __future__ import annotations

import json
import os

from fedserver.federation.client import fed_path
from fedserver.handlers.media.multipart import MultipartReader, boundary_from_content_type
from fedserver.testing import database_arg_for_test, loopback_config, start_server
from tests.test_media_http import media_id_of
from tests.test_media_support import MediaServerTestCase, image_size, jpeg_bytes


class _TwoServers(MediaServerTestCase):
    """Server B (the one under self.svc) and the origin server A."""

    async def start_origin(self):
        self.origin = await start_server(self, loopback_config(self.mktemp(), log_level="warn"))
        user_id, login = await self.origin.accounts.accounts.create_user("origin_user", None)
        return login.access_token

    async def origin_upload(self, data, ctype, filename=None):
        uri = await self.origin.media_uploader.upload(
            "@origin_user:" + self.origin.config.server_name,
            self._spool(data), ctype, filename,
        )
        return media_id_of(uri)

    def _spool(self, data):
        spool = self.origin.media_files.new_spool().claim()
        spool.write(data)
        return spool


class TwoServerTests(_TwoServers):
    """Server B fetches media of server A over federation."""

    async def test_remote_download_is_fetched_and_cached(self):
        """B's user downloads A's media through B: B fetches it from A's federation
        endpoint (multipart), caches it with its type and file name, and serves it again
        from the cache once A is gone."""
        await self.start()
        await self.start_origin()
        _, token = await self.user("bob")
        data = jpeg_bytes(640, 480)
        server, media_id = await self.origin_upload(data, "image/jpeg", "holiday.jpg")
        path = f"/_matrix/client/v1/media/download/{server}/{media_id}"
        resp, body = await self.request("GET", path, token)
        self.assertEqual((resp.code, body), (200, data))
        self.assertEqual(self.header(resp, "Content-Type"), "image/jpeg")
        self.assertEqual(self.header(resp, "Content-Disposition"), 'inline; filename="holiday.jpg"')
        (row,) = self.media_rows("remote_media")
        self.assertEqual(row[:2], (server, media_id))
        await self.origin.stopService()
        resp, body = await self.request("GET", path, token)
        self.assertEqual((resp.code, body), (200, data))
        resp, body = await self.request("GET", f"/_matrix/client/v1/media/thumbnail/{server}/{media_id}", token,
                                        params={"width": "96", "height": "96", "method": "crop"})
        self.assertEqual((resp.code, image_size(body)), (200, (96, 96)))

    async def test_remote_not_found(self):
        """Media A does not have is 404 M_NOT_FOUND through B, and nothing is cached."""
        await self.start()
        await self.start_origin()
        _, token = await self.user("bob")
        resp, body = await self.request(
            "GET", f"/_matrix/client/v1/media/download/{self.origin.config.server_name}/nothingHere", token)
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (404, "M_NOT_FOUND"))
        self.assertEqual(self.media_rows("remote_media"), [])

    async def test_federation_endpoint_answers_multipart(self):
        """A's /_matrix/federation/v1/media/download answers a signed request with two
        parts (JSON metadata, then the bytes with type and disposition), the thumbnail
        endpoint likewise; unsigned requests get 401 M_UNAUTHORIZED and bad ids 400."""
        await self.start()
        await self.start_origin()
        server, media_id = await self.origin_upload(b"<svg/>", "image/svg+xml", "a.svg")
        client = self.svc.federation_client
        parts: dict = {}

        def on_response(code, headers):
            boundary = boundary_from_content_type(headers.getRawHeaders(b"Content-Type")[0])
            self.reader = MultipartReader(boundary, lambda i, h: parts.__setitem__(i, [h, b""]),
                                          lambda i, d: parts[i].__setitem__(1, parts[i][1] + d))

        await client.get_streaming(server, fed_path("/_matrix/federation/v1/media/download/{}", media_id),
                                   write=lambda d: self.reader.feed(d), on_response=on_response, max_size=10**6)
        self.reader.finish()
        self.assertEqual(parts[0], [{"content-type": "application/json"}, b"{}"])
        self.assertEqual(parts[1][1], b"<svg/>")
        self.assertEqual(parts[1][0]["content-type"], "image/svg+xml")
        self.assertEqual(parts[1][0]["content-disposition"], 'attachment; filename="a.svg"')
        # The thumbnail endpoint answers the same way.
        png_server, png_id = await self.origin_upload(jpeg_bytes(400, 300), "image/jpeg")
        parts.clear()
        await client.get_streaming(png_server, fed_path("/_matrix/federation/v1/media/thumbnail/{}", png_id),
                                   {"width": 32, "height": 32, "method": "crop"},
                                   write=lambda d: self.reader.feed(d), on_response=on_response, max_size=10**6)
        self.reader.finish()
        self.assertEqual(parts[1][0]["content-type"], "image/jpeg")
        self.assertTrue(parts[1][0]["content-disposition"].startswith("inline"))
        self.assertEqual(image_size(parts[1][1]), (32, 32))
        # Unsigned: 401.
        import treq
        from twisted.internet import reactor
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
        from twisted.internet import ssl

        class _Insecure(BrowserLikePolicyForHTTPS):
            def creatorForNetloc(self, hostname, port):
                return ssl.CertificateOptions(verify=False)

        http = treq.client.HTTPClient(Agent(reactor, contextFactory=_Insecure()))
        resp = await http.get(f"https://{server}/_matrix/federation/v1/media/download/{media_id}")
        body = json.loads(await resp.content())
        self.assertEqual((resp.code, body["errcode"]), (401, "M_UNAUTHORIZED"))
        from fedserver.federation.client import HttpResponseError

        with self.assertRaises(HttpResponseError) as cm:
            await client.get_json(server, "/_matrix/federation/v1/media/download/a.b")
        self.assertEqual((cm.exception.code, cm.exception.errcode), (400, "M_INVALID_PARAM"))
        with self.assertRaises(HttpResponseError) as cm:
            await client.get_json(server, "/_matrix/federation/v1/media/download/unknownId")
        self.assertEqual((cm.exception.code, cm.exception.errcode), (404, "M_NOT_FOUND"))

    async def test_purge_remote_cache(self):
        """The admin purge drops cached remote media and its thumbnails and deletes the
        files nothing else uses; a non-admin gets 403 M_FORBIDDEN; the media is fetched
        again on the next download."""
        await self.start()
        await self.start_origin()
        _, token = await self.user("bob")
        _, admin = await self.user("root", admin=True)
        data = jpeg_bytes(400, 300)
        server, media_id = await self.origin_upload(data, "image/jpeg")
        path = f"/_matrix/client/v1/media/download/{server}/{media_id}"
        await self.request("GET", path, token)
        await self.request("GET", f"/_matrix/client/v1/media/thumbnail/{server}/{media_id}", token,
                           params={"width": "32", "height": "32", "method": "crop"})
        self.assertEqual(len(self.media_rows("remote_media")), 1)
        self.assertEqual(len(self.media_rows("media_thumbnails")), 1)
        purge = "/_fedserver/admin/v1/media/purge_remote"
        resp, body = await self.request("POST", purge, token, json.dumps({"older_than_days": 0}).encode())
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (403, "M_FORBIDDEN"))
        resp, body = await self.request("POST", purge, admin, b'{"older_than_days": "x"}')
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (400, "M_BAD_JSON"))
        resp, body = await self.request("POST", purge, admin, json.dumps({"older_than_days": 30}).encode())
        self.assertEqual(json.loads(body)["deleted"], 0)
        resp, body = await self.request("POST", purge, admin, json.dumps({"before_ts": 2**53}).encode())
        result = json.loads(body)
        self.assertEqual(resp.code, 200)
        self.assertEqual(result["deleted"], 1)
        self.assertGreater(result["freed_bytes"], len(data))
        self.assertEqual(self.media_rows("remote_media"), [])
        self.assertEqual(self.media_rows("media_thumbnails"), [])
        self.assertFalse([f for f in self.media_files() if f"{os.sep}content{os.sep}" in f])
        resp, body = await self.request("GET", path, token)
        self.assertEqual((resp.code, body), (200, data))


class PurgeCommandTests(_TwoServers):
    """fedserver-purge-media, run next to the running server."""

    async def test_purge_command(self):
        """--days 1 keeps media accessed now; --days 0 removes it and its file; local media
        is never touched; --json prints the counts."""
        import io

        from twisted.internet import reactor

        from fedserver.scripts.purge_media import run

        await self.start()
        await self.start_origin()
        _, token = await self.user("bob")
        await self.upload(token, b"ours, never purged", "text/plain")
        server, media_id = await self.origin_upload(b"theirs", "text/plain")
        resp, body = await self.request("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}", token)
        self.assertEqual(body, b"theirs")
        argv = ["-d", database_arg_for_test(self, self.config.database_path), "--media-dir", self.config.media_directory, "--json"]
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(await run(reactor, argv + ["--days", "1"], out, err), 0, err.getvalue())
        self.assertEqual(json.loads(out.getvalue()), {"deleted": 0, "freed_bytes": 0})
        out = io.StringIO()
        self.assertEqual(await run(reactor, argv + ["--days", "0"], out, err, now=2**40), 0, err.getvalue())
        self.assertEqual(json.loads(out.getvalue()), {"deleted": 1, "freed_bytes": len(b"theirs")})
        self.assertEqual(self.media_rows("remote_media"), [])
        self.assertEqual(len(self.media_rows("local_media")), 1)
        self.assertEqual(len([f for f in self.media_files() if f"{os.sep}content{os.sep}" in f]), 1)
        err = io.StringIO()
        self.assertEqual(await run(reactor, ["-d", "/nonexistent/x.db", "--days", "1"], io.StringIO(), err), 2)
        self.assertIn("no database", err.getvalue())
