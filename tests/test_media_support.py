"""Helpers for the media tests: a whole server on loopback, users, images, raw HTTP."""

from __future__ import annotations

import io
import os
from typing import Any, Optional

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from fedserver.testing import connect_test_database, loopback_config, start_server


def png_bytes(width: int = 200, height: int = 100, color: Any = (200, 30, 30), mode: str = "RGB") -> bytes:
    """A PNG image of the given size."""
    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, "PNG")
    return out.getvalue()


def jpeg_bytes(width: int = 1200, height: int = 900) -> bytes:
    """A JPEG with some detail (a gradient)."""
    from PIL import Image

    im = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    out = io.BytesIO()
    im.save(out, "JPEG", quality=85)
    return out.getvalue()


def gif_animation(frames: int = 3, size: int = 120) -> bytes:
    """An animated GIF."""
    from PIL import Image

    images = [Image.new("RGB", (size, size), (i * 80 % 256, 0, 0)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


class RawResponse(Protocol):
    """Collects everything a server sends on one connection."""

    def __init__(self) -> None:
        self.data = b""
        self.closed: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.data)


async def raw_connect(port: int) -> RawResponse:
    """A raw TCP connection to 127.0.0.1:port (for bodies no HTTP client would send)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    proto = RawResponse()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    return proto


class MediaServerTestCase(unittest.TestCase):
    """Starts one fedserver (loopback, real listeners) per test, with ``options``."""

    options: dict[str, Any] = {}

    async def start(self, **options: Any) -> Any:
        directory = self.mktemp()
        merged = {"log_level": "warn", **self.options, **options}
        self.config = loopback_config(directory, **merged)
        self.svc = await start_server(self, self.config)
        self.client_port = self.svc.client_listener.port.getHost().port
        self.base = f"http://127.0.0.1:{self.client_port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)
        return self.svc

    async def user(self, localpart: str, admin: bool = False) -> tuple[str, str]:
        """Create a local user; :returns: ``(user_id, access token)``."""
        user_id, login = await self.svc.accounts.accounts.create_user(localpart, None, admin=admin)
        return user_id, login.access_token

    async def request(
        self, method: str, path: str, token: Optional[str] = None, data: Optional[bytes] = None,
        headers: Optional[dict] = None, params: Optional[dict] = None,
    ) -> tuple[Any, bytes]:
        """One request to the client listener; :returns: ``(response, body)``."""
        h = {k.encode(): [v.encode()] for k, v in (headers or {}).items()}
        if token is not None:
            h[b"Authorization"] = [f"Bearer {token}".encode()]
        resp = await self.http.request(method, self.base + path, headers=h, data=data, params=params)
        body = await resp.content()
        return resp, body

    async def upload(self, token: str, data: bytes, content_type: str = "image/png",
                     filename: Optional[str] = None) -> str:
        params = {"filename": filename} if filename is not None else None
        resp, body = await self.request("POST", "/_matrix/media/v3/upload", token, data,
                                        {"Content-Type": content_type}, params)
        self.assertEqual(resp.code, 200, body)
        import json

        return json.loads(body)["content_uri"]

    def media_rows(self, table: str = "local_media") -> list:
        conn = connect_test_database(self.config.database_path)
        try:
            return conn.execute(f"SELECT * FROM {table}").fetchall()
        finally:
            conn.close()

    def media_files(self) -> list[str]:
        out = []
        for d, _dirs, names in os.walk(self.config.media_directory):
            out.extend(os.path.join(d, n) for n in names)
        return out

    def tmp_files(self) -> list[str]:
        return os.listdir(os.path.join(self.config.media_directory, "tmp"))

    def header(self, resp: Any, name: str) -> Optional[str]:
        values = resp.headers.getRawHeaders(name)
        return values[0] if values else None


__all__ = ["MediaServerTestCase", "gif_animation", "image_size", "jpeg_bytes", "png_bytes", "raw_connect"]

