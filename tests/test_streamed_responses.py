"""Answers written as they are produced (fedserver.streamed.StreamedJSON through
fedserver.http.streamed_responses), over real HTTP on loopback."""

from __future__ import annotations

import json

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.server import Site

from fedserver.errors import forbidden
from fedserver.http.resource import JsonResource, build_tree
from fedserver.http.streamed_responses import _Pacer
from fedserver.streamed import StreamedJSON


def _chunks(*lists, fail_after=None, error=None):
    async def produce():
        for i, items in enumerate(lists):
            if fail_after is not None and i == fail_after:
                raise error or RuntimeError("the store went away")
            await defer.succeed(None)
            yield items
        if fail_after is not None and fail_after >= len(lists):
            raise error or RuntimeError("the store went away")

    return produce


class StreamedAnswerTests(TestCase):
    def setUp(self):
        self.routes = JsonResource()
        port = reactor.listenTCP(0, Site(build_tree({"/t": self.routes})), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}/t"

    def route(self, path, answer):
        self.routes.add_route("GET", path, lambda request: answer())

    async def get(self, path):
        from twisted.web.client import HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        resp = await treq.get(self.base + path, pool=pool)
        return resp

    async def test_members_and_arrays_in_sorted_order(self):
        """Members and chunked arrays come out as one JSON object, keys sorted (so
        ``auth_chain`` before ``state``), chunks concatenated in order, empty chunks
        skipped; the body is sent chunked (no Content-Length)."""
        self.route("/a", lambda: StreamedJSON(
            {"origin": "a.example", "event": {"k": 1}},
            {"state": _chunks([1, 2], [], [3]), "auth_chain": _chunks([{"b": 2, "a": 1}]), "empty": _chunks()},
        ))
        resp = await self.get("/a")
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        self.assertIsNone(resp.headers.getRawHeaders(b"Content-Length"))
        body = await resp.content()
        self.assertEqual(
            body, b'{"auth_chain":[{"a":1,"b":2}],"empty":[],"event":{"k":1},"origin":"a.example","state":[1,2,3]}'
        )

    async def test_error_before_anything_is_written_is_a_matrix_error(self):
        """A producer failing on its first chunk: nothing was written, so the request gets
        the error's own status and Matrix body (403 here), or 500 M_UNKNOWN for a bug."""
        self.route("/forbidden", lambda: StreamedJSON({}, {"state": _chunks([1], fail_after=0, error=forbidden("no"))}))
        resp = await self.get("/forbidden")
        self.assertEqual(resp.code, 403)
        self.assertEqual(json.loads(await resp.content())["errcode"], "M_FORBIDDEN")
        self.route("/bug", lambda: StreamedJSON({}, {"state": _chunks([1], fail_after=0)}))
        resp = await self.get("/bug")
        self.assertEqual(resp.code, 500)
        self.assertEqual(json.loads(await resp.content())["errcode"], "M_UNKNOWN")
        self.flushLoggedErrors(RuntimeError)

    async def test_error_after_the_status_cuts_the_connection(self):
        """A producer failing once chunks went out: the connection is cut, so the
        receiver cannot mistake the part it got for a whole answer."""
        self.route("/cut", lambda: StreamedJSON({"origin": "a"}, {"state": _chunks([1], [2], fail_after=2)}))
        with self.assertRaises(Exception) as cm:
            # Either the head never got out whole, or the body is cut short.
            resp = await self.get("/cut")
            body = await resp.content()
            json.loads(body)  # reached only if the body came whole: it must not
        # A connection-level failure, not a well-terminated body that fails to parse.
        self.assertIsInstance(cm.exception, (ResponseFailed, ResponseNeverReceived))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_collect_gives_the_whole_object(self):
        """``collect`` reads every array (the v1 send_join answer is not streamed)."""
        value = StreamedJSON({"origin": "a"}, {"state": _chunks([1], [2, 3])})
        self.assertEqual(await value.collect(), {"origin": "a", "state": [1, 2, 3]})
        with self.assertRaises(ValueError):
            StreamedJSON({"state": []}, {"state": _chunks()})


class PacerTests(TestCase):
    def test_paused_waits_until_resumed_or_stopped(self):
        """While the transport has paused the producer, the writer waits; resuming (or
        the connection going away) lets it go on."""
        pacer = _Pacer()
        d = defer.ensureDeferred(pacer.wait())
        self.assertIsNone(self.successResultOf(d))
        pacer.pauseProducing()
        d = defer.ensureDeferred(pacer.wait())
        self.assertNoResult(d)
        pacer.resumeProducing()
        self.successResultOf(d)
        pacer.pauseProducing()
        d = defer.ensureDeferred(pacer.wait())
        pacer.stopProducing()
        self.successResultOf(d)
        self.assertTrue(pacer.stopped)
        pacer.pauseProducing()  # after stop: never paused again
        self.successResultOf(defer.ensureDeferred(pacer.wait()))
