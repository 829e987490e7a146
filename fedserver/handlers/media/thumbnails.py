"""Thumbnails (client-server API "Thumbnails"): Pillow, ``scale`` and ``crop``, made on demand and cached.

:func:`make_thumbnail` is plain code over a file (no Twisted), run in a thread;
:class:`Thumbnailer` picks the size, caches results as content-addressed files with a
row per (media, size, method, animated), and limits how many images are decoded at once.

Untrusted images are decoded with care: only the formats in :data:`DECODED_FORMATS` are
opened (no PostScript, PDF or other format a decoder shells out for), the size announced
in the header is checked against ``max_image_pixels`` before anything is decoded
(decompression bombs), and any decoder error means "no thumbnail" (400), never a 500.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer, threads
from twisted.logger import Logger

from fedserver.errors import MatrixError, M_TOO_LARGE, M_UNKNOWN, invalid_param
from fedserver.handlers.media.common import ServableMedia
from fedserver.handlers.media.files import MediaFiles
from fedserver.storage.operations.media_store import Thumbnail

log = Logger()

#: Spec: "Servers SHOULD produce thumbnails with the following dimensions and methods".
STANDARD_SIZES = ((32, 32, "crop"), (96, 96, "crop"), (320, 240, "scale"), (640, 480, "scale"), (800, 600, "scale"))
METHODS = ("crop", "scale")
#: Requests beyond the standard sizes are rounded up to a multiple of this, up to
#: :data:`MAX_DIMENSION`, so that few sizes are ever made of one image.
SIZE_STEP = 400
MAX_DIMENSION = 2400
#: The only formats decoded.
DECODED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
#: Formats an original may be served in as its own "thumbnail" (spec: when the content is
#: smaller than asked, return the original), with their content types.
SERVABLE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
#: Most frames of an animated thumbnail.
MAX_FRAMES = 100
JPEG_QUALITY = 80


class ThumbnailError(Exception):
    """The content cannot be thumbnailed (not an image we decode, or corrupt)."""


class ImageTooLarge(ThumbnailError):
    """The image has more pixels than the limit."""


@dataclass(frozen=True, slots=True)
class Target:
    """The size and method a thumbnail is made (and cached) for."""

    width: int
    height: int
    method: str


def choose_target(width: int, height: int, method: str) -> Target:
    """The thumbnail size to make for a request: the smallest standard size of the method
    at least as large as asked (spec: never smaller than requested), else the request
    rounded up to a multiple of :data:`SIZE_STEP` (at most :data:`MAX_DIMENSION`)."""
    for w, h, m in STANDARD_SIZES:
        if m == method and w >= width and h >= height:
            return Target(w, h, m)

    def up(n: int) -> int:
        return min(MAX_DIMENSION, SIZE_STEP * math.ceil(n / SIZE_STEP))

    return Target(up(width), up(height), method)


def scaled_size(size: tuple[int, int], target: Target) -> tuple[int, int]:
    """The size the whole image is resized to before any crop (never larger than it is:
    spec "Servers MUST NOT upscale thumbnails")."""
    w, h = size
    if target.method == "scale":
        ratio = min(target.width / w, target.height / h)
    else:
        ratio = max(target.width / w, target.height / h)
    if ratio >= 1:
        return w, h
    return max(1, math.ceil(w * ratio - 1e-9)), max(1, math.ceil(h * ratio - 1e-9))


def output_size(size: tuple[int, int], target: Target) -> tuple[int, int]:
    """The size of the thumbnail made of an image of ``size``."""
    w, h = scaled_size(size, target)
    if target.method == "crop":
        return min(w, target.width), min(h, target.height)
    return w, h


def _open(path: str, max_pixels: int) -> Any:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path, formats=DECODED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge("image too large") from None
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError, ValueError...
        raise ThumbnailError(f"not an image we can thumbnail: {type(e).__name__}") from None
    w, h = im.size
    if w < 1 or h < 1:
        im.close()
        raise ThumbnailError("empty image")
    if w * h > max_pixels:
        im.close()
        raise ImageTooLarge(f"{w}x{h} is more than {max_pixels} pixels")
    return im


def _fit(frame: Any, target: Target) -> Any:
    from PIL import Image

    size = scaled_size(frame.size, target)
    if size != frame.size:
        frame = frame.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if target.method == "crop":
        w, h = frame.size
        cw, ch = min(w, target.width), min(h, target.height)
        if (cw, ch) != (w, h):
            left, top = (w - cw) // 2, (h - ch) // 2
            frame = frame.crop((left, top, left + cw, top + ch))
    return frame


def make_thumbnail(path: str, target: Target, animated: bool, max_pixels: int) -> Optional[tuple[bytes, str]]:
    """Make a thumbnail of the image at ``path`` (blocking: run it in a thread).

    :param animated: the client's ``animated=true``: an animated source gives an animated
        WebP; otherwise the thumbnail is always a still image (spec: "When false, the
        server MUST NOT return an animated thumbnail").
    :returns: ``(bytes, content type)``, or ``None`` when the original itself should be
        served (it is no larger than the target, in a format fit to serve, and not an
        animation that must not be).
    :raises ImageTooLarge: if the image has more than ``max_pixels`` pixels.
    :raises ThumbnailError: if it is not an image in :data:`DECODED_FORMATS` or is corrupt.
    """
    from PIL import Image, ImageOps, ImageSequence

    im = _open(path, max_pixels)
    try:
        is_animated = bool(getattr(im, "is_animated", False))
        want_animation = animated and is_animated
        if output_size(im.size, target) == im.size and im.format in SERVABLE_FORMATS and (want_animation or not is_animated):
            if not _orientation_needed(im):
                return None
        try:
            if want_animation:
                frames, durations = [], []
                budget = max_pixels * 4
                for i, frame in enumerate(ImageSequence.Iterator(im)):
                    if i >= MAX_FRAMES or budget <= 0:
                        break
                    budget -= frame.size[0] * frame.size[1]
                    frames.append(_fit(frame.convert("RGBA"), target))
                    durations.append(int(frame.info.get("duration", 100)) or 100)
                out = io.BytesIO()
                frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=durations,
                               loop=0, quality=JPEG_QUALITY)
                return out.getvalue(), "image/webp"
            im.seek(0)
            if im.format == "JPEG":
                # Let the JPEG decoder scale down by 1/2, 1/4 or 1/8 while decoding.
                side = max(target.width, target.height)
                im.draft("RGB", (side, side))
            frame = ImageOps.exif_transpose(im)
            frame = _fit(frame, target)
            has_alpha = frame.mode in ("RGBA", "LA", "PA") or (frame.mode == "P" and "transparency" in frame.info)
            out = io.BytesIO()
            if has_alpha:
                frame.convert("RGBA").save(out, "PNG", optimize=False)
                return out.getvalue(), "image/png"
            frame.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
            return out.getvalue(), "image/jpeg"
        except (ImageTooLarge, ThumbnailError):
            raise
        except Exception as e:  # truncated or corrupt data found while decoding
            raise ThumbnailError(f"cannot decode the image: {type(e).__name__}: {e}"[:200]) from None
    finally:
        im.close()


def _orientation_needed(im: Any) -> bool:
    try:
        return int(im.getexif().get(0x0112, 1)) not in (0, 1)
    except Exception:
        return False


def detected_content_type(path: str, max_pixels: int) -> str:
    """The content type of an image file by what Pillow finds in it (for serving an
    original as its own thumbnail; never the uploader's claim).

    :raises ThumbnailError: if it is not a servable image.
    """
    im = _open(path, max_pixels)
    try:
        ctype = SERVABLE_FORMATS.get(im.format or "")
    finally:
        im.close()
    if ctype is None:
        raise ThumbnailError("not a servable image")
    return ctype


def cannot_thumbnail() -> MatrixError:
    """Spec: 400 "the server cannot thumbnail the content"."""
    return MatrixError(400, M_UNKNOWN, "Cannot generate thumbnails for the requested content")


class Thumbnailer:
    """Serves thumbnails of media: cached, or made in a thread (at most ``concurrency`` at
    once) and cached.

    :param store: has ``media`` (:class:`fedserver.storage.operations.media_store.MediaStore`).
    :param files: the :class:`MediaFiles`.
    :param reactor: clock and thread pool.
    :param server_name: our server name (local media's thumbnails are keyed by it).
    :param max_image_pixels: the ``max_image_pixels`` option.
    :param concurrency: images decoded at once.
    """

    def __init__(
        self, store: Any, files: MediaFiles, reactor: Any, server_name: str, *, max_image_pixels: int, concurrency: int = 2
    ) -> None:
        self._store = store
        self._files = files
        self._reactor = reactor
        self._server_name = server_name
        self._max_pixels = max_image_pixels
        self._limit = defer.DeferredSemaphore(concurrency)
        self._in_flight: dict[tuple, list[defer.Deferred]] = {}

    def _in_thread(self, f: Any, *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    @staticmethod
    def check_request(width: int, height: int, method: str) -> None:
        """:raises MatrixError: 400 for sizes below 1 or an unknown method."""
        if width < 1 or height < 1:
            raise invalid_param("width", "width and height must be positive integers")
        if method not in METHODS:
            raise invalid_param("method", "method must be crop or scale")

    async def thumbnail(
        self, media: ServableMedia, width: int, height: int, method: str, animated: bool
    ) -> ServableMedia:
        """A thumbnail of ``media`` (from :class:`~fedserver.handlers.media.download.MediaDownloader`).

        :returns: the thumbnail file to serve (``upload_name`` ``thumbnail.<ext>``).
        :raises MatrixError: 400 (not an image, or corrupt), 413 ``M_TOO_LARGE`` (our
            media too large to thumbnail) or 502 ``M_TOO_LARGE`` (a remote one).
        """
        self.check_request(width, height, method)
        target = choose_target(width, height, method)
        cached = await self._store.media.get_thumbnail(
            media.server_name, media.media_id, target.width, target.height, target.method, animated
        )
        if cached is not None and self._files.exists(cached.sha256):
            return self._servable(media, cached)
        key = (media.server_name, media.media_id, target, animated)
        waiting = self._in_flight.get(key)
        if waiting is not None:
            d: defer.Deferred = defer.Deferred()
            waiting.append(d)
            return await d
        self._in_flight[key] = []
        try:
            result = await self._make(media, target, animated)
        except BaseException as e:
            for d in self._in_flight.pop(key, []):
                d.errback(e)
            raise
        for d in self._in_flight.pop(key, []):
            d.callback(result)
        return result

    async def _make(self, media: ServableMedia, target: Target, animated: bool) -> ServableMedia:
        await self._limit.acquire()
        try:
            made = await self._in_thread(make_thumbnail, media.path, target, animated, self._max_pixels)
            if made is None:
                ctype = await self._in_thread(detected_content_type, media.path, self._max_pixels)
                return ServableMedia(media.path, ctype, _thumbnail_name(ctype), media.length, media.sha256,
                                     media.server_name, media.media_id)
            data, ctype = made
            spool = await self._in_thread(self._files.write_spool, data)
        except ImageTooLarge:
            local = media.server_name == self._server_name
            raise MatrixError(413 if local else 502, M_TOO_LARGE, "Content is too large to thumbnail") from None
        except ThumbnailError as e:
            log.info("No thumbnail of {server}/{media_id}: {e}", server=media.server_name, media_id=media.media_id, e=e)
            raise cannot_thumbnail() from None
        finally:
            self._limit.release()
        try:
            thumb = Thumbnail(ctype, len(data), spool.sha256)
            await self._store.media.store_thumbnail(
                media.server_name, media.media_id, target.width, target.height, target.method, animated, thumb,
                int(self._reactor.seconds() * 1000), lambda: self._files.place(spool),
            )
        finally:
            spool.discard()
        return self._servable(media, thumb)

    def _servable(self, media: ServableMedia, thumb: Thumbnail) -> ServableMedia:
        return ServableMedia(
            self._files.path_for(thumb.sha256), thumb.content_type, _thumbnail_name(thumb.content_type),
            thumb.media_length, thumb.sha256, media.server_name, media.media_id,
        )


def _thumbnail_name(content_type: str) -> str:
    return "thumbnail." + {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}.get(
        content_type, "bin"
    )


__all__ = [
    "DECODED_FORMATS",
    "STANDARD_SIZES",
    "ImageTooLarge",
    "Target",
    "ThumbnailError",
    "Thumbnailer",
    "choose_target",
    "make_thumbnail",
    "output_size",
    "scaled_size",
]

