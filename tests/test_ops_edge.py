"""The HTTP edge for operators: trusted reverse proxies, request ids, the access log, slow requests, log formats and files."""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fedserver.config import config_from_dict
from fedserver.http.client.api import client_ip
from fedserver.http.resource import JsonResource, MatrixSite, build_tree, forwarded_client
from fedserver.logs import REQUEST_ID, RequestIdObserver, RotatingFile, build_observer, json_formatter, text_formatter, valid_request_id
from fedserver.service import build_log_observer, connection_limits
from fedserver.testing import loopback_config, start_server

NETS = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.0.0.0/8"))


class ForwardedForTests(SynchronousTestCase):
    """Which address of an X-Forwarded-For chain is the client."""

    def test_rightmost_untrusted_hop(self):
        """The first address from the right that is not a trusted proxy is the client;
        addresses a client wrote on the left are ignored."""
        self.assertEqual(forwarded_client([b"1.2.3.4, 203.0.113.9, 10.0.0.2"], NETS), "203.0.113.9")
        self.assertEqual(forwarded_client([b"203.0.113.9"], NETS), "203.0.113.9")
        self.assertEqual(forwarded_client([b"1.2.3.4", b"203.0.113.9"], NETS), "203.0.113.9")

    def test_all_trusted_gives_leftmost_and_garbage_stops(self):
        """All hops trusted: the leftmost. A hop that is not an address ends the walk at
        the last trusted hop; nothing usable gives None (the TCP peer is kept)."""
        self.assertEqual(forwarded_client([b"10.0.0.5, 10.0.0.2"], NETS), "10.0.0.5")
        self.assertEqual(forwarded_client([b"203.0.113.9, unknown, 10.0.0.2"], NETS), "10.0.0.2")
        self.assertIsNone(forwarded_client([b"not-an-ip"], NETS))
        self.assertIsNone(forwarded_client([], NETS))
        self.assertEqual(forwarded_client([b"2001:db8::1"], NETS), "2001:db8::1")
        self.assertEqual(forwarded_client([b"::ffff:203.0.113.7"], NETS), "203.0.113.7")

    def test_request_ids_accepted_from_proxies(self):
        """A proxy's request id is kept only if it is short and plain."""
        self.assertTrue(valid_request_id("abc-123_X.y:z"))
        for bad in ("", "a" * 65, "a b", "a\nb", "é"):
            self.assertFalse(valid_request_id(bad), bad)

    def test_trusted_proxies_exempt_from_per_address_cap(self):
        """A trusted proxy's network joins connection_limit_exempt."""
        limits = connection_limits(config_from_dict({"trusted_proxies": ["192.0.2.0/24"]}), fds=1024)
        self.assertIn(ipaddress.ip_network("192.0.2.0/24"), limits.exempt)
        self.assertIn(ipaddress.ip_network("127.0.0.0/8"), limits.exempt)


class _Echo:
    """Handlers of a JsonResource used by the edge tests."""

    log = Logger(namespace="fedserver.test_echo")

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def who(self, request: Any) -> Any:
        # An asynchronous hop first: the request id must survive it.
        await task.deferLater(reactor, 0.001, lambda: None)
        self.log.info("handling who")
        return {"ip": client_ip(request), "secure": request.isSecure(), "context_id": REQUEST_ID.get()}

    async def slow(self, request: Any) -> Any:
        await task.deferLater(reactor, 0.4, lambda: None)
        return {}


