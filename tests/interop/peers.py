"""Launchers for the two real servers the interop tests federate: Synapse and fedserver.

Both run as child processes on loopback, so the test process can drive them with plain
blocking HTTP without ever blocking a server's reactor (the blocking helpers here must not
be used while a server runs inside the test process). Synapse comes from the interpreter
named by ``FEDSERVER_SYNAPSE_PYTHON`` (``.ci/run`` installs ``matrix-synapse`` into a venv of
its own and sets it); without one the interop tests are skipped, unless
``FEDSERVER_INTEROP=require`` (CI), in which case they fail.

The children die with the test process: they are stopped at exit, and on Linux the kernel
signals them if the test process is killed.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from fedserver.testing import database_options_for_test

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


class PeerUnavailable(Exception):
    """The peer cannot be run on this machine (not installed)."""


def synapse_python() -> str:
    """The interpreter that has ``synapse`` installed.

    :raises PeerUnavailable: if none is configured or it cannot import synapse.
    """
    if os.environ.get("FEDSERVER_INTEROP") == "skip":
        raise PeerUnavailable("FEDSERVER_INTEROP=skip")
    py = os.environ.get("FEDSERVER_SYNAPSE_PYTHON")
    if not py:
        raise PeerUnavailable("FEDSERVER_SYNAPSE_PYTHON is not set (see .ci/run)")
    if subprocess.run([py, "-c", "import synapse"], capture_output=True).returncode != 0:
        raise PeerUnavailable(f"{py} cannot import synapse")
    return py


def interop_required() -> bool:
    return os.environ.get("FEDSERVER_INTEROP") == "require"


def unavailable(reason: object) -> Exception:
    """What a test raises when something it needs cannot run here (a peer, a plugin, a
    client): a failure under ``FEDSERVER_INTEROP=require`` (CI never goes green with a
    scenario left out), a skip elsewhere."""
    from twisted.trial.unittest import SkipTest

    if interop_required():
        return AssertionError(f"FEDSERVER_INTEROP=require but {reason}")
    return SkipTest(str(reason))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed_cert(directory: str, host: str = "127.0.0.1") -> tuple[str, str]:
    """Write a self-signed certificate for ``host`` (an IP literal) into ``directory``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False
        )
        .sign(key, hashes.SHA256())
    )
    crt, kpath = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    with open(crt, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(kpath, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return crt, kpath


class HTTPError(Exception):
    """A non-2xx answer; ``status`` and the parsed ``body``."""

    def __init__(self, status: int, body: dict):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def http_json(method: str, url: str, body=None, token: str | None = None, timeout: float = 60,
              headers: dict | None = None):
    """One blocking JSON request; returns the parsed body or raises :class:`HTTPError`.

    Never call it while a server runs in this process: it blocks the reactor.
    """
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    ctx = ssl._create_unverified_context()  # loopback peers with self-signed certificates
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"raw": raw.decode(errors="replace")}
        raise HTTPError(e.code, parsed) from None
    return json.loads(raw) if raw else {}


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns a true value; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - polling a server that is coming up
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the test process dies."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def shared_secret_register(client_url: str, secret: str, localpart: str, admin: bool = False) -> dict:
    """Register ``localpart`` (password ``pw-<localpart>``) through the shared-secret admin
    API (``/_synapse/admin/v1/register``, served by Synapse and by fedserver); returns the
    answer (``user_id``, ``access_token``)."""
    url = client_url + "/_synapse/admin/v1/register"
    nonce = http_json("GET", url)["nonce"]
    password = "pw-" + localpart
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                             b"admin" if admin else b"notadmin"]))
    return http_json("POST", url, {"nonce": nonce, "username": localpart, "password": password,
                                   "admin": admin, "mac": mac.hexdigest()})


