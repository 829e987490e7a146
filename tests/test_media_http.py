"""The client media endpoints on a running server: upload, create + PUT, download, thumbnails, config, legacy freeze."""

from __future__ import annotations

import json
import os

from fedserver.handlers.media.common import CONTENT_SECURITY_POLICY
from tests.test_media_support import MediaServerTestCase, gif_animation, image_size, jpeg_bytes, png_bytes


def media_id_of(uri: str) -> tuple[str, str]:
    server, media_id = uri[len("mxc://"):].split("/")
    return server, media_id


class UploadDownloadTests(MediaServerTestCase):
    """Uploading and getting media back through the authenticated endpoints."""

    async def test_upload_then_download(self):
        """An upload answers an mxc URI on our server; the authenticated download serves the
        same bytes with the uploaded type, the file name, and the safety headers."""
        await self.start()
        _, token = await self.user("alice")
        data = png_bytes()
        uri = await self.upload(token, data, "image/png", filename="cat photo.png")
        server, media_id = media_id_of(uri)
        self.assertEqual(server, self.svc.config.server_name)
        resp, body = await self.request("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}", token)
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, data)
        self.assertEqual(self.header(resp, "Content-Type"), "image/png")
        self.assertEqual(self.header(resp, "Content-Disposition"), 'inline; filename="cat photo.png"')
        self.assertEqual(self.header(resp, "Content-Security-Policy"), CONTENT_SECURITY_POLICY)
        self.assertEqual(self.header(resp, "X-Content-Type-Options"), "nosniff")
        self.assertEqual(self.header(resp, "Cross-Origin-Resource-Policy"), "cross-origin")
        # The file name in the URL overrides the stored one.
        resp, body = await self.request("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}/other.png", token)
        self.assertEqual((resp.code, body), (200, data))
        self.assertEqual(self.header(resp, "Content-Disposition"), 'inline; filename="other.png"')

    async def test_download_requires_a_token(self):
        """The authenticated endpoints answer 401 M_MISSING_TOKEN without a token."""
        await self.start()
        _, token = await self.user("alice")
        _, media_id = media_id_of(await self.upload(token, b"x"))
        for path in (f"/_matrix/client/v1/media/download/{self.svc.config.server_name}/{media_id}",
                     f"/_matrix/client/v1/media/thumbnail/{self.svc.config.server_name}/{media_id}?width=32&height=32",
                     "/_matrix/client/v1/media/config"):
            resp, body = await self.request("GET", path)
            self.assertEqual((resp.code, json.loads(body)["errcode"]), (401, "M_MISSING_TOKEN"), path)
        resp, body = await self.request("POST", "/_matrix/media/v3/upload", None, b"x")
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (401, "M_MISSING_TOKEN"))

    async def test_identical_content_is_stored_once(self):
        """Two uploads of the same bytes get two media ids but one file on disk."""
        await self.start()
        _, token = await self.user("alice")
        a = await self.upload(token, b"same bytes", "text/plain")
        b = await self.upload(token, b"same bytes", "text/plain")
        self.assertNotEqual(a, b)
        content = [f for f in self.media_files() if f"{os.sep}content{os.sep}" in f]
        self.assertEqual(len(content), 1)
        self.assertEqual(len(self.media_rows()), 2)

    async def test_unknown_media_is_404_and_bad_ids_400(self):
        """An unknown media id is 404 M_NOT_FOUND; ids and server names outside the spec's
        grammar are 400 M_INVALID_PARAM."""
        await self.start()
        _, token = await self.user("alice")
        name = self.svc.config.server_name
        resp, body = await self.request("GET", f"/_matrix/client/v1/media/download/{name}/doesNotExist", token)
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (404, "M_NOT_FOUND"))
        for server, media_id in ((name, "a.b"), (name, "%2E%2E"), ("bad_server!", "abc"), ("..", "abc")):
            resp, body = await self.request("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}", token)
            self.assertEqual((resp.code, json.loads(body)["errcode"]), (400, "M_INVALID_PARAM"), (server, media_id))

    async def test_config(self):
        """/config on both paths gives m.upload.size = max_upload_size."""
        await self.start(max_upload_size=123456)
        _, token = await self.user("alice")
        for path in ("/_matrix/client/v1/media/config", "/_matrix/media/v3/config"):
            resp, body = await self.request("GET", path, token)
            self.assertEqual((resp.code, json.loads(body)), (200, {"m.upload.size": 123456}))

    async def test_content_type_is_sanitised(self):
        """The served Content-Type is the uploaded one, lower-cased and stripped of odd
        parameters; an unparseable one becomes application/octet-stream; none given too."""
        await self.start()
        _, token = await self.user("alice")
        name = self.svc.config.server_name
        cases = (("Text/Plain; charset=UTF-8; evil=1", "text/plain; charset=utf-8"),
                 ("not a type", "application/octet-stream"),
                 ("image/png, text/html", "application/octet-stream"))
        for sent, served in cases:
            _, media_id = media_id_of(await self.upload(token, b"hello", sent))
            resp, _body = await self.request("GET", f"/_matrix/client/v1/media/download/{name}/{media_id}", token)
            self.assertEqual(self.header(resp, "Content-Type"), served, sent)
        resp, body = await self.request("POST", "/_matrix/media/v3/upload", token, b"no type")
        self.assertEqual(resp.code, 200)
        _, media_id = media_id_of(json.loads(body)["content_uri"])
        resp, _body = await self.request("GET", f"/_matrix/client/v1/media/download/{name}/{media_id}", token)
        self.assertEqual(self.header(resp, "Content-Type"), "application/octet-stream")