class SiteTests(TestCase):
    """A real MatrixSite on loopback, with and without 127.0.0.1 as a trusted proxy."""

    def listen(self, **site_options: Any) -> str:
        echo = _Echo()
        res = JsonResource()
        res.add_route("GET", "/who", echo.who)
        res.add_route("GET", "/slow", echo.slow)
        site = MatrixSite(build_tree({"/t": res}), reactor=reactor, **site_options)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.site = site
        return f"http://127.0.0.1:{port.getHost().port}"

    def capture(self) -> list[dict]:
        """Events logged from now on, with the request id of the context they were
        logged in (as the server's observer adds it)."""
        events: list[dict] = []
        observer = RequestIdObserver(events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return events

    async def get(self, url: str, headers: dict | None = None) -> tuple[Any, Any]:
        resp = await treq.get(url, headers=headers or {}, reactor=reactor, persistent=False)
        return resp, await resp.json()

    async def test_forwarded_headers_only_from_trusted_proxies(self):
        """From a trusted proxy, X-Forwarded-For gives the client address and
        X-Forwarded-Proto https makes the request secure; from anyone else both are ignored."""
        headers = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
        trusted = self.listen(trusted_proxies=["127.0.0.1"])
        _, body = await self.get(f"{trusted}/t/who", headers)
        self.assertEqual((body["ip"], body["secure"]), ("198.51.100.7", True))
        _, body = await self.get(f"{trusted}/t/who")
        self.assertEqual((body["ip"], body["secure"]), ("127.0.0.1", False))
        untrusted = self.listen(trusted_proxies=["10.0.0.0/8"])
        _, body = await self.get(f"{untrusted}/t/who", headers)
        self.assertEqual((body["ip"], body["secure"]), ("127.0.0.1", False))

    async def test_request_ids_in_header_and_logs(self):
        """Every response has an X-Request-Id; lines logged while handling the request,
        after asynchronous hops, carry it, and so does the access log line. A trusted
        proxy's own id is kept; anyone else's is replaced."""
        events = self.capture()
        url = self.listen(trusted_proxies=["10.0.0.0/8"])
        resp, body = await self.get(f"{url}/t/who", {"X-Request-Id": "from-client"})
        rid = resp.headers.getRawHeaders(b"x-request-id")[0].decode()
        self.assertNotEqual(rid, "from-client")
        self.assertTrue(valid_request_id(rid))
        self.assertEqual(body["context_id"], rid)
        handled = [e for e in events if e.get("log_format") == "handling who"]
        self.assertEqual([e.get("request_id") for e in handled], [rid])
        access = [e for e in events if e.get("log_namespace") == "fedserver.access"]
        self.assertEqual([e["request_id"] for e in access], [rid])
        self.assertEqual(access[0]["route"], "/t/who")
        self.assertIsNone(REQUEST_ID.get())
        proxied = self.listen(trusted_proxies=["127.0.0.1"])
        resp, body = await self.get(f"{proxied}/t/who", {"X-Request-Id": "edge-42"})
        self.assertEqual(resp.headers.getRawHeaders(b"x-request-id"), [b"edge-42"])
        self.assertEqual(body["context_id"], "edge-42")

    async def test_access_log_hides_tokens_and_flags_slow_requests(self):
        """The access log never shows an access_token query value; a request over the
        slow threshold is logged at warn as slow, unless it is a long poll within its own
        timeout."""
        events = self.capture()
        url = self.listen(slow_request_threshold=0.2)
        await self.get(f"{url}/t/who?access_token=sekrit&x=1")
        await self.get(f"{url}/t/slow")
        await self.get(f"{url}/t/slow?timeout=5000")
        access = [e for e in events if e.get("log_namespace") == "fedserver.access"]
        self.assertEqual(len(access), 3)
        self.assertEqual(access[0]["path"], "/t/who?access_token=<redacted>&x=1")
        self.assertNotIn("sekrit", json.dumps([json_formatter(e) for e in access]))
        self.assertEqual([e["log_level"] for e in access], [LogLevel.info, LogLevel.warn, LogLevel.info])
        self.assertTrue(access[1]["slow"])
        self.assertEqual(access[1]["status"], 200)
        self.assertGreaterEqual(access[1]["duration_ms"], 390)

    async def test_access_log_off_still_reports_slow_requests(self):
        """With access_log false only slow requests are logged."""
        events = self.capture()
        url = self.listen(slow_request_threshold=0.2, access_log=False)
        await self.get(f"{url}/t/who")
        await self.get(f"{url}/t/slow")
        access = [e for e in events if e.get("log_namespace") == "fedserver.access"]
        self.assertEqual([e.get("route") for e in access], ["/t/slow"])


class _Lines:
    def __init__(self, out: list) -> None:
        self.out = out

    def write(self, text: str) -> None:
        self.out.append(text)

    def flush(self) -> None:
        pass


class FormatTests(SynchronousTestCase):
    """The text and JSON line formats, and the rotating log file."""

    def event(self, **extra: Any) -> dict:
        return {"log_format": "GET {path} {status}", "path": "/x", "status": 200, "log_level": LogLevel.info,
                "log_namespace": "fedserver.access", "log_time": 1_700_000_000.25, **extra}

    def test_json_lines(self):
        """One JSON object per line: time (UTC ISO), level, namespace, message, request
        id, and the event's fields; tracebacks in the message."""
        line = json_formatter(self.event(request_id="r1"))
        self.assertTrue(line.endswith("\n") and line.count("\n") == 1)
        obj = json.loads(line)
        self.assertEqual(obj["time"], "2023-11-14T22:13:20.250Z")
        self.assertEqual((obj["level"], obj["namespace"], obj["message"]), ("info", "fedserver.access", "GET /x 200"))
        self.assertEqual((obj["request_id"], obj["path"], obj["status"]), ("r1", "/x", 200))
        self.assertNotIn("log_format", obj)
        from twisted.python.failure import Failure

        try:
            1 / 0
        except ZeroDivisionError:
            f = Failure()
        obj = json.loads(json_formatter(self.event(log_failure=f, log_level=LogLevel.error)))
        self.assertIn("ZeroDivisionError", obj["message"])
        self.assertEqual(obj["level"], "error")

    def test_text_line(self):
        """Text lines: time, namespace#level, request id in brackets, message."""
        self.assertEqual(
            text_formatter(self.event(request_id="r1")),
            "2023-11-14T22:13:20.250Z [fedserver.access#info] [r1] GET /x 200\n",
        )
        self.assertNotIn("[]", text_formatter(self.event()))

    def test_level_filter_and_request_id_from_context(self):
        """The observer drops events below the level and adds the request id of the
        context it is called in."""
        out: list[str] = []
        observer = build_observer(_Lines(out), "json", "warn")
        observer(self.event())
        REQUEST_ID.set("ctx-1")
        try:
            observer(self.event(log_level=LogLevel.warn))
        finally:
            REQUEST_ID.set(None)
        self.assertEqual([json.loads(x)["request_id"] for x in out], ["ctx-1"])

    def test_log_file_rotates_keeps_backups_and_reopens(self):
        """log_file is rotated at log_max_bytes with log_backups old files; reopen() after
        the file was moved away starts a new one."""
        d = self.mktemp()
        os.makedirs(d)
        path = os.path.join(d, "fedserver.log")
        f = RotatingFile(path, 100, 2)
        for i in range(20):
            f.write(f"line {i:02d} " + "x" * 40 + "\n")
        names = sorted(os.listdir(d))
        self.assertEqual(names, ["fedserver.log", "fedserver.log.1", "fedserver.log.2"])
        os.rename(path, path + ".moved")
        f.reopen()
        f.write("after\n")
        f.flush()
        with open(path) as fh:
            self.assertEqual(fh.read(), "after\n")
        f.close()

    def test_build_log_observer_writes_json_to_log_file(self):
        """With log_file and log_format json, the server's observer writes JSON lines
        there."""
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        config = config_from_dict({"log_file": os.path.join(d, "s.log"), "log_format": "json", "log_level": "info"})
        observer = build_log_observer(None, config)
        Logger(namespace="fedserver.t", observer=observer).info("hello {who}", who="ops")
        with open(os.path.join(d, "s.log")) as fh:
            obj = json.loads(fh.read())
        self.assertEqual((obj["message"], obj["who"], obj["namespace"]), ("hello ops", "ops", "fedserver.t"))

    def test_sighup_reopens_log_file_and_never_stops_the_server(self):
        """With a reactor, SIGHUP gets a handler (its default action would end the
        process): with log_file it reopens the file a logrotate moved away; without
        log_file it only logs."""
        import signal

        calls: list[Any] = []

        class _Reactor:
            def callFromThread(self, f: Any, *a: Any) -> None:
                calls.append(f)
                f(*a)

        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        path = os.path.join(d, "s.log")
        config = config_from_dict({"log_file": path, "log_format": "text", "log_level": "info"})
        observer = build_log_observer(None, config, _Reactor())
        handler = signal.getsignal(signal.SIGHUP)
        self.assertTrue(callable(handler))
        os.rename(path, path + ".1")
        handler(signal.SIGHUP, None)
        Logger(namespace="fedserver.t", observer=observer).info("after rotation")
        with open(path) as fh:
            self.assertIn("after rotation", fh.read())
        self.assertIsNone(build_log_observer(None, config_from_dict({}), _Reactor()))
        handler = signal.getsignal(signal.SIGHUP)
        self.assertTrue(callable(handler))
        handler(signal.SIGHUP, None)  # logs only; must not raise
        self.assertEqual(len(calls), 2)


class RateLimitBehindProxyTests(TestCase):
    """Rate limits key on the forwarded client address behind a trusted proxy."""

    async def test_login_limit_per_forwarded_client(self):
        """21 logins from one forwarded client exhaust its login bucket (429), while
        another client behind the same proxy is still served; without trusted_proxies
        both would share the proxy's bucket."""
        svc = await start_server(self, loopback_config(os.path.abspath(self.mktemp()), trusted_proxies=["127.0.0.1"],
                                                       access_log=False, log_level="warn"))
        url = f"http://127.0.0.1:{svc.client_listener.port.getHost().port}/_matrix/client/v3/login"

        async def login(client: str) -> tuple[int, dict]:
            resp = await treq.post(url, json={"type": "m.login.nope"}, headers={"X-Forwarded-For": client},
                                   reactor=reactor, persistent=False)
            return resp.code, await resp.json()

        codes = [(await login("198.51.100.1"))[0] for _ in range(21)]
        self.assertEqual(codes[:20], [400] * 20)
        code, body = await login("198.51.100.1")
        self.assertEqual((code, body["errcode"]), (429, "M_LIMIT_EXCEEDED"))
        code, body = await login("198.51.100.2")
        self.assertEqual((code, body["errcode"]), (400, "M_UNKNOWN"))
        await defer.succeed(None)
