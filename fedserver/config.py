"""Server configuration: the typed Config, its defaults, YAML loading, validation and --generate-config."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import yaml

#: Signing key validity we publish by default: one day, in milliseconds. The spec caps what
#: receivers honour at 7 days ("Servers MUST use the lesser of this field and 7 days into
#: the future"); shorter validity lets a key rotation reach peers sooner.
DEFAULT_KEY_VALIDITY_MS = 24 * 60 * 60 * 1000
#: Spec (keys_server.yaml): originating servers should avoid responses that expire in less
#: than an hour.
MIN_KEY_VALIDITY_MS = 60 * 60 * 1000
MAX_KEY_VALIDITY_MS = 7 * 24 * 60 * 60 * 1000

#: 200 events of the spec's 65536-byte maximum: 12.5 MiB. A federation transaction holds at
#: most 50 PDUs (<= 3.2 MiB) plus 100 EDUs, so a legitimate body never comes near it.
DEFAULT_MAX_REQUEST_BODY_SIZE = 200 * 65536
#: send_join / /state answers: Matrix HQ's state is about 200,000 events (MSC3902), a few
#: hundred MB; these are streamed, so the limit bounds traffic, not memory.
DEFAULT_SEND_JOIN_MAX_RESPONSE_SIZE = 1024 * 1024 * 1024

#: Largest upload (and largest remote media fetched), 50 MiB as Synapse's default.
DEFAULT_MAX_UPLOAD_SIZE = 50 * 1024 * 1024
#: Largest image (width x height) decoded for a thumbnail: 32 megapixels.
DEFAULT_MAX_IMAGE_PIXELS = 32 * 1000 * 1000
#: Largest page or image fetched for a URL preview.
DEFAULT_URL_PREVIEW_MAX_SIZE = 10 * 1024 * 1024
#: Where URL previews may never connect: loopback, private, link-local, shared, multicast
#: and reserved ranges (IPv4 and IPv6).
DEFAULT_URL_PREVIEW_IP_BLOCKLIST = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
    "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
)

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

# Twisted endpoint types whose descriptions we accept verbatim for the listen options.
_ENDPOINT_TYPES = ("tcp", "ssl", "unix", "systemd", "tcp6", "ssl6", "tls", "le", "lets", "onion")


class ConfigError(ValueError):
    """A configuration problem; ``str()`` is one line naming the option."""


@dataclass(frozen=True)
class OldVerifyKey:
    """A signing key we used to use, published under ``old_verify_keys``.

    :ivar key_id: e.g. ``ed25519:abc``.
    :ivar key: unpadded base64 public key.
    :ivar expired_ts: when we stopped using it, ms since the epoch.
    """

    key_id: str
    key: str
    expired_ts: int


@dataclass(frozen=True)
class TrustedKeyServer:
    """A notary we may ask for other servers' keys.

    :ivar server_name: the notary's server name.
    :ivar verify_keys: ``((key_id, unpadded base64 public key), ...)``, never empty; the
        notary's answers must be signed by one of them.
    """

    server_name: str
    verify_keys: tuple[tuple[str, str], ...] = ()

    def verify_keys_map(self) -> dict[str, str]:
        """:returns: ``{key_id: base64 key}``."""
        return dict(self.verify_keys)


@dataclass(frozen=True)
class DatabaseConfig:
    """Which database engine holds the server's data (option ``database``).

    :ivar backend: ``"sqlite"`` (the file ``database_path``, the default) or
        ``"postgresql"``.
    :ivar dsn: PostgreSQL: a libpq connection string or URL; empty for libpq's defaults
        and ``PG*`` environment variables.
    :ivar schema: PostgreSQL: the schema of fedserver's tables (it must exist); ``None``
        for the default (``public``).
    :ivar readers: PostgreSQL: connections serving reads in parallel (plus one writer).
    """

    backend: str = "sqlite"
    dsn: str = ""
    schema: str | None = None
    readers: int = 4


@dataclass(frozen=True)
class Config:
    """The whole server configuration; see :data:`OPTIONS` for what each field means."""

    server_name: str = "localhost:8448"
    database_path: str = "fedserver.db"
    database: DatabaseConfig = DatabaseConfig()
    signing_key_path: str = "fedserver.signing.key"
    tls_certificate_path: str = "fedserver.tls.crt"
    tls_private_key_path: str = "fedserver.tls.key"
    federation_listen: str = "8448"
    client_listen: str = "127.0.0.1:8008"
    key_validity_period: int = DEFAULT_KEY_VALIDITY_MS
    old_verify_keys: tuple[OldVerifyKey, ...] = ()
    trusted_key_servers: tuple[TrustedKeyServer, ...] = ()
    federation_verify_certificates: bool = True
    federation_allow_private_addresses: bool = False
    federation_client_timeout: float = 60.0
    partial_state_joins: bool = True
    serve_partial_state: bool = True
    public_rooms_over_federation: bool = True
    send_join_max_response_size: int = DEFAULT_SEND_JOIN_MAX_RESPONSE_SIZE
    outbound_max_retry_interval: float = 3600.0
    plugins: tuple[str, ...] = ()
    disabled_plugins: tuple[str, ...] = ()
    plugin_config: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    max_request_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE
    http_header_timeout: float = 20.0
    http_body_timeout: float = 20.0
    http_body_min_rate: int = 500
    http_idle_timeout: float = 60.0
    max_connections: int | None = None
    max_connections_per_address: int = 100
    connection_limit_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    enable_registration: bool = False
    registration_shared_secret: str | None = None
    default_room_version: str = "12"
    media_store_path: str | None = None
    max_upload_size: int = DEFAULT_MAX_UPLOAD_SIZE
    media_user_quota: int | None = None
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    enable_legacy_media: bool | int = False
    remote_media_lifetime: float | None = None
    url_preview_enabled: bool = False
    url_preview_ip_blocklist: tuple[str, ...] = DEFAULT_URL_PREVIEW_IP_BLOCKLIST
    url_preview_ip_allowlist: tuple[str, ...] = ()
    url_preview_max_size: int = DEFAULT_URL_PREVIEW_MAX_SIZE
    url_preview_timeout: float = 10.0
    presence_enabled: bool = True
    push_gateway_allow_http: bool = False
    push_gateway_allow_private_addresses: bool = False
    serve_well_known: bool = False
    well_known_server: str | None = None
    public_baseurl: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    log_file: str | None = None
    log_max_bytes: int = 100 * 1024 * 1024
    log_backups: int = 10
    access_log: bool = True
    slow_request_threshold: float = 10.0
    trusted_proxies: tuple[str, ...] = ()
    metrics_listen: str | None = None

    @property
    def media_directory(self) -> str:
        """Where media files live: :attr:`media_store_path`, or ``media_store`` next to the
        database file when it is not set."""
        if self.media_store_path is not None:
            return self.media_store_path
        return os.path.join(os.path.dirname(self.database_path), "media_store")

    def store_target(self) -> Any:
        """What :func:`fedserver.storage.open_store` opens: :attr:`database_path` (SQLite)
        or a :class:`~fedserver.storage.postgres.PostgresConfig`."""
        if self.database.backend != "postgresql":
            return self.database_path
        from fedserver.storage.postgres import PostgresConfig

        db = self.database
        return PostgresConfig(db.dsn, schema=db.schema, readers=db.readers)

    def describe_database(self) -> str:
        """The database, for logs (no password)."""
        if self.database.backend != "postgresql":
            return self.database_path
        return self.store_target().describe()

    @property
    def server_host(self) -> str:
        """The host part of :attr:`server_name`, without port or IPv6 brackets."""
        return split_server_name(self.server_name)[0]

    def replace(self, **changes: Any) -> Config:
        """:returns: a validated copy with ``changes`` applied (raw values, as in YAML).

        :raises ConfigError: for unknown options or bad values.
        """
        raw = to_raw(self)
        raw.update(changes)
        return config_from_dict(raw)


# -- validators -------------------------------------------------------------------------------

_DNS_NAME = re.compile(r"^[A-Za-z0-9.\-]{1,255}$")
_KEY_ID = re.compile(r"^ed25519:[a-zA-Z0-9_]+$")


def split_server_name(server_name: str) -> tuple[str, int | None]:
    """Split a server name (appendix "Server Name") into host and optional port.

    :returns: ``(host, port)``; IPv6 hosts are returned without brackets.
    :raises ValueError: if it is not a valid server name.
    """
    if not isinstance(server_name, str) or not server_name or len(server_name) > 255:
        raise ValueError("must be a non-empty string of at most 255 characters")
    port: int | None = None
    if server_name.startswith("["):
        end = server_name.find("]")
        if end < 0:
            raise ValueError("unterminated IPv6 literal")
        host, rest = server_name[1:end], server_name[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        if rest:
            if not rest.startswith(":"):
                raise ValueError("unexpected text after the IPv6 literal")
            port = _parse_port(rest[1:])
        return host, port
    host, sep, port_s = server_name.partition(":")
    if sep:
        port = _parse_port(port_s)
    if not _DNS_NAME.match(host):
        raise ValueError(f"{host!r} is not a valid hostname (letters, digits, '.', '-')")
    return host, port


def _parse_port(s: str) -> int:
    if not (s.isascii() and s.isdigit()) or len(s) > 5 or not 1 <= int(s) <= 65535:
        raise ValueError(f"port {s!r} is not a number from 1 to 65535")
    return int(s)


def _v_server_name(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string like 'example.org' or 'example.org:8448'")
    split_server_name(v)
    return v


def _v_path(v: Any) -> str:
    if not isinstance(v, str) or not v or "\x00" in v:
        raise ValueError("must be a non-empty file path")
    return v


def _v_listen(v: Any) -> str:
    if isinstance(v, bool):
        raise ValueError("must be a port, 'host:port' or a Twisted endpoint description")
    if isinstance(v, int):
        v = str(v)
    if not isinstance(v, str) or not v.strip():
        raise ValueError("must be a port, 'host:port' or a Twisted endpoint description")
    v = v.strip()
    if is_endpoint_description(v):
        return v
    _parse_host_port(v)
    return v


def is_endpoint_description(v: str) -> bool:
    """:returns: whether a ``*_listen`` value is a Twisted endpoint description (used verbatim)."""
    kind = v.split(":", 1)[0].lower()
    return ":" in v and kind in _ENDPOINT_TYPES


def _parse_host_port(v: str) -> tuple[str | None, int]:
    """Parse ``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` (port 0 means any free port)."""
    host: str | None = None
    port_s = v
    if v.startswith("["):
        end = v.find("]")
        if end < 0 or v[end + 1 : end + 2] != ":":
            raise ValueError("expected '[IPv6]:port'")
        host, port_s = v[1:end], v[end + 2 :]
        ipaddress.IPv6Address(host)
    elif ":" in v:
        host, port_s = v.rsplit(":", 1)
        if host != "*":
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address; use '[v6]:port' for IPv6") from None
        else:
            host = None
    if not (port_s.isascii() and port_s.isdigit()) or int(port_s) > 65535:
        raise ValueError(f"port {port_s!r} is not a number from 0 to 65535")
    return host, int(port_s)


def listen_description(value: str, *, tls_certificate: str | None = None, tls_private_key: str | None = None) -> str:
    """Turn a ``*_listen`` option into a Twisted strports description.

    A full endpoint description (``tcp:...``, ``ssl:...``, ``unix:...``) is used verbatim;
    ``PORT``, ``HOST:PORT`` and ``[V6]:PORT`` become ``ssl:`` (when TLS files are given) or
    ``tcp:`` descriptions.
    """
    from twisted.internet.endpoints import quoteStringArgument as q

    if is_endpoint_description(value):
        return value
    host, port = _parse_host_port(value)
    if tls_certificate is not None:
        desc = f"ssl:{port}:privateKey={q(tls_private_key or tls_certificate)}:certKey={q(tls_certificate)}"
    else:
        desc = f"tcp:{port}"
    if host is not None:
        desc += f":interface={q(host)}"
    return desc


def _v_int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("must be an integer")
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi is not None else f"must be at least {lo}")
        return v

    return check


def _v_seconds(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < 10**9):
        raise ValueError("must be a positive number of seconds")
    return float(v)


def _v_optional_seconds(v: Any) -> float | None:
    return None if v is None else _v_seconds(v)


def _v_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _v_str_list(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
        raise ValueError("must be a list of non-empty strings")
    return tuple(v)


def _v_optional_secret(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ValueError("must be a non-empty string or null")
    return v


def _v_room_version(v: Any) -> str:
    # A plugin may register more versions; those are checked when plugins are loaded.
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str) or not v or len(v) > 64:
        raise ValueError("must be a room version identifier such as '12'")
    return v


def _v_optional_server_name(v: Any) -> str | None:
    if v is None:
        return None
    return _v_server_name(v)


def _v_optional_base_url(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v.isascii():
        raise ValueError("must be an http(s) URL such as 'https://matrix.example.org' or null")
    try:
        parts = urlsplit(v)
        parts.port
    except ValueError:
        raise ValueError("must be an http(s) URL such as 'https://matrix.example.org' or null") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("must be an http(s) URL such as 'https://matrix.example.org' or null")
    return v


def _v_plugin_config(v: Any) -> dict[str, dict[str, Any]]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ValueError("must be a mapping of plugin name to a mapping of its options")
    out: dict[str, dict[str, Any]] = {}
    for name, options in v.items():
        if not isinstance(name, str) or not name:
            raise ValueError("plugin names must be non-empty strings")
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise ValueError(f"the options of plugin {name!r} must be a mapping")
        out[name] = dict(options)
    return out


def _v_optional_path(v: Any) -> str | None:
    if v is None:
        return None
    return _v_path(v)


def _v_optional_int(lo: int) -> Callable[[Any], int | None]:
    check = _v_int(lo)

    def optional(v: Any) -> int | None:
        return None if v is None else check(v)

    return optional


def _v_legacy_media(v: Any) -> bool | int:
    # true, false, or the freeze moment: an ISO date/datetime (UTC unless it says) or a
    # timestamp in milliseconds.
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v >= 0:
        return v
    if isinstance(v, (datetime.date, str)):
        try:
            when = v if isinstance(v, datetime.date) else datetime.datetime.fromisoformat(v)
        except ValueError:
            raise ValueError("must be true, false, an ISO date such as '2025-01-31' or a timestamp in ms") from None
        if not isinstance(when, datetime.datetime):
            when = datetime.datetime(when.year, when.month, when.day)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return int(when.timestamp() * 1000)
    raise ValueError("must be true, false, an ISO date such as '2025-01-31' or a timestamp in ms")


def _v_networks(v: Any) -> tuple[str, ...]:
    items = _v_str_list(v)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network such as '10.0.0.0/8'") from None
    return items


_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _v_database(v: Any) -> DatabaseConfig:
    if v is None:
        return DatabaseConfig()
    if not isinstance(v, Mapping):
        raise ValueError("must be a mapping such as {backend: postgresql, dsn: 'postgresql://...'}")
    unknown = set(v) - {"backend", "dsn", "schema", "readers"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: backend, dsn, schema, readers)")
    backend = v.get("backend", "sqlite")
    if backend not in ("sqlite", "postgresql"):
        raise ValueError("backend must be 'sqlite' or 'postgresql'")
    if backend == "sqlite":
        if set(v) - {"backend"}:
            raise ValueError("dsn, schema and readers are for backend: postgresql (SQLite uses database_path)")
        return DatabaseConfig()
    dsn = v.get("dsn", "")
    if dsn is None:
        dsn = ""
    if not isinstance(dsn, str) or "\x00" in dsn:
        raise ValueError("dsn must be a libpq connection string such as 'postgresql://fedserver@localhost/fedserver'")
    if dsn.strip():
        try:
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise ValueError("backend postgresql needs psycopg: pip install 'fedserver[postgres]'") from None
        try:
            conninfo_to_dict(dsn)
        except Exception as e:
            raise ValueError(f"dsn is not a valid connection string: {_one_line(str(e))}") from None
    schema = v.get("schema")
    if schema is not None and (not isinstance(schema, str) or not _SCHEMA_NAME.match(schema)):
        raise ValueError("schema must be null or a lower-case identifier (letters, digits, '_')")
    readers = v.get("readers", 4)
    if isinstance(readers, bool) or not isinstance(readers, int) or not 1 <= readers <= 64:
        raise ValueError("readers must be an integer from 1 to 64")
    return DatabaseConfig("postgresql", dsn, schema, readers)


def _v_log_format(v: Any) -> str:
    if not isinstance(v, str) or v.lower() not in ("text", "json"):
        raise ValueError("must be text or json")
    return v.lower()


def _v_optional_listen(v: Any) -> str | None:
    if v is None:
        return None
    return _v_listen(v)


def _v_log_level(v: Any) -> str:
    if not isinstance(v, str) or v.lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return v.lower()


def _check_public_key(key_id: Any, key: Any) -> tuple[str, str]:
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise ValueError(f"key id {key_id!r} must look like 'ed25519:abc_1'")
    if not isinstance(key, str):
        raise ValueError(f"key for {key_id} must be an unpadded base64 string")
    try:
        raw = base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
    except (ValueError, TypeError):
        raise ValueError(f"key for {key_id} is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"key for {key_id} is not a 32-byte ed25519 public key")
    return key_id, key.rstrip("=")


def _v_old_verify_keys(v: Any) -> tuple[OldVerifyKey, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise ValueError("must be a list of {key_id, key, expired_ts}")
    out = []
    for item in v:
        if not isinstance(item, dict) or set(item) != {"key_id", "key", "expired_ts"}:
            raise ValueError("each entry must have exactly key_id, key and expired_ts")
        key_id, key = _check_public_key(item["key_id"], item["key"])
        ts = item["expired_ts"]
        if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
            raise ValueError(f"expired_ts of {key_id} must be a timestamp in milliseconds")
        out.append(OldVerifyKey(key_id, key, ts))
    return tuple(out)


def _v_trusted_key_servers(v: Any) -> tuple[TrustedKeyServer, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise ValueError("must be a list of {server_name, verify_keys}")
    out = []
    for item in v:
        if not isinstance(item, dict) or "server_name" not in item or not set(item) <= {"server_name", "verify_keys"}:
            raise ValueError("each entry must have server_name and verify_keys")
        name = _v_server_name(item["server_name"])
        keys = item.get("verify_keys") or {}
        if not isinstance(keys, dict):
            raise ValueError(f"verify_keys of {name} must map key ids to base64 keys")
        if not keys:
            # Trusting whatever key a notary first presents would let anyone who can
            # intercept that first request vouch for every server's keys.
            raise ValueError(f"{name} has no verify_keys; give the notary's ed25519 key(s), trust on first use is not supported")
        out.append(TrustedKeyServer(name, tuple(sorted(_check_public_key(k, kv) for k, kv in keys.items()))))
    return tuple(out)


# -- the option table -----------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One configuration option: its name, validator and documentation."""

    name: str
    check: Callable[[Any], Any]
    doc: str
    example: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option("server_name", _v_server_name,
           "The server name: the part after ':' in user ids and room aliases; 'host' or 'host:port'.\n"
           "Peers reach us at this host and port (8448 when no port is given; no .well-known/SRV here)."),
    Option("database_path", _v_path, "SQLite database file (created on first start)."),
    Option("database", _v_database,
           "Database engine. {backend: sqlite} (the default) uses database_path. For PostgreSQL:\n"
           "{backend: postgresql, dsn: 'postgresql://user@host/dbname', schema: null, readers: 4};\n"
           "dsn is a libpq connection string or URL (a password can also come from ~/.pgpass or\n"
           "PGPASSWORD), schema an existing schema (null: public), readers the connections serving\n"
           "reads in parallel besides the one writer. The database must be UTF8 with collation C\n"
           "(see docs/operators.md). Needs pip install 'fedserver[postgres]'.",
           "database:\n  backend: postgresql\n  dsn: 'postgresql://fedserver@localhost/fedserver'"),
    Option("signing_key_path", _v_path,
           "ed25519 signing key file ('ed25519 VERSION BASE64'), generated on first start and kept."),
    Option("tls_certificate_path", _v_path,
           "PEM TLS certificate for the federation listener. Generated (self-signed, for the\n"
           "server name's host) on first start if it and the key are missing."),
    Option("tls_private_key_path", _v_path, "PEM private key of the TLS certificate."),
    Option("federation_listen", _v_listen,
           "Where the federation API listens, over TLS with the files above: PORT, IPV4:PORT or\n"
           "[IPV6]:PORT; or a Twisted endpoint description used verbatim, e.g. 'tcp:8448' behind a\n"
           "TLS-terminating proxy."),
    Option("client_listen", _v_listen,
           "Where the client API listens, plain HTTP (PORT, HOST:PORT or an endpoint description)."),
    Option("key_validity_period", _v_int(MIN_KEY_VALIDITY_MS, MAX_KEY_VALIDITY_MS),
           "How long (ms) a published key response is valid (valid_until_ts = now + this).\n"
           "1 hour to 7 days: receivers ignore anything beyond 7 days."),
    Option("old_verify_keys", _v_old_verify_keys,
           "Keys we used to sign with, still published so old signatures verify.",
           "old_verify_keys:\n  - key_id: 'ed25519:old1'\n    key: 'BASE64PUBLICKEY'\n    expired_ts: 1700000000000"),
    Option("trusted_key_servers", _v_trusted_key_servers,
           "Notaries asked for other servers' keys when direct fetching fails; empty means none.\n"
           "Each needs the notary's own verify_keys: its answers must be signed by one of them.",
           "trusted_key_servers:\n  - server_name: 'matrix.org'\n    verify_keys:\n"
           "      'ed25519:auto': 'Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw'"),
    Option("federation_verify_certificates", _v_bool,
           "Verify peers' TLS certificates. Turn off only for loopback test peers with self-signed certificates."),
    Option("federation_allow_private_addresses", _v_bool,
           "Allow outbound federation to loopback/private/link-local addresses (tests only)."),
    Option("federation_client_timeout", _v_seconds, "Seconds before an outbound federation request gives up."),
    Option("partial_state_joins", _v_bool,
           "Join rooms on other servers with partial state (send_join omit_members, MSC3706): the join\n"
           "answers as soon as the room's state without its members checks out, and the members are\n"
           "fetched in the background. False asks for the full state before answering."),
    Option("serve_partial_state", _v_bool,
           "Answer other servers' joins to our rooms with partial state when they ask (send_join\n"
           "omit_members): the room's members are left out and fetched by them afterwards."),
    Option("public_rooms_over_federation", _v_bool,
           "Show the room directory (the rooms published with visibility public) to other servers\n"
           "(GET/POST /_matrix/federation/v1/publicRooms). False answers them 403."),
    Option("send_join_max_response_size", _v_int(1024 * 1024),
           "Largest send_join or /state answer accepted when joining a room, in bytes (read and stored as\n"
           "it arrives, never held whole). The default fits the largest public rooms."),
    Option("outbound_max_retry_interval", _v_seconds,
           "Upper bound (seconds) of the backoff between retries to an unreachable destination."),
    Option("plugins", _v_str_list,
           "Extra plugin modules (dotted paths) to load besides the 'fedserver' entry points.",
           "plugins:\n  - 'mycompany.fedserver_rules'"),
    Option("plugin_config", _v_plugin_config,
           "Options for plugins, by plugin name (each plugin documents its own).",
           "plugin_config:\n  policy_server:\n    when_unreachable: open"),
    Option("disabled_plugins", _v_str_list, "Names of plugins not to load (built-in essential rules cannot be disabled)."),
    Option("max_request_body_size", _v_int(1024),
           "Largest request body accepted, in bytes; larger ones get 413 M_TOO_LARGE while reading."),
    Option("http_header_timeout", _v_seconds,
           "Seconds a connection has to send a request's line and headers (from the connection, TLS\n"
           "handshake included, or from the request's first byte), however slowly they trickle in;\n"
           "then it is closed."),
    Option("http_body_timeout", _v_seconds,
           "Seconds of grace for a request body; after it, the body must have arrived at\n"
           "http_body_min_rate bytes per second on average, or the connection is closed."),
    Option("http_body_min_rate", _v_int(1), "Least average rate (bytes per second) of a request body after http_body_timeout."),
    Option("http_idle_timeout", _v_seconds,
           "Seconds a keep-alive connection may wait for its next request (or a response may make\n"
           "no progress towards a client that does not read it). A request being answered, such as\n"
           "a long-polling /sync, has no deadline."),
    Option("max_connections", _v_optional_int(1),
           "Open connections over both listeners. null: the file-descriptor limit (RLIMIT_NOFILE)\n"
           "minus a quarter of it (at least 256) kept for the database, logs and outbound federation.\n"
           "At the cap a new connection replaces the one waiting longest for its request or idling\n"
           "longest; if every connection is busy with a request, the new one is closed at once."),
    Option("max_connections_per_address", _v_int(1),
           "Open connections from one IPv4 address or IPv6 /64 (beyond it: as for max_connections)."),
    Option("connection_limit_exempt", _v_networks,
           "Addresses or networks not subject to max_connections_per_address (still counted in\n"
           "max_connections), e.g. a reverse proxy's. Loopback by default."),
    Option("enable_registration", _v_bool, "Allow open registration on the client API."),
    Option("registration_shared_secret", _v_optional_secret,
           "Shared secret for admin registration (/_synapse/admin/v1/register style); null disables it."),
    Option("default_room_version", _v_room_version,
           "Room version of rooms created without one (a spec version, or one a plugin registers)."),
    Option("media_store_path", _v_optional_path,
           "Directory of the media repository's files (content-addressed, see docs/operators.md);\n"
           "null: 'media_store' next to database_path."),
    Option("max_upload_size", _v_int(1024),
           "Largest upload in bytes (413 M_TOO_LARGE while reading), and largest remote media fetched\n"
           "for our users (502 M_TOO_LARGE beyond it)."),
    Option("media_user_quota", _v_optional_int(0),
           "Total bytes of media each local user may have uploaded; null for no quota (403 M_FORBIDDEN beyond it)."),
    Option("max_image_pixels", _v_int(1),
           "Largest image (width x height, per frame) decoded to make a thumbnail; larger ones get none."),
    Option("enable_legacy_media", _v_legacy_media,
           "The deprecated unauthenticated /_matrix/media/*/download and /thumbnail endpoints. false: frozen\n"
           "for all media (spec v1.11 'freeze'); true: serve all media; or a date ('2025-01-31') or ms\n"
           "timestamp: serve media stored before that moment only."),
    Option("remote_media_lifetime", _v_optional_seconds,
           "Seconds cached media of other servers is kept after it was last downloaded (checked every hour;\n"
           "fetched again if asked for later); null: kept until purged through the admin API or\n"
           "fedserver-purge-media. Files no database row refers to are deleted by the same hourly run."),
    Option("url_preview_enabled", _v_bool,
           "Serve /preview_url: the server fetches pages that users ask about (off by default)."),
    Option("url_preview_ip_blocklist", _v_networks,
           "IP networks URL previews never connect to (default: loopback, private, link-local, reserved)."),
    Option("url_preview_ip_allowlist", _v_networks,
           "IP networks URL previews may connect to even if the blocklist covers them."),
    Option("url_preview_max_size", _v_int(1024), "Largest page or image, in bytes, fetched for a URL preview."),
    Option("url_preview_timeout", _v_seconds, "Seconds a URL preview fetch may take in total."),
    Option("presence_enabled", _v_bool,
           "Track presence (online/unavailable/offline) and share it with users and servers that share a room.\n"
           "Off: presence requests are answered, but everyone shows as offline and no presence is sent."),
    Option("push_gateway_allow_http", _v_bool,
           "Accept pushers whose push gateway URL is plain http:// (the spec requires https; tests only)."),
    Option("push_gateway_allow_private_addresses", _v_bool,
           "Allow push gateways on loopback/private/link-local addresses (pusher URLs come from users)."),
    Option("serve_well_known", _v_bool,
           "Serve /.well-known/matrix/server and /.well-known/matrix/client on both listeners. Use it\n"
           "when requests to https://<server name host>/.well-known/ reach this server (e.g. through a\n"
           "reverse proxy on port 443)."),
    Option("well_known_server", _v_optional_server_name,
           "The m.server of /.well-known/matrix/server ('host' or 'host:port'); null means\n"
           "'<server name host>:443', a reverse proxy terminating TLS on the usual port."),
    Option("public_baseurl", _v_optional_base_url,
           "The base URL clients reach the client API at (/.well-known/matrix/client); null means\n"
           "'https://<server name host>', a reverse proxy on port 443."),
    Option("log_level", _v_log_level, "Least severe log level shown: debug, info, warn, error or critical."),
    Option("log_format", _v_log_format,
           "text: one line per event ('time [namespace#level] [request id] message'); json: one JSON\n"
           "object per line (time, level, namespace, message, request_id and the event's fields)."),
    Option("log_file", _v_optional_path,
           "null: log where twistd logs (stdout with -n, else --logfile or twistd.log). A path: fedserver\n"
           "writes its log there itself, rotated at log_max_bytes; SIGHUP reopens it (for logrotate)."),
    Option("log_max_bytes", _v_int(0),
           "Size at which log_file is rotated (name.1 is the newest old file); 0: never (logrotate does it)."),
    Option("log_backups", _v_int(1), "How many rotated log files are kept."),
    Option("access_log", _v_bool,
           "Log one line per request (client, method, path, status, time; access tokens hidden). Slow\n"
           "requests are logged whatever this says."),
    Option("slow_request_threshold", _v_seconds,
           "Requests taking longer than this many seconds are logged as slow, at warn (a long poll's own\n"
           "timeout is not counted)."),
    Option("trusted_proxies", _v_networks,
           "Reverse proxies (addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto headers\n"
           "are believed: the client address they give is used by rate limits and logs. From any other\n"
           "address these headers are ignored. Trusted proxies are exempt from max_connections_per_address.",
           "trusted_proxies:\n  - '127.0.0.1'\n  - '::1'"),
    Option("metrics_listen", _v_optional_listen,
           "Where Prometheus metrics are served (GET /metrics, plain HTTP), e.g. '127.0.0.1:9100'; null: off.\n"
           "Keep it off the public ports: the metrics show rooms, servers and traffic."),
)

_OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}
assert set(_OPTIONS_BY_NAME) == {f.name for f in dataclasses.fields(Config)}, "OPTIONS and Config disagree"


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Validate raw option values (as in the YAML file) and build a :class:`Config`.

    Missing options take their defaults.

    :raises ConfigError: naming the first unknown option or bad value.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError("the configuration must be a mapping of option: value")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        opt = _OPTIONS_BY_NAME.get(name) if isinstance(name, str) else None
        if opt is None:
            raise ConfigError(f"unknown configuration option {name!r}{_suggest(name)}")
        try:
            values[name] = opt.check(value)
        except ValueError as e:
            raise ConfigError(f"invalid value for option {name!r}: {_one_line(str(e))}") from None
    return Config(**values)


def _suggest(name: Any) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), list(_OPTIONS_BY_NAME), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_line(s: str) -> str:
    return " ".join(s.split())


def parse_yaml(text: str, source: str = "configuration") -> dict[str, Any]:
    """Parse a YAML configuration document (empty means all defaults).

    :raises ConfigError: for YAML syntax errors or a document that is not a mapping.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: {problem}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping of option: value")
    return data


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load the YAML file at ``path`` (if any), apply ``overrides`` and validate.

    :param path: YAML file; ``None`` for defaults only.
    :param overrides: raw option values taking precedence over the file (command line).
    :raises ConfigError: one line naming the file problem, unknown option or bad value.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8") from None
        raw = parse_yaml(text, path)
    if overrides:
        raw.update(overrides)
    return config_from_dict(raw)


def to_raw(config: Config) -> dict[str, Any]:
    """:returns: the configuration as plain YAML-able values (inverse of :func:`config_from_dict`)."""
    raw: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        v = getattr(config, f.name)
        if f.name == "old_verify_keys":
            v = [{"key_id": k.key_id, "key": k.key, "expired_ts": k.expired_ts} for k in v]
        elif f.name == "trusted_key_servers":
            v = [{"server_name": t.server_name, "verify_keys": t.verify_keys_map()} for t in v]
        elif f.name == "database":
            v = {"backend": v.backend} if v.backend == "sqlite" else dataclasses.asdict(v)
        elif isinstance(v, tuple):
            v = list(v)
        raw[f.name] = v
    return raw


def generate_config_text(config: Config | None = None) -> str:
    """Render a commented YAML configuration file holding ``config`` (defaults if ``None``).

    Loading the text back gives an equal :class:`Config`.
    """
    config = config or Config()
    raw = to_raw(config)
    out = [
        "# fedserver configuration. Every option is shown with its current value; delete",
        "# lines to fall back to the built-in defaults. Relative paths are relative to the",
        "# directory the server is started in. Command-line options override this file.",
        "",
    ]
    for opt in OPTIONS:
        out.extend("# " + line for line in opt.doc.splitlines())
        if opt.example and (not raw[opt.name] or raw[opt.name] == {"backend": "sqlite"}):
            out.append("# Example:")
            out.extend("#   " + line for line in opt.example.splitlines())
        dumped = yaml.safe_dump({opt.name: raw[opt.name]}, default_flow_style=False, sort_keys=False)
        out.append(dumped.rstrip("\n"))
        out.append("")
    return "\n".join(out)