class _Process:
    """A child server process with its own directory and log."""

    proc: subprocess.Popen | None = None

    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.log_path = os.path.join(directory, "stdout.log")

    def _spawn(self, argv: list[str], env: dict | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        atexit.register(self.stop)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (our own child, by its pid), then SIGKILL after ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class Synapse(_Process):
    """A real Synapse on loopback: federation over TLS, client API over plain HTTP."""

    def __init__(self, directory: str, *, room_version: str = "12", presence: bool = False):
        super().__init__(directory)
        self.presence = presence
        self.python = synapse_python()
        self.fed_port = free_port()
        self.client_port = free_port()
        self.server_name = f"127.0.0.1:{self.fed_port}"
        self.client_url = f"http://127.0.0.1:{self.client_port}"
        self.fed_url = f"https://127.0.0.1:{self.fed_port}"
        self.room_version = room_version
        self.shared_secret = secrets.token_urlsafe(24)
        self.tokens: dict[str, str] = {}

    def write_config(self) -> str:
        d = self.directory
        crt, key = self_signed_cert(d)
        with open(os.path.join(d, "log.yaml"), "w") as f:
            f.write(
                "version: 1\n"
                "formatters: {p: {format: '%(asctime)s %(name)s %(levelname)s %(request)s %(message)s'}}\n"
                f"handlers: {{file: {{class: logging.FileHandler, formatter: p, filename: {d}/homeserver.log}}}}\n"
                "root: {level: INFO, handlers: [file]}\n"
                "disable_existing_loggers: false\n"
            )
        # Synapse's default IP blocklist contains 127.0.0.0/8 and is applied to IP-literal
        # destinations regardless of the whitelist: replace it with "everything except
        # loopback", so this Synapse can reach fedserver on 127.0.0.1 and nothing else.
        block = ["0.0.0.0/2", "64.0.0.0/3", "96.0.0.0/4", "112.0.0.0/5", "120.0.0.0/6",
                 "124.0.0.0/7", "126.0.0.0/8", "128.0.0.0/1", "::/0"]
        rc = "{per_second: 10000, burst_count: 100000}"
        config = f"""
server_name: "{self.server_name}"
public_baseurl: "{self.client_url}/"
report_stats: false
signing_key_path: "{d}/signing.key"
log_config: "{d}/log.yaml"
media_store_path: "{d}/media"
database: {{name: sqlite3, args: {{database: "{d}/homeserver.db"}}}}
listeners:
  - {{port: {self.client_port}, bind_addresses: ['127.0.0.1'], type: http, tls: false,
      resources: [{{names: [client], compress: false}}]}}
  - {{port: {self.fed_port}, bind_addresses: ['127.0.0.1'], type: http, tls: true,
      resources: [{{names: [federation], compress: false}}]}}
tls_certificate_path: "{crt}"
tls_private_key_path: "{key}"
federation_verify_certificates: false
ip_range_blacklist: {json.dumps(block)}
ip_range_whitelist: ['127.0.0.0/8']
trusted_key_servers: []
suppress_key_server_warning: true
federation:
  client_timeout: 30s
  max_short_retry_delay: 2s
  max_short_retries: 3
  max_long_retry_delay: 10s
  max_long_retries: 5
  destination_min_retry_interval: 1s
  destination_retry_multiplier: 2
  destination_max_retry_interval: 10s
allow_public_rooms_over_federation: true
allow_profile_lookup_over_federation: true
default_room_version: "{self.room_version}"
room_list_publication_rules: [{{action: allow}}]
alias_creation_rules: [{{action: allow}}]
presence: {{enabled: {"true" if self.presence else "false"}}}
# Answer every /sync afresh: by default Synapse replays an identical /sync request's
# answer for 2 minutes, which hides changes from tests that poll.
caches: {{sync_response_cache_duration: 0}}
registration_shared_secret: "{self.shared_secret}"
macaroon_secret_key: "{secrets.token_urlsafe(24)}"
form_secret: "{secrets.token_urlsafe(24)}"
rc_message: {rc}
rc_registration: {rc}
rc_login: {{address: {rc}, account: {rc}, failed_attempts: {rc}}}
rc_joins: {{local: {rc}, remote: {rc}}}
rc_joins_per_room: {rc}
rc_invites: {{per_room: {rc}, per_user: {rc}, per_issuer: {rc}}}
rc_room_creation: {rc}
rc_federation: {{window_size: 1000, sleep_limit: 10000, sleep_delay: 0, reject_limit: 100000, concurrent: 1000}}
federation_rr_transactions_per_room_per_second: 10000
"""
        path = os.path.join(d, "homeserver.yaml")
        with open(path, "w") as f:
            f.write(config)
        subprocess.run(
            [self.python, "-m", "synapse.app.homeserver", "-c", path, "--generate-keys"],
            cwd=d, check=True, capture_output=True,
        )
        return path

    def start(self, timeout: float = 120) -> None:
        """Write the configuration and start Synapse; return once both listeners answer."""
        self._launch(self.write_config(), timeout)

    def restart(self, timeout: float = 120) -> None:
        """Stop Synapse and start it again with the same configuration, keys and
        database (tests of what survives a restart)."""
        self.stop()
        self._launch(os.path.join(self.directory, "homeserver.yaml"), timeout)

    def _launch(self, path: str, timeout: float) -> None:
        self._spawn([self.python, "-m", "synapse.app.homeserver", "-c", path])

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("Synapse exited:\n" + self.log_tail())
            http_json("GET", self.client_url + "/_matrix/client/versions", timeout=5)
            http_json("GET", self.fed_url + "/_matrix/key/v2/server", timeout=5)
            return True

        wait_until(ready, timeout, "Synapse to listen")

    # -- client-server API -------------------------------------------------------------

    def register(self, localpart: str, admin: bool = False) -> str:
        """Register ``localpart`` through the shared-secret admin API; returns the user id."""
        resp = shared_secret_register(self.client_url, self.shared_secret, localpart, admin)
        self.tokens[resp["user_id"]] = resp["access_token"]
        return resp["user_id"]

    def client(self, method: str, path: str, body=None, *, as_user: str | None = None,
               params: dict | None = None):
        """Call the client API as ``as_user`` (a user id registered through :meth:`register`)."""
        url = self.client_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        return http_json(method, url, body, token=self.tokens.get(as_user) if as_user else None)

    def admin_db(self):
        """A read-only sqlite3 connection to Synapse's database (for assertions)."""
        import sqlite3

        return sqlite3.connect(f"file:{self.directory}/homeserver.db?mode=ro", uri=True)


class Fedserver(_Process):
    """fedserver launched exactly as an operator does: ``twistd -n fedserver --config``.

    It runs from this checkout (``PYTHONPATH`` points at it, so the twistd plugin and the
    package under test are the ones the tests import) with the test process's interpreter.

    :ivar server_name: ``127.0.0.1:<federation port>``.
    :ivar signing_key_path: its ed25519 key (generated on first start).
    """

    def __init__(self, directory: str, *, extra_config: dict | None = None):
        super().__init__(directory)
        self.fed_port = free_port()
        self.client_port = free_port()
        self.server_name = f"127.0.0.1:{self.fed_port}"
        self.fed_url = f"https://127.0.0.1:{self.fed_port}"
        self.client_url = f"http://127.0.0.1:{self.client_port}"
        self.signing_key_path = os.path.join(directory, "fedserver.signing.key")
        self.config_path = os.path.join(directory, "fedserver.yaml")
        self.extra_config = extra_config or {}
        self.shared_secret = secrets.token_urlsafe(24)
        self.tokens: dict[str, str] = {}

    def write_config(self) -> str:
        import yaml

        d = self.directory
        config = {
            "server_name": self.server_name,
            "database_path": os.path.join(d, "fedserver.db"),
            "signing_key_path": self.signing_key_path,
            "tls_certificate_path": os.path.join(d, "fedserver.tls.crt"),
            "tls_private_key_path": os.path.join(d, "fedserver.tls.key"),
            # PORT forms (not endpoint descriptions) so that the TLS files are generated.
            "federation_listen": f"127.0.0.1:{self.fed_port}",
            "client_listen": f"127.0.0.1:{self.client_port}",
            "federation_verify_certificates": False,
            "federation_allow_private_addresses": True,
            "federation_client_timeout": 30,
            "outbound_max_retry_interval": 10,
            "log_level": "debug",
            # For admin_user(): the quick way to make many users (no login rate limit).
            "registration_shared_secret": self.shared_secret,
            # The backend under test (FEDSERVER_TEST_POSTGRES: a schema of that database).
            **database_options_for_test(os.path.join(d, "fedserver.db")),
        }
        config.update(self.extra_config)
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f)
        return self.config_path

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        return env

    def start(self, timeout: float = 60) -> None:
        """Write the configuration and start fedserver; return once it serves its keys."""
        path = self.write_config()
        run_twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
        self._spawn([sys.executable, "-c", run_twistd, "-n", "--pidfile=", "fedserver", "--config", path], env=self.env())

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("fedserver exited:\n" + self.log_tail())
            http_json("GET", self.fed_url + "/_matrix/key/v2/server", timeout=5)
            return True

        wait_until(ready, timeout, "fedserver to listen")

    def restart(self, timeout: float = 60) -> None:
        """Stop fedserver and start it again on the same ports, files and database."""
        self.stop()
        self.start(timeout)

    def register(self, localpart: str, displayname: str | None = None) -> str:
        """Create a user with ``fedserver-register`` (straight into the database, as an
        operator would); returns the user id."""
        argv = [sys.executable, "-m", "fedserver.scripts.register", "--config", self.config_path,
                "--user", localpart, "--password", "pw-" + localpart]
        if displayname is not None:
            argv += ["--displayname", displayname]
        result = subprocess.run(argv, cwd=self.directory, env=self.env(), capture_output=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"fedserver-register failed: {result.stderr.decode(errors='replace')}")
        return f"@{localpart}:{self.server_name}"

    def login(self, user_id: str) -> str:
        """Log ``user_id`` (made by :meth:`register`) in with its password; the token is
        kept for :meth:`client`."""
        localpart = user_id[1:].split(":", 1)[0]
        resp = http_json("POST", self.client_url + "/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
            "password": "pw-" + localpart,
        })
        self.tokens[user_id] = resp["access_token"]
        return resp["access_token"]

    def user(self, localpart: str) -> str:
        """Register and log in ``localpart``; returns the user id."""
        user_id = self.register(localpart)
        self.login(user_id)
        return user_id

    def admin_user(self, localpart: str, admin: bool = False) -> str:
        """Register ``localpart`` through the running server's shared-secret admin API
        (one request, no login: the way to make many users quickly; ``admin``: a server
        admin, who may call the admin API); the token is kept for :meth:`client`. Returns
        the user id."""
        resp = shared_secret_register(self.client_url, self.shared_secret, localpart, admin)
        self.tokens[resp["user_id"]] = resp["access_token"]
        return resp["user_id"]

    def client(self, method: str, path: str, body=None, *, as_user: str | None = None,
               params: dict | None = None):
        """Call our client API as ``as_user`` (logged in through :meth:`login`)."""
        url = self.client_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        return http_json(method, url, body, token=self.tokens.get(as_user) if as_user else None)

    def signing_key(self):
        """The server's signing key (a signedjson ``SigningKey``)."""
        from fedserver.crypto import load_or_generate_signing_key

        key, generated = load_or_generate_signing_key(self.signing_key_path)
        assert not generated, "fedserver has not created its key yet"
        return key


