"""Benchmark: media download throughput and thumbnails, fedserver and Synapse in the same run.

Run as ``python bench/media.py [--size-mb 10] [--downloads 10] [--images 20]`` from the
repository root with ``FEDSERVER_SYNAPSE_PYTHON`` naming a Python that has matrix-synapse
(without it only fedserver is measured, and the table says so).

Both servers run as operators run them (child processes on loopback, tests/interop/peers.py).
On each, one user:

1. uploads a ``--size-mb`` MB file and downloads it ``--downloads`` times through the
   authenticated endpoint (``/_matrix/client/v1/media/download``): MB/s, median of the runs;
2. uploads ``--images`` different 2000x1500 JPEGs and asks for one 320x240 thumbnail of
   each right after its upload (upload + first thumbnail, per second; Synapse makes its
   thumbnails at upload, fedserver on the first request: this counts both ways the same);
3. asks again for those thumbnails (cached thumbnails served per second).

Only figures measured in this run are printed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.interop.peers import Fedserver, PeerUnavailable, Synapse  # noqa: E402


def request(method: str, url: str, token: str, data: bytes | None = None, ctype: str | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if ctype:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.read()


def jpeg(seed: int) -> bytes:
    from PIL import Image

    im = Image.effect_mandelbrot((2000, 1500), (-2.0 + seed * 0.01, -1.2, 1.0, 1.2), 60).convert("RGB")
    out = io.BytesIO()
    im.save(out, "JPEG", quality=85)
    return out.getvalue()


def measure(name: str, client_url: str, token: str, blob: bytes, images: list[bytes], downloads: int) -> dict:
    def upload(data: bytes, ctype: str) -> tuple[str, str]:
        uri = json.loads(request("POST", client_url + "/_matrix/media/v3/upload", token, data, ctype))["content_uri"]
        server, media_id = uri[len("mxc://"):].split("/")
        return quote(server), media_id

    server, media_id = upload(blob, "application/octet-stream")
    url = f"{client_url}/_matrix/client/v1/media/download/{server}/{media_id}"
    rates = []
    for _ in range(downloads):
        start = time.perf_counter()
        got = request("GET", url, token)
        elapsed = time.perf_counter() - start
        assert got == blob, f"{name}: download differs"
        rates.append(len(blob) / elapsed / 1e6)
    thumbs = []
    start = time.perf_counter()
    for data in images:
        s, m = upload(data, "image/jpeg")
        turl = f"{client_url}/_matrix/client/v1/media/thumbnail/{s}/{m}?width=320&height=240&method=scale"
        request("GET", turl, token)
        thumbs.append(turl)
    fresh = len(images) / (time.perf_counter() - start)
    start = time.perf_counter()
    for turl in thumbs:
        request("GET", turl, token)
    cached = len(thumbs) / (time.perf_counter() - start)
    return {"download": statistics.median(rates), "fresh": fresh, "cached": cached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=10)
    parser.add_argument("--downloads", type=int, default=10)
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="fedserver-bench-media-")
    blob = os.urandom(int(args.size_mb * 1024 * 1024))
    images = [jpeg(i) for i in range(args.images)]
    results = {}
    fedserver = Fedserver(os.path.join(base, "fedserver"), extra_config={"log_level": "warn"})
    synapse = None
    try:
        fedserver.start()
        user = fedserver.admin_user("bench")
        results["fedserver"] = measure("fedserver", fedserver.client_url, fedserver.tokens[user], blob, images,
                                       args.downloads)
        try:
            synapse = Synapse(os.path.join(base, "synapse"))
        except PeerUnavailable as e:
            print(f"Synapse not measured: {e}")
        if synapse is not None:
            synapse.start()
            suser = synapse.register("bench")
            results["Synapse"] = measure("Synapse", synapse.client_url, synapse.tokens[suser], blob, images,
                                         args.downloads)
    finally:
        fedserver.stop()
        if synapse is not None:
            synapse.stop()
    print(f"\n{args.size_mb:g} MB download (median of {args.downloads}), {args.images} JPEGs of 2000x1500, "
          "thumbnail 320x240 scale")
    print(f"{'server':<10} {'download MB/s':>14} {'upload+thumbnail /s':>20} {'cached thumbnail /s':>20}")
    for name, r in results.items():
        print(f"{name:<10} {r['download']:>14.0f} {r['fresh']:>20.1f} {r['cached']:>20.0f}")


if __name__ == "__main__":
    main()
