"""Real web clients in a real browser, for the browser tests (tests/interop/test_browser.py).

The pages under ``tests/browser/`` (Hydrogen, and our small chat page on matrix-js-sdk with
its Rust crypto) are built by ``npm ci --prefix tests/browser && npm run --prefix
tests/browser build`` into ``tests/browser/dist`` (``.ci/run`` builds them into the user's
cache and names the folder in ``FEDSERVER_BROWSER_PAGES``), served here by a
small static HTTP server on loopback, and opened in headless Chromium from the system's
packages (``/usr/bin/chromium``, Debian's ``chromium``) driven by Playwright's Python
package. Playwright never downloads a browser here: it is pointed at the system's
executable. Without the browser, Playwright or the built pages the tests are skipped, or
fail under ``FEDSERVER_INTEROP=require`` (CI).

Every browser context records the HTTP answers of 400 and above that its pages received
(:attr:`Tab.errors`); :meth:`Tab.unexpected_errors` leaves out those in :data:`ALLOWED`,
each with its reason. What a real client needs and the server lacks is a server bug.

The browser, the static server and the Playwright driver are started once per test process
on first use and stopped at exit. The Playwright sync API blocks: use it from plain test
methods only (the servers of the interop tests are child processes, so nothing needs this
process's reactor meanwhile).
"""

from __future__ import annotations

import atexit
import functools
import http.server
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from tests.interop.peers import unavailable

TESTS = os.path.dirname(os.path.abspath(__file__))
BROWSER_DIR = os.path.join(TESTS, "browser")
#: The built pages: ``FEDSERVER_BROWSER_PAGES`` (``.ci/run`` builds them once into the user's
#: cache), else ``tests/browser/dist`` (``npm run --prefix tests/browser build``).
DIST = os.environ.get("FEDSERVER_BROWSER_PAGES") or os.path.join(BROWSER_DIR, "dist")

#: Chromium's flags on this closed network: without the background-networking ones its
#: own connections (to Google's services) are refused and slow everything down.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_executable() -> str | None:
    """The system's Chromium: ``FEDSERVER_CHROMIUM`` if set, else ``chromium`` on PATH."""
    explicit = os.environ.get("FEDSERVER_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot_dir() -> str:
    """Where screenshots go: ``FEDSERVER_SCREENSHOTS`` (``.ci/run`` sets
    ``.ci-venv/screenshots``), else ``screenshots/`` in the current directory (trial's
    ``_trial_temp``)."""
    path = os.environ.get("FEDSERVER_SCREENSHOTS") or os.path.abspath("screenshots")
    os.makedirs(path, exist_ok=True)
    return path


# -- expected error answers ---------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    """An error answer a client is expected to get, and why it is no server bug."""

    method: str
    path: str  # a regular expression matched against the whole URL path
    status: int
    reason: str

    def matches(self, method: str, path: str, status: int) -> bool:
        return self.method == method and self.status == status and re.fullmatch(self.path, path) is not None


#: Answers of 400 and above that are part of normal use, each with its reason. Anything
#: else a page receives fails the test: it is something a real client needed and a server
#: did not give.
ALLOWED: tuple[Allowed, ...] = (
    Allowed("GET", r"/\.well-known/matrix/client", 404,
            "server discovery (client-server API, Server Discovery): no .well-known is served "
            "unless the operator turns it on (serve_well_known); a 404 means the URL typed "
            "is the homeserver"),
    Allowed("GET", r"/_matrix/client/(r0|v3)/user/[^/]+/account_data/[^/]+", 404,
            "an account data item the user never set (M_NOT_FOUND), e.g. the secret storage "
            "default key or a key backup secret a new account does not have"),
    Allowed("GET", r"/_matrix/client/(r0|v3)/user/[^/]+/rooms/[^/]+/account_data/[^/]+", 404,
            "a room account data item the user never set (M_NOT_FOUND)"),
    Allowed("GET", r"/_matrix/client/(r0|v3|unstable)/room_keys/version", 404,
            "no key backup on the server yet (M_NOT_FOUND): clients ask before offering one"),
    Allowed("GET", r"/_matrix/client/unstable/org\.matrix\.msc2697\.v2/dehydrated_device", 404,
            "Hydrogen asks for a dehydrated device (MSC2697, an unstable proposal, not in the "
            "spec) after login; M_UNRECOGNIZED, as Synapse answers without its experimental "
            "option, and Hydrogen goes on without one"),
    Allowed("GET", r"/undefined", 404,
            "the page's own origin, not a homeserver: while a picture uploads, Hydrogen 0.3.1 "
            "sets its preview's src to the string 'undefined'"),
)


@dataclass
class ErrorAnswer:
    method: str
    url: str
    status: int
    body: str = ""

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    def __str__(self) -> str:
        return f"{self.method} {self.url} -> {self.status} {self.body[:200]}"


# -- the static server --------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
    }

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class StaticSite:
    """``tests/browser/dist`` over HTTP on 127.0.0.1 (a loopback origin is a secure
    context, so service workers and WebCrypto work)."""

    def __init__(self, root: str = DIST) -> None:
        handler = functools.partial(_QuietHandler, directory=root)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="static-site", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the browser --------------------------------------------------------------------------