class CreateThenUploadTests(MediaServerTestCase):
    """POST /_matrix/media/v1/create and PUT /_matrix/media/v3/upload/{serverName}/{mediaId}."""

    async def test_create_then_put(self):
        """A created id has an expiry; a download before the content times out with 504
        M_NOT_YET_UPLOADED; the PUT stores it; a second PUT is 409
        M_CANNOT_OVERWRITE_MEDIA; another user's PUT is 403 M_FORBIDDEN."""
        await self.start()
        _, alice = await self.user("alice")
        _, bob = await self.user("bob")
        resp, body = await self.request("POST", "/_matrix/media/v1/create", alice, b"{}")
        self.assertEqual(resp.code, 200, body)
        created = json.loads(body)
        self.assertIn("unused_expires_at", created)
        server, media_id = media_id_of(created["content_uri"])
        path = f"/_matrix/client/v1/media/download/{server}/{media_id}"
        resp, body = await self.request("GET", path + "?timeout_ms=0", alice)
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (504, "M_NOT_YET_UPLOADED"))
        put = f"/_matrix/media/v3/upload/{server}/{media_id}"
        resp, body = await self.request("PUT", put, bob, b"bob's", {"Content-Type": "text/plain"})
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (403, "M_FORBIDDEN"))
        resp, body = await self.request("PUT", put, alice, b"alice's", {"Content-Type": "text/plain"})
        self.assertEqual((resp.code, json.loads(body)), (200, {}))
        resp, body = await self.request("PUT", put, alice, b"again", {"Content-Type": "text/plain"})
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (409, "M_CANNOT_OVERWRITE_MEDIA"))
        resp, body = await self.request("GET", path, alice)
        self.assertEqual((resp.code, body), (200, b"alice's"))

    async def test_download_waits_for_the_upload(self):
        """A download of a created id waits (timeout_ms) and is answered once the content
        arrives."""
        await self.start()
        _, alice = await self.user("alice")
        resp, body = await self.request("POST", "/_matrix/media/v1/create", alice, b"{}")
        server, media_id = media_id_of(json.loads(body)["content_uri"])
        waiting = self.request("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}?timeout_ms=10000", alice)
        from twisted.internet import defer

        waiting = defer.ensureDeferred(waiting)
        resp, body = await self.request("PUT", f"/_matrix/media/v3/upload/{server}/{media_id}", alice, b"late",
                                        {"Content-Type": "text/plain"})
        self.assertEqual(resp.code, 200)
        resp, body = await waiting
        self.assertEqual((resp.code, body), (200, b"late"))

    async def test_put_to_unknown_or_foreign_id(self):
        """PUT to an id never created, or to another server's id, is 404 M_NOT_FOUND."""
        await self.start()
        _, alice = await self.user("alice")
        for server in (self.svc.config.server_name, "other.example"):
            resp, body = await self.request("PUT", f"/_matrix/media/v3/upload/{server}/neverMade", alice, b"x")
            self.assertEqual((resp.code, json.loads(body)["errcode"]), (404, "M_NOT_FOUND"), server)


