"""Tests for fedserver.http.resource: routing, JSON bodies, Matrix errors, body caps, CORS."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from fedserver.errors import MatrixError, forbidden, incompatible_room_version
from fedserver.http.resource import (
    JsonResource,
    MatrixSite,
    build_tree,
    query_int,
    query_string,
    query_strings,
    read_json_object,
)


def _make_app():
    """A small tree exercising every kind of handler."""
    res = JsonResource()
    res.add_route("GET", "/hello/{name}", lambda request, name: {"hello": name})
    res.add_route("PUT", "/echo/{txn}", lambda request, txn: {"txn": txn, "body": read_json_object(request)})
    res.add_route("GET", "/echo/{txn}", lambda request, txn: (201, {"got": txn}))
    res.add_route("GET", "/forbidden", lambda request: (_ for _ in ()).throw(forbidden("no")))
    res.add_route("GET", "/crash", lambda request: 1 / 0)
    res.add_route("GET", "/nan", lambda request: {"x": float("nan")})
    res.add_route("GET", "/raw", lambda request: b'{"pre":"encoded"}')
    res.add_route("GET", "/none", lambda request: None)
    res.add_route("GET", "", lambda request: {"root": True})

    async def coro(request):
        await defer.succeed(None)
        raise incompatible_room_version("9")

    res.add_route("GET", "/coro", coro)
    res.add_route("GET", "/deferred", lambda request: defer.succeed({"d": 1}))
    res.add_route(
        "GET",
        "/query",
        lambda request: {
            "s": query_string(request, "s"),
            "v": query_strings(request, "v"),
            "n": query_int(request, "n", 5, maximum=100),
        },
    )
    return build_tree({"/_matrix/test/v1": res})


class RoutingTests(SynchronousTestCase):
    """Requests through a real twisted.web Site in memory (treq.testing.StubTreq)."""

    def setUp(self):
        self.treq = StubTreq(_make_app())

    def request(self, method, path, data=None, headers=None):
        d = self.treq.request(method, "http://example.org" + path, data=data, headers=headers)
        self.treq.flush()
        resp = self.successResultOf(d)
        body = self.successResultOf(resp.content())
        return resp, body

    def json(self, method, path, data=None):
        resp, body = self.request(method, path, data)
        self.assertEqual(resp.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        return resp.code, json.loads(body)

    def test_path_parameter_routing(self):
        """A GET on a templated path calls the handler with the percent-decoded parameter."""
        self.assertEqual(self.json("GET", "/_matrix/test/v1/hello/%40al%2Fice"), (200, {"hello": "@al/ice"}))

    def test_mount_point_route(self):
        """The empty template answers at the mount point, with or without a trailing slash."""
        self.assertEqual(self.json("GET", "/_matrix/test/v1"), (200, {"root": True}))
        self.assertEqual(self.json("GET", "/_matrix/test/v1/"), (200, {"root": True}))

    def test_json_body_echo_and_status_tuple(self):
        """A PUT with a JSON object body reaches the handler; a (code, body) tuple sets the status."""
        self.assertEqual(
            self.json("PUT", "/_matrix/test/v1/echo/t1", b'{"a": [1, "x"]}'),
            (200, {"txn": "t1", "body": {"a": [1, "x"]}}),
        )
        self.assertEqual(self.json("GET", "/_matrix/test/v1/echo/t1"), (201, {"got": "t1"}))

    def test_unknown_paths_are_unrecognized(self):
        """Unknown paths anywhere in the tree, including the root, are 404 M_UNRECOGNIZED JSON."""
        for path in ("/", "/nope", "/_matrix", "/_matrix/", "/_matrix/test", "/_matrix/test/v2/x",
                     "/_matrix/test/v1/hello", "/_matrix/test/v1/hello/a/b", "/_matrix/test/v1/unknown"):
            code, body = self.json("GET", path)
            self.assertEqual((code, body["errcode"]), (404, "M_UNRECOGNIZED"), path)

    def test_wrong_method_is_405(self):
        """A known path with an unsupported method answers 405 M_UNRECOGNIZED."""
        code, body = self.json("POST", "/_matrix/test/v1/hello/bob", b"{}")
        self.assertEqual((code, body["errcode"]), (405, "M_UNRECOGNIZED"))
        code, body = self.json("DELETE", "/_matrix/test/v1/echo/t")
        self.assertEqual((code, body["errcode"]), (405, "M_UNRECOGNIZED"))

    def test_head_falls_back_to_get(self):
        """HEAD on a GET route answers 200 without a body."""
        resp, body = self.request("HEAD", "/_matrix/test/v1/hello/bob")
        self.assertEqual((resp.code, body), (200, b""))

    def test_not_json_bodies(self):
        """Empty, non-UTF-8, NaN and absurdly nested bodies are 400 M_NOT_JSON."""
        for data in (b"", b"{", b"\xff\xfe{}", b'{"a": NaN}', b'{"a": Infinity}', b"[" * 5000 + b"]" * 5000):
            code, body = self.json("PUT", "/_matrix/test/v1/echo/t", data)
            self.assertEqual((code, body["errcode"]), (400, "M_NOT_JSON"), data[:20])

    def test_non_object_body_is_bad_json(self):
        """JSON that is not an object where one is required is 400 M_BAD_JSON."""
        for data in (b"[]", b"1", b'"x"', b"null"):
            code, body = self.json("PUT", "/_matrix/test/v1/echo/t", data)
            self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"), data)

    def test_matrix_error_rendering(self):
        """A raised MatrixError becomes its status and JSON body, extra fields included."""
        self.assertEqual(self.json("GET", "/_matrix/test/v1/forbidden"), (403, {"errcode": "M_FORBIDDEN", "error": "no"}))
        code, body = self.json("GET", "/_matrix/test/v1/coro")
        self.assertEqual((code, body["errcode"], body["room_version"]), (400, "M_INCOMPATIBLE_ROOM_VERSION", "9"))

    def test_unexpected_exception_is_opaque_500(self):
        """Any other exception is a 500 M_UNKNOWN without a traceback; it is logged."""
        code, body = self.json("GET", "/_matrix/test/v1/crash")
        self.assertEqual(code, 500)
        self.assertEqual(body["errcode"], "M_UNKNOWN")
        self.assertNotIn("ZeroDivision", json.dumps(body))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unencodable_result_is_500(self):
        """A handler result that is not valid JSON (NaN) answers 500 M_UNKNOWN."""
        code, body = self.json("GET", "/_matrix/test/v1/nan")
        self.assertEqual((code, body["errcode"]), (500, "M_UNKNOWN"))
        self.flushLoggedErrors(ValueError)

    def test_result_kinds(self):
        """Deferreds, pre-encoded bytes and None are all rendered as JSON."""
        self.assertEqual(self.json("GET", "/_matrix/test/v1/deferred"), (200, {"d": 1}))
        self.assertEqual(self.json("GET", "/_matrix/test/v1/raw"), (200, {"pre": "encoded"}))
        self.assertEqual(self.json("GET", "/_matrix/test/v1/none"), (200, {}))

    def test_canonical_output(self):
        """Responses are canonical JSON: sorted keys, no whitespace."""
        resp, body = self.request("GET", "/_matrix/test/v1/hello/b%C3%A9")
        self.assertEqual(body, '{"hello":"bé"}'.encode())

    def test_query_helpers(self):
        """Query helpers: required strings, repeated values, clamped integers, clear errors."""
        self.assertEqual(
            self.json("GET", "/_matrix/test/v1/query?s=a&v=1&v=2&n=1000"), (200, {"s": "a", "v": ["1", "2"], "n": 100})
        )
        code, body = self.json("GET", "/_matrix/test/v1/query")
        self.assertEqual((code, body["errcode"]), (400, "M_MISSING_PARAM"))
        code, body = self.json("GET", "/_matrix/test/v1/query?s=a&n=x1")
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))

    def test_non_utf8_path_parameter(self):
        """A path parameter that is not UTF-8 answers 400 M_INVALID_PARAM."""
        code, body = self.json("GET", "/_matrix/test/v1/hello/%FF")
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))


class BuildTreeTests(SynchronousTestCase):
    """build_tree refuses mounts that could never be reached."""

    def test_leaf_hides_deeper_mount(self):
        """Mounting below a leaf resource is a ValueError, not a silently dead route."""
        with self.assertRaises(ValueError):
            build_tree({"/_matrix/key/v2": JsonResource(), "/_matrix/key/v2/query": JsonResource()})

    def test_duplicate_mount(self):
        """Two resources at one path are refused, as is a duplicate route."""
        with self.assertRaises(ValueError):
            build_tree({"/a/b": JsonResource(), "/a/b/": JsonResource()})
        r = JsonResource()
        r.add_route("GET", "/x", lambda request: None)
        with self.assertRaises(ValueError):
            r.add_route("get", "x", lambda request: None)

    def test_siblings(self):
        """Sibling mounts under a shared prefix both work."""
        a, b = JsonResource(), JsonResource()
        a.add_route("GET", "", lambda request: {"a": 1})
        b.add_route("POST", "", lambda request: {"b": 1})
        treq = StubTreq(build_tree({"/_matrix/key/v2/server": a, "/_matrix/key/v2/query": b}))
        r = self.successResultOf(treq.get("http://x/_matrix/key/v2/server"))
        self.assertEqual(self.successResultOf(r.json()), {"a": 1})
        r = self.successResultOf(treq.post("http://x/_matrix/key/v2/query", b"{}"))
        self.assertEqual(self.successResultOf(r.json()), {"b": 1})


class SiteTests(SynchronousTestCase):
    """MatrixSite / MatrixRequest over an in-memory transport: body caps and CORS."""

    def connect(self, **kwargs):
        res = JsonResource()
        self.calls = []

        def put(request, txn):
            self.calls.append(txn)
            return {"ok": True, "len": len(read_json_object(request))}

        res.add_route("PUT", "/send/{txn}", put)
        # A Clock, not the global reactor, runs the channel's idle timeout.
        site = MatrixSite(build_tree({"/_matrix/federation/v1": res}), reactor=Clock(), **kwargs)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        channel.makeConnection(transport)
        return channel, transport

    def parse(self, raw):
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        return status, headers, body

    def test_content_length_over_limit(self):
        """A Content-Length over the cap is answered 413 M_TOO_LARGE before any body is read,
        and the connection is closed; the handler never runs."""
        channel, transport = self.connect(max_request_body_size=1000)
        channel.dataReceived(b"PUT /_matrix/federation/v1/send/t HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        status, headers, body = self.parse(transport.value())
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(body)["errcode"], "M_TOO_LARGE")
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"x" * 5000)
        self.assertEqual(self.calls, [])

    def test_whole_oversized_body_in_one_read(self):
        """Even if the whole oversized body arrives at once, it is refused and not processed."""
        channel, transport = self.connect(max_request_body_size=1000)
        body = b'{"a":"' + b"x" * 2000 + b'"}'
        channel.dataReceived(
            b"PUT /_matrix/federation/v1/send/t HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        self.assertEqual(self.parse(transport.value())[0], 413)
        self.assertEqual(self.calls, [])

    def test_chunked_body_counted_while_reading(self):
        """A chunked body is counted as it arrives and refused once it passes the cap."""
        channel, transport = self.connect(max_request_body_size=1000)
        channel.dataReceived(b"PUT /_matrix/federation/v1/send/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        channel.dataReceived(b"200\r\n" + b"x" * 0x200 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"200\r\n" + b"x" * 0x200 + b"\r\n")
        status, _, body = self.parse(transport.value())
        self.assertEqual((status, json.loads(body)["errcode"]), (413, "M_TOO_LARGE"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.calls, [])

    def test_body_under_limit_is_served(self):
        """A body within the cap is handled normally and carries no CORS headers by default."""
        channel, transport = self.connect(max_request_body_size=1000)
        body = b'{"a":1}'
        channel.dataReceived(
            b"PUT /_matrix/federation/v1/send/t HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        status, headers, resp = self.parse(transport.value())
        self.assertEqual((status, json.loads(resp)), (200, {"ok": True, "len": 1}))
        self.assertNotIn(b"Access-Control-Allow-Origin", headers)
        self.assertTrue(headers[b"Server"].startswith(b"fedserver/"))

    def test_cors_preflight_and_headers(self):
        """With cors=True, OPTIONS on any path is 200 with CORS headers, and errors carry them too."""
        channel, transport = self.connect(cors=True)
        channel.dataReceived(b"OPTIONS /_matrix/client/v3/sync HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = self.parse(transport.value())
        self.assertEqual((status, body), (200, b"{}"))
        self.assertEqual(headers[b"Access-Control-Allow-Origin"], b"*")
        self.assertIn(b"Authorization", headers[b"Access-Control-Allow-Headers"])
        transport.clear()
        channel.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = self.parse(transport.value())
        self.assertEqual((status, json.loads(body)["errcode"]), (404, "M_UNRECOGNIZED"))
        self.assertEqual(headers[b"Access-Control-Allow-Origin"], b"*")


class ErrorTests(SynchronousTestCase):
    """MatrixError's JSON shape."""

    def test_to_json(self):
        """to_json has errcode, error and any extra fields."""
        e = MatrixError(429, "M_LIMIT_EXCEEDED", "slow down", retry_after_ms=10)
        self.assertEqual(e.to_json(), {"errcode": "M_LIMIT_EXCEEDED", "error": "slow down", "retry_after_ms": 10})
