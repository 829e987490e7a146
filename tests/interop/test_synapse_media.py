"""Media with a real Synapse (authenticated media, spec v1.11), both ways: an image uploaded on
one server is downloaded, and thumbnailed, by a user of the other through their own
server's ``/_matrix/client/v1/media`` endpoints (so each server fetches from the other's
``/_matrix/federation/v1/media/download``); and avatars set to such images.

Both servers run as child processes (tests/interop/peers.py), started once for this module.
Skipped without ``FEDSERVER_SYNAPSE_PYTHON`` unless ``FEDSERVER_INTEROP=require``.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from urllib.parse import quote

from twisted.trial.unittest import TestCase

from tests.interop.peers import Fedserver, PeerPair, Synapse

_pair = PeerPair("interop-media-")


def http_bytes(method: str, url: str, token: str, data: bytes | None = None,
               content_type: str | None = None, timeout: float = 60) -> tuple[int, dict, bytes]:
    """One blocking request with a binary body; :returns: ``(status, headers, body)``."""
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def png(width: int, height: int, color=(10, 120, 200)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(out, "PNG")
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


def mxc_parts(uri: str) -> tuple[str, str]:
    server, media_id = uri[len("mxc://"):].split("/")
    return server, media_id


class SynapseMediaTests(TestCase):
    """fedserver and Synapse exchanging media over loopback TLS."""

    def setUp(self):
        self.synapse, self.fedserver = _pair.get()
        for peer in (self.synapse, self.fedserver):
            if not peer.running():
                raise AssertionError(f"{type(peer).__name__} is not running:\n{peer.log_tail()}")

    def upload(self, server: Synapse | Fedserver, token: str, data: bytes, ctype: str, name: str) -> str:
        status, _h, body = http_bytes("POST", f"{server.client_url}/_matrix/media/v3/upload?filename={quote(name)}",
                                      token, data, ctype)
        self.assertEqual(status, 200, body)
        return json.loads(body)["content_uri"]

    def download(self, server: Synapse | Fedserver, token: str, uri: str, what: str = "download",
                 query: str = "") -> tuple[int, dict, bytes]:
        origin, media_id = mxc_parts(uri)
        return http_bytes("GET", f"{server.client_url}/_matrix/client/v1/media/{what}/{quote(origin)}/{media_id}{query}",
                          token)

    def test_fedserver_image_through_synapse(self):
        """An image uploaded on fedserver is downloaded by a Synapse user through Synapse's
        authenticated media (same bytes, type and file name), and Synapse makes a
        thumbnail of it."""
        alice = self.fedserver.user("media_alice")
        data = png(800, 600)
        uri = self.upload(self.fedserver, self.fedserver.tokens[alice], data, "image/png", "sunrise.png")
        bob = self.synapse.register("media_bob")
        token = self.synapse.tokens[bob]
        status, headers, body = self.download(self.synapse, token, uri)
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(body, data)
        self.assertEqual(headers["content-type"], "image/png")
        self.assertIn("sunrise.png", headers.get("content-disposition", ""))
        status, headers, body = self.download(self.synapse, token, uri, "thumbnail", "?width=96&height=96&method=crop")
        self.assertEqual(status, 200, body[:300])
        self.assertTrue(headers["content-type"].startswith("image/"))
        self.assertEqual(size_of(body), (96, 96))
        # Synapse's thumbnail through our own federation thumbnail endpoint too.
        status, _h, body = self.download(self.synapse, token, uri, "thumbnail", "?width=320&height=240&method=scale")
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(size_of(body), (320, 240))

    def test_synapse_image_through_fedserver(self):
        """An image uploaded on Synapse is downloaded by a fedserver user through our
        authenticated media (we fetch it from Synapse's federation endpoint, multipart),
        and we make a thumbnail of it."""
        carol = self.synapse.register("media_carol")
        data = png(640, 480)
        uri = self.upload(self.synapse, self.synapse.tokens[carol], data, "image/png", "synapse pic.png")
        dave = self.fedserver.user("media_dave")
        token = self.fedserver.tokens[dave]
        status, headers, body = self.download(self.fedserver, token, uri)
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(body, data)
        self.assertEqual(headers["content-type"], "image/png")
        self.assertIn("synapse pic.png", headers.get("content-disposition", ""))
        status, headers, body = self.download(self.fedserver, token, uri, "thumbnail", "?width=32&height=32&method=crop")
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(size_of(body), (32, 32))
        # Unknown media on Synapse is a 404 through us.
        origin, _ = mxc_parts(uri)
        status, _h, body = self.download(self.fedserver, token, f"mxc://{origin}/noSuchMedia")
        self.assertEqual((status, json.loads(body)["errcode"]), (404, "M_NOT_FOUND"))

    def test_avatars_both_ways(self):
        """A fedserver user's avatar (an mxc of ours) is seen in the profile through Synapse
        and downloadable there; a Synapse user's avatar likewise through fedserver."""
        erin = self.fedserver.user("media_erin")
        uri = self.upload(self.fedserver, self.fedserver.tokens[erin], png(96, 96), "image/png", "erin.png")
        self.fedserver.client("PUT", f"/_matrix/client/v3/profile/{quote(erin)}/avatar_url", {"avatar_url": uri},
                              as_user=erin)
        frank = self.synapse.register("media_frank")
        profile = self.synapse.client("GET", f"/_matrix/client/v3/profile/{quote(erin)}", as_user=frank)
        self.assertEqual(profile.get("avatar_url"), uri)
        status, _h, body = self.download(self.synapse, self.synapse.tokens[frank], uri, "thumbnail",
                                         "?width=32&height=32&method=crop")
        self.assertEqual((status, size_of(body)), (200, (32, 32)))

        suri = self.upload(self.synapse, self.synapse.tokens[frank], png(128, 128), "image/png", "frank.png")
        self.synapse.client("PUT", f"/_matrix/client/v3/profile/{quote(frank)}/avatar_url", {"avatar_url": suri},
                            as_user=frank)
        profile = self.fedserver.client("GET", f"/_matrix/client/v3/profile/{quote(frank)}", as_user=erin)
        self.assertEqual(profile.get("avatar_url"), suri)
        status, _h, body = self.download(self.fedserver, self.fedserver.tokens[erin], suri, "thumbnail",
                                         "?width=96&height=96&method=crop")
        self.assertEqual((status, size_of(body)), (200, (96, 96)))