class ThumbnailTests(MediaServerTestCase):
    """Thumbnails made on demand with Pillow, cached."""

    async def test_scale_and_crop(self):
        """scale fits the image in the standard size above the request; crop fills it
        exactly; both are inline images, cached after the first request."""
        await self.start()
        _, token = await self.user("alice")
        server, media_id = media_id_of(await self.upload(token, jpeg_bytes(1200, 900), "image/jpeg"))
        path = f"/_matrix/client/v1/media/thumbnail/{server}/{media_id}"
        resp, body = await self.request("GET", path, token, params={"width": "300", "height": "200", "method": "scale"})
        self.assertEqual(resp.code, 200, body)
        self.assertEqual(self.header(resp, "Content-Type"), "image/jpeg")
        self.assertTrue(self.header(resp, "Content-Disposition").startswith("inline"))
        self.assertEqual(image_size(body), (320, 240))
        resp, body = await self.request("GET", path, token, params={"width": "50", "height": "50", "method": "crop"})
        self.assertEqual((resp.code, image_size(body)), (200, (96, 96)))
        self.assertEqual(len(self.media_rows("media_thumbnails")), 2)
        resp, again = await self.request("GET", path, token, params={"width": "50", "height": "50", "method": "crop"})
        self.assertEqual(again, body)
        self.assertEqual(len(self.media_rows("media_thumbnails")), 2)

    async def test_small_image_is_served_as_is(self):
        """An image smaller than the thumbnail asked for is served as it is (never upscaled)."""
        await self.start()
        _, token = await self.user("alice")
        data = png_bytes(20, 10)
        server, media_id = media_id_of(await self.upload(token, data, "image/png"))
        resp, body = await self.request("GET", f"/_matrix/client/v1/media/thumbnail/{server}/{media_id}", token,
                                        params={"width": "640", "height": "480"})
        self.assertEqual((resp.code, body), (200, data))
        self.assertEqual(self.header(resp, "Content-Type"), "image/png")

    async def test_animation(self):
        """animated=true on an animated GIF gives an animated WebP; without it the
        thumbnail is a still image."""
        await self.start()
        _, token = await self.user("alice")
        server, media_id = media_id_of(await self.upload(token, gif_animation(3, 200), "image/gif"))
        path = f"/_matrix/client/v1/media/thumbnail/{server}/{media_id}"
        resp, body = await self.request("GET", path, token, params={"width": "96", "height": "96", "method": "crop",
                                                                    "animated": "true"})
        self.assertEqual((resp.code, self.header(resp, "Content-Type")), (200, "image/webp"))
        from io import BytesIO

        from PIL import Image

        with Image.open(BytesIO(body)) as im:
            self.assertEqual(getattr(im, "n_frames", 1), 3)
        resp, body = await self.request("GET", path, token, params={"width": "96", "height": "96", "method": "crop"})
        self.assertEqual(resp.code, 200)
        with Image.open(BytesIO(body)) as im:
            self.assertEqual(getattr(im, "n_frames", 1), 1)

    async def test_bad_parameters(self):
        """Missing or non-positive sizes and unknown methods are 400."""
        await self.start()
        _, token = await self.user("alice")
        server, media_id = media_id_of(await self.upload(token, png_bytes(), "image/png"))
        path = f"/_matrix/client/v1/media/thumbnail/{server}/{media_id}"
        for params, errcode in (({"height": "32"}, "M_MISSING_PARAM"),
                                ({"width": "0", "height": "32"}, "M_INVALID_PARAM"),
                                ({"width": "-5", "height": "32"}, "M_INVALID_PARAM"),
                                ({"width": "x", "height": "32"}, "M_INVALID_PARAM"),
                                ({"width": "32", "height": "32", "method": "stretch"}, "M_INVALID_PARAM"),
                                ({"width": "32", "height": "32", "animated": "yes"}, "M_INVALID_PARAM")):
            resp, body = await self.request("GET", path, token, params=params)
            self.assertEqual((resp.code, json.loads(body)["errcode"]), (400, errcode), params)


class LegacyMediaTests(MediaServerTestCase):
    """The deprecated unauthenticated endpoints and the freeze (enable_legacy_media)."""

    async def test_frozen_by_default(self):
        """By default the unauthenticated download and thumbnail answer 404 M_NOT_FOUND for
        media uploaded here, which the authenticated endpoint serves."""
        await self.start()
        _, token = await self.user("alice")
        server, media_id = media_id_of(await self.upload(token, png_bytes(), "image/png"))
        for path in (f"/_matrix/media/v3/download/{server}/{media_id}",
                     f"/_matrix/media/r0/download/{server}/{media_id}/name.png",
                     f"/_matrix/media/v3/thumbnail/{server}/{media_id}?width=32&height=32"):
            resp, body = await self.request("GET", path)
            self.assertEqual((resp.code, json.loads(body)["errcode"]), (404, "M_NOT_FOUND"), path)

    async def test_enabled(self):
        """With enable_legacy_media: true they serve it without a token."""
        await self.start(enable_legacy_media=True)
        _, token = await self.user("alice")
        data = png_bytes()
        server, media_id = media_id_of(await self.upload(token, data, "image/png"))
        resp, body = await self.request("GET", f"/_matrix/media/v3/download/{server}/{media_id}")
        self.assertEqual((resp.code, body), (200, data))
        resp, body = await self.request("GET", f"/_matrix/media/v3/thumbnail/{server}/{media_id}?width=32&height=32&method=crop")
        self.assertEqual((resp.code, image_size(body)), (200, (32, 32)))

    async def test_freeze_date(self):
        """With a freeze date, media stored before it is served and media after it is not."""
        await self.start(enable_legacy_media="2100-01-01")
        _, token = await self.user("alice")
        server, media_id = media_id_of(await self.upload(token, b"old enough"))
        resp, body = await self.request("GET", f"/_matrix/media/v3/download/{server}/{media_id}")
        self.assertEqual((resp.code, body), (200, b"old enough"))
        self.svc.media_downloader._legacy = 0  # a freeze in the past
        resp, body = await self.request("GET", f"/_matrix/media/v3/download/{server}/{media_id}")
        self.assertEqual(resp.code, 404)
