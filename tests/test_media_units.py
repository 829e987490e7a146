"""Pure parts of the content repository: ids, content types, dispositions, multipart,
thumbnail sizes and Pillow output; the metadata store on a real SQLite file."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial import unittest

from fedserver.handlers.media.common import (
    clean_upload_name,
    content_disposition,
    file_name_from_disposition,
    is_inline,
    is_valid_media_id,
    is_valid_server_name,
    new_media_id,
    sanitise_content_type,
)
from fedserver.handlers.media.files import MediaFiles, SpoolTooLarge
from fedserver.handlers.media.multipart import (
    MultipartError,
    MultipartReader,
    boundary_from_content_type,
    closing,
    part_head,
)
from fedserver.handlers.media.thumbnails import (
    ImageTooLarge,
    Target,
    ThumbnailError,
    choose_target,
    make_thumbnail,
    output_size,
)
from fedserver.storage import open_store
from fedserver.testing import database_for_test
from fedserver.storage.operations.media_store import (
    MediaAlreadyUploaded,
    MediaNotFound,
    MediaNotOwned,
    QuotaExceeded,
    RemoteMedia,
    Thumbnail,
)
from tests.test_media_support import image_size, jpeg_bytes, png_bytes


class IdTests(unittest.SynchronousTestCase):
    """Media ids and server names (spec "Matrix Content (mxc://) URIs", HOSTILE row 31)."""

    def test_media_ids(self):
        """Only A-Za-z0-9, _ and - (1 to 255 of them); our own ids pass."""
        for good in ("abc", "A_b-9", new_media_id(), "x" * 255):
            self.assertTrue(is_valid_media_id(good), good)
        for bad in ("", "..", "a/b", "a\x00b", "a.b", "a%2Fb", "é", "x" * 256, "a b", "a\\b"):
            self.assertFalse(is_valid_media_id(bad), bad)

    def test_server_names(self):
        """Server names follow the appendix grammar, with no empty DNS labels."""
        for good in ("example.org", "example.org:8448", "127.0.0.1:8448", "[::1]:8448", "localhost"):
            self.assertTrue(is_valid_server_name(good), good)
        for bad in ("", "..", ".example.org", "a..b", "a/b", "a\x00b", "ex ample", "[::1", "h:0", "h:x"):
            self.assertFalse(is_valid_server_name(bad), bad)


class ContentTypeTests(unittest.SynchronousTestCase):
    """Content types and dispositions."""

    def test_sanitise(self):
        """type/subtype lower-cased, charset kept for text only, junk to octet-stream."""
        cases = {
            None: "application/octet-stream",
            "image/PNG": "image/png",
            "text/plain; charset=UTF-8": "text/plain; charset=utf-8",
            "text/html; charset=\"utf-8\"; x=y": "text/html; charset=utf-8",
            "image/png; charset=utf-8": "image/png",
            "image": "application/octet-stream",
            "image/png\nX-Evil: 1": "application/octet-stream",
            b"\xff/\xfe": "application/octet-stream",
            "a/" + "b" * 300: "application/octet-stream",
        }
        for raw, expected in cases.items():
            self.assertEqual(sanitise_content_type(raw), expected, raw)

    def test_inline_only_for_the_spec_list(self):
        """Images, audio, video and plain text are inline; SVG, HTML, XML, PDF are not."""
        for t in ("image/png", "text/plain; charset=utf-8", "video/mp4", "audio/ogg", "application/json"):
            self.assertTrue(is_inline(t), t)
        for t in ("image/svg+xml", "text/html", "application/xhtml+xml", "text/xml", "application/pdf",
                  "application/octet-stream", "text/javascript"):
            self.assertFalse(is_inline(t), t)

    def test_disposition_round_trip(self):
        """File names are quoted (ASCII) or RFC 5987-encoded (anything else), and parse back."""
        self.assertEqual(content_disposition("image/png", None), b"inline")
        self.assertEqual(content_disposition("image/svg+xml", "a.svg"), b'attachment; filename="a.svg"')
        for name in ("plain.png", 'quo"te.png', "été 🌞.jpg", "semi;colon.txt"):
            header = content_disposition("image/png", name)
            self.assertEqual(file_name_from_disposition(header), name, header)
        self.assertEqual(file_name_from_disposition('attachment; filename="../../etc/passwd"'), ".._.._etc_passwd")
        self.assertIsNone(file_name_from_disposition("inline"))
        self.assertIsNone(clean_upload_name("\x00\x01"))


class MultipartTests(unittest.SynchronousTestCase):
    """The incremental multipart/mixed reader against our own framing, in every chunking."""

    def body(self, media: bytes, boundary: str = "b0und") -> bytes:
        return (part_head(boundary, [("Content-Type", "application/json")], True) + b"{}"
                + part_head(boundary, [("Content-Type", "image/png"), ("Content-Disposition", "inline")], False)
                + media + closing(boundary))

    def read(self, body: bytes, chunk: int, boundary: bytes = b"b0und"):
        parts: dict = {}
        reader = MultipartReader(boundary, lambda i, h: parts.__setitem__(i, [h, b""]),
                                 lambda i, d: parts[i].__setitem__(1, parts[i][1] + d))
        for i in range(0, len(body), chunk):
            reader.feed(body[i:i + chunk])
        reader.finish()
        return parts

    def test_any_chunking(self):
        """The parts come out the same however the body is split, even with CRLF and
        partial delimiters inside the media."""
        media = b"\r\n--b0un\r\n-" + os.urandom(300) + b"\r\n--b0unx"
        body = self.body(media)
        for chunk in (1, 2, 3, 7, 64, len(body)):
            parts = self.read(body, chunk)
            self.assertEqual(parts[0], [{"content-type": "application/json"}, b"{}"])
            self.assertEqual(parts[1][1], media, chunk)
            self.assertEqual(parts[1][0]["content-disposition"], "inline")

    def test_malformed(self):
        """Unclosed bodies, too many parts, header garbage and missing delimiters are errors."""
        body = self.body(b"data")
        with self.assertRaises(MultipartError):
            self.read(body[:-10], 5)
        three = body[:-len(closing("b0und"))] + part_head("b0und", [], False) + b"x" + closing("b0und")
        with self.assertRaises(MultipartError):
            self.read(three, 10)
        with self.assertRaises(MultipartError):
            self.read(b"--b0und\r\nno colon here\r\n\r\nx" + closing("b0und"), 100)
        with self.assertRaises(MultipartError):
            self.read(b"x" * 20000, 1000)

    def test_boundary(self):
        """The boundary comes from multipart/mixed only, quoted or not."""
        self.assertEqual(boundary_from_content_type("multipart/mixed; boundary=abc"), b"abc")
        self.assertEqual(boundary_from_content_type(b'Multipart/Mixed; boundary="a b"'), b"a b")
        self.assertIsNone(boundary_from_content_type("multipart/form-data; boundary=abc"))
        self.assertIsNone(boundary_from_content_type("multipart/mixed"))
        self.assertIsNone(boundary_from_content_type("multipart/mixed; boundary=" + "x" * 71))


class ThumbnailSizeTests(unittest.SynchronousTestCase):
    """Sizes (spec "Thumbnails") and Pillow output."""

    def test_choose_target(self):
        """The smallest standard size of the method that covers the request; beyond them,
        rounded up."""
        self.assertEqual(choose_target(32, 32, "crop"), Target(32, 32, "crop"))
        self.assertEqual(choose_target(33, 10, "crop"), Target(96, 96, "crop"))
        self.assertEqual(choose_target(100, 100, "scale"), Target(320, 240, "scale"))
        self.assertEqual(choose_target(700, 500, "scale"), Target(800, 600, "scale"))
        self.assertEqual(choose_target(100, 100, "crop"), Target(400, 400, "crop"))
        self.assertEqual(choose_target(9999, 1, "scale"), Target(2400, 400, "scale"))

    def test_output_size_never_upscales(self):
        """scale fits inside the box, crop fills it, and neither grows the image."""
        self.assertEqual(output_size((1200, 900), Target(320, 240, "scale")), (320, 240))
        self.assertEqual(output_size((1000, 200), Target(320, 240, "scale")), (320, 64))
        self.assertEqual(output_size((1000, 200), Target(96, 96, "crop")), (96, 96))
        self.assertEqual(output_size((50, 20), Target(96, 96, "crop")), (50, 20))
        self.assertEqual(output_size((50, 20), Target(640, 480, "scale")), (50, 20))

    def test_make_thumbnail(self):
        """JPEG in, JPEG out at the target size; PNG with alpha stays PNG; an image that
        already fits is served as it is (None)."""
        d = self.mktemp()
        os.makedirs(d)

        def write(name, data):
            path = os.path.join(d, name)
            with open(path, "wb") as f:
                f.write(data)
            return path

        data, ctype = make_thumbnail(write("a.jpg", jpeg_bytes(1200, 900)), Target(320, 240, "scale"), False, 10**8)
        self.assertEqual((ctype, image_size(data)), ("image/jpeg", (320, 240)))
        alpha = write("b.png", png_bytes(400, 400, (1, 2, 3, 100), "RGBA"))
        data, ctype = make_thumbnail(alpha, Target(96, 96, "crop"), False, 10**8)
        self.assertEqual((ctype, image_size(data)), ("image/png", (96, 96)))
        self.assertIsNone(make_thumbnail(write("c.png", png_bytes(20, 20)), Target(96, 96, "crop"), False, 10**8))
        with self.assertRaises(ImageTooLarge):
            make_thumbnail(alpha, Target(96, 96, "crop"), False, 1000)
        with self.assertRaises(ThumbnailError):
            make_thumbnail(write("d.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100), Target(96, 96, "crop"), False, 10**8)


class SpoolTests(unittest.SynchronousTestCase):
    """Spool files and content-addressed placement."""

    def test_spool_limit_and_place(self):
        """A spool past its limit deletes itself; a synced one is linked into place under its
        SHA-256; identical content is placed once; closing an unclaimed spool deletes it."""
        files = MediaFiles(self.mktemp())
        spool = files.new_spool(10)
        with self.assertRaises(SpoolTooLarge):
            spool.write(b"x" * 11)
        self.assertEqual(os.listdir(files.tmp_dir), [])
        spool = files.new_spool().claim()
        spool.write(b"hello")
        spool.sync()
        files.place(spool)
        path = files.path_for(spool.sha256)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"hello")
        self.assertTrue(path.startswith(files.content_dir))
        spool.discard()
        self.assertEqual(os.listdir(files.tmp_dir), [])
        other = files.new_spool()
        other.write(b"bye")
        other.close()
        self.assertEqual(os.listdir(files.tmp_dir), [])
        for bad in ("../" * 10 + "etc/passwd", "g" * 64, "A" * 64, "0" * 63):
            with self.assertRaises(ValueError):
                files.path_for(bad)


class MediaStoreTests(unittest.TestCase):
    """The metadata store on a real SQLite file."""

    async def store(self):
        d = self.mktemp()
        os.makedirs(d)
        store = await open_store(database_for_test(self, os.path.join(d, "fedserver.db")), reactor)
        self.addCleanup(store.close)
        return store.media

    async def test_pending_upload_rules(self):
        """A created id takes content once, from its creator, before it expires; the
        per-user pending cap holds; the quota counts every upload of the user."""
        media = await self.store()
        placed = []
        await media.create_pending("m1", "@a:x", 1000, 5000, 2)
        await media.create_pending("m2", "@a:x", 1000, 5000, 2)
        with self.assertRaises(QuotaExceeded):
            await media.create_pending("m3", "@a:x", 1000, 5000, 2)

        def store(media_id, user, now, *, quota=None, new=False):
            return media.store_local_content(media_id, user, content_type="text/plain", upload_name=None,
                                             media_length=10, sha256="a" * 64, now_ms=now, new=new, quota=quota,
                                             place_file=lambda: placed.append(media_id))

        with self.assertRaises(MediaNotOwned):
            await store("m1", "@b:x", 2000)
        await store("m1", "@a:x", 2000)
        with self.assertRaises(MediaAlreadyUploaded):
            await store("m1", "@a:x", 2000)
        with self.assertRaises(MediaNotFound):
            await store("m2", "@a:x", 6000)  # expired
        with self.assertRaises(QuotaExceeded):
            await store("n1", "@a:x", 2000, quota=15, new=True)
        self.assertEqual(placed, ["m1"])
        self.assertEqual(await media.user_usage("@a:x"), 10)

    async def test_purge_keeps_shared_files(self):
        """Purging a remote media deletes its file only if no other media or thumbnail uses
        the same content."""
        media = await self.store()
        deleted = []
        await media.store_local_content("loc", "@a:x", content_type="image/png", upload_name=None, media_length=5,
                                        sha256="b" * 64, now_ms=1, new=True, quota=None, place_file=lambda: None)
        for mid, sha in (("r1", "b" * 64), ("r2", "c" * 64)):
            await media.store_remote(RemoteMedia("other", mid, 1, "image/png", None, 5, sha, 1), lambda: None)
        await media.store_thumbnail("other", "r2", 32, 32, "crop", False, Thumbnail("image/png", 3, "d" * 64), 1,
                                    lambda: None)
        self.assertEqual(await media.purge_remote(100, deleted.append), (2, 8))
        self.assertEqual(sorted(deleted), ["c" * 64, "d" * 64])
        self.assertIsNone(await media.get_remote("other", "r1"))
        self.assertIsNotNone(await media.get_local("loc"))


