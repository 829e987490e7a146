"""Media: byte ranges on downloads (what browsers ask for to seek in audio and video), the purge
of cached remote media by age, and files left by failed writes reclaimed."""

from __future__ import annotations

import json
import os
import time

from twisted.trial.unittest import TestCase

from fedserver.http.media_responses import Unsatisfiable, parse_byte_range
from fedserver.storage.operations.media_store import RemoteMedia
from tests.test_media_support import MediaServerTestCase


class ParseRangeTests(TestCase):
    def test_ranges(self):
        """bytes=a-b, a- and -n give inclusive offsets clipped to the size; anything that
        does not parse, another unit, or several ranges give None (the whole content);
        a start at or past the end, or an empty suffix, is unsatisfiable."""
        size = 100
        cases = {
            b"bytes=0-9": (0, 9), b"bytes=10-": (10, 99), b"bytes=-5": (95, 99), b"bytes=90-500": (90, 99),
            b"bytes=-500": (0, 99), b"Bytes = 0-0": (0, 0), b"bytes=99-99": (99, 99),
        }
        for header, expected in cases.items():
            self.assertEqual(parse_byte_range(header, size), expected, header)
        for header in (None, b"", b"bytes", b"bytes=", b"items=0-9", b"bytes=a-b", b"bytes=9-3", b"bytes=0-1,5-9",
                       b"bytes=--1", b"bytes=1.5-3", "bytes=\u00e9-".encode("utf-8"), b"bytes=0-9" + b" " * 2000):
            self.assertIsNone(parse_byte_range(header, size), header)
        for header in (b"bytes=100-", b"bytes=500-600", b"bytes=-0"):
            with self.assertRaises(Unsatisfiable):
                parse_byte_range(header, size)
        with self.assertRaises(Unsatisfiable):
            parse_byte_range(b"bytes=0-", 0)


class RangeDownloadTests(MediaServerTestCase):
    async def test_range_requests(self):
        """A download answers 200 with Accept-Ranges: bytes and a strong ETag; a Range
        gets 206 with Content-Range and exactly those bytes (from the middle, open-ended,
        a suffix); a range past the end gets 416 with Content-Range bytes */size and a
        Matrix error; several ranges, or an If-Range that is not the ETag, get the whole
        content (200); an If-Range equal to the ETag gets the range; HEAD ignores Range (200, no
        Content-Range)."""
        await self.start()
        _, token = await self.user("alice")
        data = bytes(range(256)) * 40  # 10240 bytes
        uri = await self.upload(token, data, "video/mp4", filename="clip.mp4")
        path = "/_matrix/client/v1/media/download/" + uri[len("mxc://"):]
        resp, body = await self.request("GET", path, token)
        self.assertEqual((resp.code, body), (200, data))
        self.assertEqual(self.header(resp, "Accept-Ranges"), "bytes")
        etag = self.header(resp, "ETag")
        self.assertRegex(etag, r'^"[0-9a-f]{64}"$')
        for rng, first, last in (("bytes=100-199", 100, 199), ("bytes=10000-", 10000, 10239), ("bytes=-40", 10200, 10239)):
            resp, body = await self.request("GET", path, token, headers={"Range": rng})
            self.assertEqual(resp.code, 206, rng)
            self.assertEqual(body, data[first:last + 1], rng)
            self.assertEqual(self.header(resp, "Content-Range"), f"bytes {first}-{last}/{len(data)}")
            self.assertEqual(resp.length, last - first + 1)
            self.assertEqual(self.header(resp, "Content-Type"), "video/mp4")
        resp, body = await self.request("GET", path, token, headers={"Range": "bytes=10240-"})
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (416, "M_UNKNOWN"))
        self.assertEqual(self.header(resp, "Content-Range"), f"bytes */{len(data)}")
        resp, body = await self.request("GET", path, token, headers={"Range": "bytes=0-1,5-9"})
        self.assertEqual((resp.code, body), (200, data))
        resp, body = await self.request("GET", path, token, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        self.assertEqual((resp.code, body), (200, data))
        resp, body = await self.request("GET", path, token, headers={"Range": "bytes=0-9", "If-Range": etag})
        self.assertEqual((resp.code, body), (206, data[:10]))
        resp, body = await self.request("HEAD", path, token, headers={"Range": "bytes=0-9"})
        self.assertEqual((resp.code, self.header(resp, "Content-Range")), (200, None))


class UpkeepTests(MediaServerTestCase):
    async def test_purge_by_age_and_orphans(self):
        """With remote_media_lifetime set, an upkeep run drops cached remote media not
        accessed within it (and its file) but keeps recent ones; a file linked by a write
        that then failed (no row refers to it) is deleted once old enough, while files that
        rows refer to stay and still download."""
        svc = await self.start(remote_media_lifetime=86400)
        _, token = await self.user("alice")
        files, media = svc.media_files, svc.store.media
        now_ms = int(time.time() * 1000)

        async def cache_remote(media_id: str, content: bytes, last_access_ts: int) -> str:
            spool = files.write_spool(content)
            await media.store_remote(
                RemoteMedia("remote.test", media_id, last_access_ts, "text/plain", None, len(content), spool.sha256,
                            last_access_ts),
                lambda: files.place(spool),
            )
            spool.discard()
            return spool.sha256

        old = await cache_remote("old", b"old remote bytes", now_ms - 2 * 86400 * 1000)
        fresh = await cache_remote("fresh", b"fresh remote bytes", now_ms)

        # A write that fails after its file was linked: the row is rolled back, the file stays.
        spool = files.write_spool(b"orphan bytes")

        def place_then_fail():
            files.place(spool)
            raise RuntimeError("the commit failed")

        with self.assertRaises(RuntimeError):
            await media.store_remote(
                RemoteMedia("remote.test", "lost", now_ms, "text/plain", None, 12, spool.sha256, now_ms), place_then_fail
            )
        spool.discard()
        orphan = spool.sha256
        self.assertTrue(files.exists(orphan))
        uri = await self.upload(token, b"kept local bytes", "text/plain")
        long_ago = time.time() - 2 * 3600
        for sha in (old, fresh, orphan):
            os.utime(files.path_for(sha), (long_ago, long_ago))
        for path in self.media_files():
            os.utime(path, (long_ago, long_ago))

        result = await svc.media_upkeep.run()
        self.assertEqual(result["purged"], 1)
        self.assertEqual(result["orphans"], 1)
        self.assertFalse(files.exists(old))
        self.assertFalse(files.exists(orphan))
        self.assertTrue(files.exists(fresh))
        self.assertEqual([r[1] for r in self.media_rows("remote_media")], ["fresh"])
        resp, body = await self.request("GET", "/_matrix/client/v1/media/download/" + uri[len("mxc://"):], token)
        self.assertEqual((resp.code, body), (200, b"kept local bytes"))
        # A young unreferenced file is left alone (a write may be under way).
        young = files.write_spool(b"young")
        files.place(young)
        young.discard()
        self.assertEqual((await svc.media_upkeep.run())["orphans"], 0)
        self.assertTrue(files.exists(young.sha256))

    async def test_off_by_default(self):
        """Without remote_media_lifetime, cached remote media is never purged by age."""
        svc = await self.start()
        spool = svc.media_files.write_spool(b"remote")
        await svc.store.media.store_remote(
            RemoteMedia("remote.test", "m", 1, "text/plain", None, 6, spool.sha256, 1), lambda: svc.media_files.place(spool)
        )
        spool.discard()
        self.assertEqual((await svc.media_upkeep.run())["purged"], 0)
        self.assertEqual(len(self.media_rows("remote_media")), 1)