class PeerPair:
    """A Synapse and a fedserver for one test module, started together on first use and
    kept for the module (they stop when the test process exits).

    :param prefix: the name of their directory under the current one (trial's
        ``_trial_temp``, cleaned on the next run).
    :param synapse_presence: run Synapse with presence enabled (off by default: it
        costs Synapse work the other suites do not need).
    """

    def __init__(self, prefix: str, *, synapse_presence: bool = False):
        self._prefix = prefix
        self._synapse_presence = synapse_presence
        self._started: tuple[Synapse, Fedserver] | None = None
        self._error: BaseException | None = None

    def get(self) -> tuple[Synapse, Fedserver]:
        """The running pair; a test without Synapse is skipped, or fails under
        ``FEDSERVER_INTEROP=require``."""
        if self._error is not None:
            raise self._error
        if self._started is None:
            import tempfile

            base = tempfile.mkdtemp(prefix=self._prefix, dir=os.getcwd())
            try:
                synapse = Synapse(os.path.join(base, "synapse"), presence=self._synapse_presence)
            except PeerUnavailable as e:
                self._error = unavailable(e)
                raise self._error from None
            fedserver = Fedserver(os.path.join(base, "fedserver"))
            try:
                fedserver.start()
                synapse.start()
            except BaseException as e:
                self._error = e
                fedserver.stop()
                synapse.stop()
                raise
            self._started = (synapse, fedserver)
        return self._started