class Browser:
    """One headless Chromium for the test process, with the static site; each user gets
    a fresh context of its own (:meth:`tab`)."""

    _instance: "Browser | None" = None
    _error: BaseException | None = None

    @classmethod
    def get(cls) -> "Browser":
        """The shared browser, started on first use; a test without it is skipped, or
        fails under ``FEDSERVER_INTEROP=require``."""
        if cls._error is not None:
            raise cls._error
        if cls._instance is None:
            try:
                cls._instance = cls()
            except _Unavailable as e:
                cls._error = unavailable(e)
                raise cls._error from None
            atexit.register(cls._instance.close)
        return cls._instance

    def __init__(self) -> None:
        executable = chromium_executable()
        if executable is None:
            raise _Unavailable("no Chromium (apt-get install chromium, or set FEDSERVER_CHROMIUM)")
        if not os.path.isfile(os.path.join(DIST, "index.html")) or not os.path.isfile(os.path.join(DIST, "chat.html")):
            raise _Unavailable(f"the browser pages are not built (npm ci --prefix {BROWSER_DIR} && "
                               f"npm run --prefix {BROWSER_DIR} build)")
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            raise _Unavailable("the playwright package is not installed (pip install -e '.[test]')") from None
        self.site = StaticSite()
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        except BaseException:
            self._pw.stop()
            self.site.stop()
            raise

    def tab(self, name: str, viewport: tuple[int, int] = (1100, 800)) -> "Tab":
        """A page in a new, empty browser context (its own storage, like another
        person's browser), recording its error answers."""
        context = self.browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                           service_workers="allow")
        return Tab(self, name, context)

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self._pw.stop()
            self.site.stop()


class _Unavailable(Exception):
    pass


@dataclass
class Tab:
    """One person's browser: a context and its page, with the error answers it got and
    what its pages printed on their consoles."""

    browser: Browser
    name: str
    context: Any
    page: Any = None
    errors: list[ErrorAnswer] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context.set_default_timeout(60_000)
        self.context.on("response", self._on_response)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def _on_response(self, response: Any) -> None:
        if response.status < 400:
            return
        request = response.request
        answer = ErrorAnswer(request.method, response.url, response.status)
        try:
            answer.body = response.text()
        except Exception:  # noqa: BLE001 - a body the browser did not keep
            pass
        self.errors.append(answer)

    def open(self, page: str, query: str = "") -> None:
        """Open ``page`` (``index.html`` for Hydrogen, ``chat.html`` for our chat page)."""
        self.page.goto(f"{self.browser.site.url}/{page}{query}")

    def screenshot(self, label: str) -> str:
        """Save a full-page screenshot as ``<test label>-<tab>.png``; returns its path."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{label}-{self.name}")
        path = os.path.join(screenshot_dir(), safe + ".png")
        self.page.screenshot(path=path, full_page=True)
        return path

    def unexpected_errors(self, extra: tuple[Allowed, ...] = ()) -> list[ErrorAnswer]:
        """The error answers not in :data:`ALLOWED` (nor in ``extra``)."""
        allowed = ALLOWED + extra
        return [e for e in self.errors if not any(a.matches(e.method, e.path, e.status) for a in allowed)]

    def diagnostics(self, lines: int = 15) -> str:
        """The error answers and the last console lines of this tab, for a failure's message."""
        errors = "\n".join(f"  {e}" for e in self.errors[-lines:]) or "  none"
        console = "\n".join(f"  {c[:300]}" for c in self.console[-lines:]) or "  none"
        return f"error answers:\n{errors}\nconsole:\n{console}"

    def close(self) -> None:
        self.context.close()


def wait_dom(tab: Tab, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``predicate`` (which reads the page) until it returns a true value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - a page still loading
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} in {tab.name}'s browser (last: {last!r})\n"
                                 + tab.diagnostics())
        tab.page.wait_for_timeout(interval * 1000)
