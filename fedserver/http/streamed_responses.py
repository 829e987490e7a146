"""Writing a :class:`fedserver.streamed.StreamedJSON` answer as it is produced (chunked
transfer encoding), paced by the connection: a slow reader pauses the producer instead of
the answer piling up in memory."""

from __future__ import annotations

from typing import Any, Optional

import canonicaljson
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from fedserver.streamed import StreamedJSON

log = Logger()


@implementer(IPushProducer)
class _Pacer:
    """Registered on the request: the transport pauses it when its buffer is full,
    resumes it once drained, and stops it when the connection is lost."""

    def __init__(self) -> None:
        self._paused: Optional[defer.Deferred[None]] = None
        self.stopped = False

    def pauseProducing(self) -> None:
        if self._paused is None and not self.stopped:
            self._paused = defer.Deferred()

    def resumeProducing(self) -> None:
        d, self._paused = self._paused, None
        if d is not None:
            d.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()

    async def wait(self) -> None:
        if self._paused is not None:
            await self._paused


def _encode(value: Any) -> bytes:
    return canonicaljson.encode_canonical_json(value)


def _gone(request: Any) -> bool:
    return bool(getattr(request, "_disconnected", False) or getattr(request, "finished", False))


async def write_streamed(request: Any, code: int, value: StreamedJSON) -> None:
    """Answer ``request`` with ``value``: members in sorted order, each array written a
    chunk at a time as its producer yields it.

    Nothing is written until the first chunk of the first array is produced (or the
    object is complete): an error before that propagates (the caller answers it as any
    handler error). An error after the status has gone out is logged and the connection
    is cut, so the receiver sees an incomplete body, never a well-formed wrong answer.
    """
    pacer = _Pacer()
    started = False
    pending: list[bytes] = [b"{"]

    def flush() -> None:
        nonlocal started, pending
        if not started:
            request.setResponseCode(code)
            request.setHeader(b"Content-Type", b"application/json")
            request.registerProducer(pacer, True)
            started = True
        request.write(b"".join(pending))
        pending = []

    try:
        for i, key in enumerate(sorted(set(value.members) | set(value.arrays))):
            pending.append((b"," if i else b"") + _encode(key) + b":")
            if key in value.members:
                pending.append(_encode(value.members[key]))
                continue
            pending.append(b"[")
            first = True
            async for chunk in value.arrays[key]():
                if pacer.stopped or _gone(request):
                    return  # the receiver went away: nothing more to produce
                if not chunk:
                    continue
                body = b",".join([_encode(item) for item in chunk])
                pending.append(body if first else b"," + body)
                first = False
                flush()
                await pacer.wait()
            pending.append(b"]")
        pending.append(b"}")
        if pacer.stopped or _gone(request):
            return
        flush()
    except Exception:
        if not started:
            raise
        log.failure("Producing a streamed answer to {method} {uri} failed; the connection is cut",
                    method=getattr(request, "method", b"?"), uri=getattr(request, "uri", b"?"))
        request.unregisterProducer()
        transport = getattr(getattr(request, "channel", None), "transport", None)
        if transport is not None:
            transport.abortConnection()
        return
    request.unregisterProducer()
    request.finish()
