"""twistd wiring: command-line Options and makeService, the only place that assembles the server."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

import yaml
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
)
from twisted.python import usage
from twisted.python.failure import Failure

from fedserver import __version__
from fedserver.background import log_background_failure
from fedserver.auth.plugins import PluginError, make_plugin_manager, registered_room_versions
from fedserver.config import Config, ConfigError, is_endpoint_description, generate_config_text, listen_description, load_config
from fedserver.crypto import KeyFileError, key_id, load_or_generate_signing_key, load_or_generate_tls, verify_key_base64
from fedserver.federation.acl import ServerAcls
from fedserver.federation.client import build_federation_client, fed_path
from fedserver.federation.keyring import DirectKeyFetcher, Keyring, NotaryKeyFetcher
from fedserver.federation.sender import FederationSender
from fedserver.auth.engine import AuthEngine
from fedserver.handlers.rooms.creator import EventCreator
from fedserver.handlers.federation.backfill import BackfillHandler
from fedserver.handlers.federation.failures import FAILURE_EDU_TYPE, FailureReporter
from fedserver.handlers.federation.gaps import GapFiller
from fedserver.handlers.federation.handshakes import HandshakeHandler
from fedserver.handlers.federation.served import ServedPdus
from fedserver.handlers.federation.history import EventStatusHandler, HistoryHandler
from fedserver.handlers.federation.ingest import Ingest
from fedserver.handlers.federation.partial_state import PartialStateResync
from fedserver.handlers.rooms.pipeline import RoomPipeline
from fedserver.handlers.client.profile import ProfileHandler
from fedserver.handlers.federation.receive import EventReceiver
from fedserver.handlers.federation.remote_membership import RemoteMembership
from fedserver.handlers.federation.transactions import TransactionHandler
from fedserver.handlers.admin.destinations import AdminDestinations
from fedserver.handlers.admin.rooms import AdminRooms, RoomBlocks
from fedserver.handlers.admin.users import AdminUsers
from fedserver.http.admin.manage import AdminAuth, AdminHandlers, register_admin_routes
from fedserver.http.admin.registration import build_admin_api
from fedserver.http.admin.events import build_admin_events_resources
from fedserver.http.admin.failures import build_admin_failures_resource
from fedserver.http.admin.media import build_admin_media_resource
from fedserver.handlers.media.upkeep import MediaUpkeep
from fedserver.handlers.media.download import MediaDownloader
from fedserver.handlers.media.files import MediaFiles
from fedserver.handlers.media.thumbnails import Thumbnailer
from fedserver.handlers.media.upload import MediaUploader, UploadWaiters
from fedserver.http.client.media import (
    MEDIA_PATH,
    MediaRoutes,
    UploadBodies,
    build_legacy_download_resource,
    build_media_resource,
    media_request_factory,
    register_client_media_routes,
)
from fedserver.http.federation.media import register_federation_media_routes
from fedserver.http.client.api import build_account_services, build_client_api
from fedserver.http.client.keys import build_e2ee_services, register_key_routes
from fedserver.http.client.room_keys import register_room_keys_routes
from fedserver.http.client.to_device import register_to_device_routes
from fedserver.handlers.client.tags import TagsHandler
from fedserver.handlers.client.user_directory import UserDirectoryHandler
from fedserver.http.client.ephemeral import build_ephemeral_services, register_ephemeral_routes
from fedserver.http.client.push import build_push_services, register_push_routes
from fedserver.http.client.rooms import build_room_services, register_room_routes
from fedserver.http.client.user_data import register_tag_routes, register_user_directory_routes
from fedserver.http.federation.public_rooms import register_public_rooms_routes
from fedserver.http.federation.hierarchy import register_federation_hierarchy_routes
from fedserver.http.client.hierarchy import register_hierarchy_routes
from fedserver.handlers.rooms.hierarchy import SpaceHierarchy
from fedserver.http.client.deactivate import register_deactivation_routes
from fedserver.handlers.client.deactivate import AccountDeactivation
from fedserver.http.push_gateway import PushGatewayClient
from fedserver.http.wellknown import WELL_KNOWN_PATH, build_well_known_resource
from fedserver.http.federation.transport import FederationResource
from fedserver.http.federation.history import register_history_routes
from fedserver.http.federation.membership import register_membership_routes
from fedserver.http.federation.user_keys import register_user_keys_routes
from fedserver.http.federation.keys import ServerKeyDocument, ServerKeyResource
from fedserver.http.federation.notary import NotaryResource, NotaryService
from fedserver.http.connections import (
    ConnectionLimits,
    ConnectionRegistry,
    GuardedFactory,
    auto_max_connections,
    fd_limit,
)
from fedserver.http.resource import MatrixSite
from fedserver.http.site import StartingResource, build_client_root, build_federation_root
from fedserver.http.federation.xmatrix_auth import XMatrixAuthenticator
from fedserver.room_versions import RoomVersionRegistry
from fedserver.storage.interface import StorageUnavailableError
from fedserver.storage.plugin_view import PluginStoreView
from fedserver.storage.server_lock import ServerLock, ServerLockError, acquire_server_lock
from fedserver.storage.sqlite import open_store

if TYPE_CHECKING:  # the components' types, for readers and the type checker (no import cost)
    from fedserver.federation.client import FederationClient
    from fedserver.http.client.ephemeral import EphemeralServices
    from fedserver.http.client.push import PushServices
    from fedserver.storage.sqlite import SQLiteStore


log = Logger()

#: How often answered inbound transactions are pruned, and how long they are kept (a
#: replay after that is processed again, which is harmless: events are stored once).
PRUNE_RECEIVED_TXNS_EVERY_S = 3600.0
KEEP_RECEIVED_TXNS_MS = 24 * 3600 * 1000
#: Notifications (GET /notifications, unread counts) are pruned in the same loop: read
#: ones after 30 days, unread ones (which the unread counts are made of) after a year.
KEEP_READ_NOTIFICATIONS_MS = 30 * 24 * 3600 * 1000
KEEP_UNREAD_NOTIFICATIONS_MS = 365 * 24 * 3600 * 1000
#: Client transaction ids (PUT .../send/{type}/{txnId}) in the same loop, after a week: a
#: client retries a request within minutes, or after coming back online; /sync's
#: ``unsigned.transaction_id`` (for local echo) is only needed while the send is fresh.
KEEP_CLIENT_TXNS_MS = 7 * 24 * 3600 * 1000
#: First retry delay of an unreachable destination (doubling up to
#: ``outbound_max_retry_interval``).
OUTBOUND_MIN_RETRY_MS = 2_000

# Command-line flags that override one config option each (anything else: --set).
_OVERRIDES = {
    "server-name": "server_name",
    "database": "database_path",
    "signing-key": "signing_key_path",
    "tls-cert": "tls_certificate_path",
    "tls-key": "tls_private_key_path",
    "federation-listen": "federation_listen",
    "client-listen": "client_listen",
    "log-level": "log_level",
}


class Options(usage.Options):
    """``twistd fedserver`` options: a config file, overrides, and --generate-config."""

    synopsis = "[--config FILE] [--generate-config] [options]"
    longdesc = (
        "Run fedserver, a federating Matrix homeserver. With no options it serves server name "
        "localhost:8448 with files in the current directory, federation over TLS on port 8448 "
        "and the client API on 127.0.0.1:8008. Command-line options override the config file."
    )
    optFlags = [
        ["generate-config", None, "Write a commented config file (to --config, which must not exist, or stdout) and exit."],
    ]
    optParameters = [
        ["config", "c", None, "YAML configuration file."],
        ["server-name", None, None, "Server name (host or host:port)."],
        ["database", None, None, "SQLite database file."],
        ["signing-key", None, None, "ed25519 signing key file (generated if missing)."],
        ["tls-cert", None, None, "TLS certificate (PEM; self-signed one generated if missing)."],
        ["tls-key", None, None, "TLS private key (PEM)."],
        ["federation-listen", None, None, "Federation listener: PORT, HOST:PORT or endpoint description."],
        ["client-listen", None, None, "Client listener: PORT, HOST:PORT or endpoint description."],
        ["log-level", None, None, "debug, info, warn, error or critical."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["set"] = []
        self.config: Config | None = None

    def opt_set(self, value: str) -> None:
        """Set any config option: --set NAME=VALUE (VALUE is YAML; repeatable)."""
        name, sep, raw = value.partition("=")
        if not sep or not name.strip():
            raise usage.UsageError(f"--set expects NAME=VALUE, got {value!r}")
        try:
            parsed = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise usage.UsageError(f"--set {name.strip()}: value is not valid YAML") from None
        self["set"].append((name.strip(), parsed))

    def overrides(self) -> dict[str, Any]:
        """:returns: the raw option values given on the command line."""
        out: dict[str, Any] = {}
        for flag, name in _OVERRIDES.items():
            if self[flag] is not None:
                out[name] = self[flag]
        out.update(self["set"])
        return out

    def postOptions(self) -> None:
        path = self["config"]
        if self["generate-config"]:
            self._generate_config(path)
        try:
            self.config = load_config(path, self.overrides())
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def _generate_config(self, path: str | None) -> None:
        try:
            text = generate_config_text(load_config(None, self.overrides()))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if path is None:
            sys.stdout.write(text)
            raise SystemExit(0)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise usage.UsageError(f"--generate-config: {path} already exists; not overwriting it") from None
        except OSError as e:
            raise usage.UsageError(f"--generate-config: cannot create {path}: {e.strerror}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        sys.stderr.write(f"Wrote {path}\n")
        raise SystemExit(0)


class ListenerService(service.Service):
    """Listens on a strports description with ``factory``; binding failures raise at startup.
    Connections are admitted through ``registry`` (caps shared by all listeners, see
    :mod:`fedserver.http.connections`). Stopping stops listening and closes the connections
    still open.

    :ivar port: the :class:`IListeningPort` once listening.
    """

    def __init__(
        self, label: str, description: str, factory: Any, reactor: Any, scheme: str,
        registry: ConnectionRegistry | None = None,
    ) -> None:
        self.label = label
        self.description = description
        self.factory = factory
        if registry is None:
            registry = ConnectionRegistry(reactor, ConnectionLimits())
        self._tracker = GuardedFactory(factory, reactor, registry)
        self._reactor = reactor
        self._scheme = scheme
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # Bind here, before privileges are dropped and synchronously, so that a port that is
        # in use stops twistd with an error instead of leaving a server that is not listening.
        results: list[Any] = []
        serverFromString(self._reactor, self.description).listen(self._tracker).addBoth(results.append)
        if not results:
            raise RuntimeError(f"{self.label}: endpoint {self.description!r} did not listen synchronously")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        self.port = results[0]
        host = self.port.getHost()
        where = f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}" if hasattr(host, "port") else str(host)
        log.info("{label} listening on {scheme}://{where}", label=self.label, scheme=self._scheme, where=where)
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        service.Service.startService(self)

    def open_connections(self) -> int:
        """:returns: how many connections to this listener are open."""
        return len(self._tracker.protocols)

    def stopService(self) -> defer.Deferred | None:
        service.Service.stopService(self)
        port, self.port = self.port, None
        if port is None:
            return None
        d = defer.maybeDeferred(port.stopListening)
        d.addCallback(lambda _: self._tracker.close_all())
        return d


def connection_limits(config: Config, fds: int | None = None) -> ConnectionLimits:
    """The :class:`ConnectionLimits` of ``config``; ``max_connections: null`` is derived
    from the file-descriptor limit ``fds`` (this process's soft RLIMIT_NOFILE by default)."""
    import ipaddress

    total = config.max_connections
    if total is None:
        total = auto_max_connections(fd_limit() if fds is None else fds)
    return ConnectionLimits(
        header_timeout=config.http_header_timeout,
        body_timeout=config.http_body_timeout,
        body_min_rate=config.http_body_min_rate,
        idle_timeout=config.http_idle_timeout,
        max_connections=total,
        max_connections_per_address=config.max_connections_per_address,
        # A trusted reverse proxy brings many clients over its own address.
        exempt=tuple(
            ipaddress.ip_network(n, strict=False) for n in (*config.connection_limit_exempt, *config.trusted_proxies)
        ),
    )


class _SystemDnsResolver:
    """The SRV resolver for server discovery: twisted.names over ``/etc/resolv.conf``
    (re-read every minute) behind a cache, built on the injected reactor, with a
    :meth:`stop` that cancels its timers so a stopped server leaves none behind."""

    def __init__(self, reactor: Any, resolv_conf: bytes = b"/etc/resolv.conf") -> None:
        from twisted.names import cache, client, resolve

        class _Resolver(client.Resolver):
            def stop(self) -> None:
                self.resolv = None  # no further re-reads
                call = getattr(self, "_parseCall", None)
                if call is not None and call.active():
                    call.cancel()

        self._cache = cache.CacheResolver(reactor=reactor)
        self._resolver = _Resolver(resolv=resolv_conf, reactor=reactor)
        self.chain = resolve.ResolverChain([self._cache, self._resolver])

    def stop(self) -> None:
        """Cancel the resolv.conf re-reads and the cache expiry timers."""
        self._resolver.stop()
        for call in list(getattr(self._cache, "cancel", {}).values()):
            if call.active():
                call.cancel()


class FedserverService(service.MultiService):
    """The running server: plugins, keys, listeners, and (once started) the store and the
    federation machinery.

    Construction builds the plugin manager and loads or generates the signing key and TLS
    files (all fail fast); starting binds both listeners, then opens the store, wires the
    federation components (:meth:`_wire_federation`), installs the URL trees and starts the
    outbound sender.

    Once ready, these attributes hold the components (for later features to build on):
    ``store``, ``federation_client``, ``keyring``, ``notary``, ``authenticator``, ``acls``,
    ``ingest``, ``transactions``, ``sender``, ``profiles`` and ``federation_resource``.

    :param config: the validated configuration.
    :param reactor: the reactor (injected; tests pass their own).
    :param log_observer: installed as the twistd application's log observer (applies
        ``log_level``); ``None`` to leave logging alone.
    :param on_fatal: called if starting fails after the listeners are bound (e.g. the
        database cannot be opened); twistd's makeService passes one that stops the process
        with a non-zero status. Either way :meth:`when_ready` fails.
    :raises KeyFileError: if key or certificate files are malformed.
    :raises PluginError: if the plugin configuration is wrong.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        log_observer: Any = None,
        on_fatal: Callable[[Failure], None] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self._on_fatal = on_fatal
        self._log_observer = log_observer
        # Plugins first: a bad plugin configuration must stop the start before anything binds.
        self.plugin_manager = make_plugin_manager(
            load_entrypoints=True, module_paths=config.plugins, disabled=config.disabled_plugins
        )
        self.room_versions = RoomVersionRegistry(registered_room_versions(self.plugin_manager))
        if config.default_room_version not in self.room_versions:
            raise ConfigError(
                f"invalid value for option 'default_room_version': {config.default_room_version!r} is not a "
                f"supported room version ({', '.join(self.room_versions.identifiers())})"
            )
        self.signing_key, self.key_generated = load_or_generate_signing_key(config.signing_key_path)
        self.key_id = key_id(self.signing_key)

        fed_desc = config.federation_listen
        self.tls = None
        if not is_endpoint_description(fed_desc):
            self.tls = load_or_generate_tls(config.tls_certificate_path, config.tls_private_key_path, config.server_host)
            fed_desc = listen_description(
                fed_desc, tls_certificate=config.tls_certificate_path, tls_private_key=config.tls_private_key_path
            )
        client_desc = listen_description(config.client_listen)

        self.key_document = ServerKeyDocument(
            config.server_name, self.signing_key, reactor, config.key_validity_period, config.old_verify_keys
        )
        # Both listeners share one set of connection caps (file descriptors are shared).
        self.connection_limits = connection_limits(config)
        self.connections = ConnectionRegistry(reactor, self.connection_limits)
        site_options = dict(
            max_request_body_size=config.max_request_body_size, reactor=reactor, limits=self.connection_limits,
            trusted_proxies=config.trusted_proxies, slow_request_threshold=config.slow_request_threshold,
            access_log=config.access_log,
        )
        self.federation_site = MatrixSite(StartingResource(), log_name="federation", **site_options)
        self.client_site = MatrixSite(StartingResource(), cors=True, log_name="client", **site_options)
        scheme = "https" if fed_desc.startswith("ssl:") else "http"
        self.federation_listener = ListenerService(
            "Federation API", fed_desc, self.federation_site, reactor, scheme, self.connections
        )
        self.client_listener = ListenerService("Client API", client_desc, self.client_site, reactor, "http", self.connections)
        self.federation_listener.setServiceParent(self)
        self.client_listener.setServiceParent(self)
        # Prometheus metrics on a listener of their own (off unless metrics_listen is set).
        self.metrics: Any = None  # a fedserver.metrics.ServerMetrics when metrics are on
        self.metrics_listener: ListenerService | None = None
        if config.metrics_listen is not None:
            # Imported here: prometheus_client and its exposition (http.server, wsgiref,
            # gzip, ...) stay out of the memory of a server that does not serve metrics.
            from fedserver.http.metrics import build_metrics_root
            from fedserver.metrics import ServerMetrics

            self.metrics = ServerMetrics(reactor, self._metrics_sample)
            metrics_site = MatrixSite(build_metrics_root(self.metrics), log_name="metrics", reactor=reactor, access_log=False)
            self.metrics_listener = ListenerService(
                "Metrics", listen_description(config.metrics_listen), metrics_site, reactor, "http",
                ConnectionRegistry(reactor, ConnectionLimits(max_connections=64)),
            )
            self.metrics_listener.setServiceParent(self)

        self.store: SQLiteStore | None = None
        self.federation_client: FederationClient | None = None
        self.keyring: Keyring | None = None
        self.notary: NotaryService | None = None
        self.authenticator: XMatrixAuthenticator | None = None
        self.acls: ServerAcls | None = None
        self.ingest: Ingest | None = None
        self.transactions: TransactionHandler | None = None
        self.sender: FederationSender | None = None
        self.profiles: ProfileHandler | None = None
        self.federation_resource: FederationResource | None = None
        self.ephemeral: EphemeralServices | None = None
        self.push: PushServices | None = None
        self.push_gateway: PushGatewayClient | None = None
        self.well_known_resources: dict[str, Any] = {}
        self.user_directory: UserDirectoryHandler | None = None
        self.deactivation: AccountDeactivation | None = None
        self._prune_loop: LoopingCall | None = None
        self._dns: _SystemDnsResolver | None = None
        self._ready_result: Any = None
        self._server_lock: ServerLock | None = None
        self._ready_waiters: list[defer.Deferred] = []

    def setServiceParent(self, parent: Any) -> None:
        if self._log_observer is not None and hasattr(parent, "setComponent"):
            # twistd's AppLogger uses the application's ILogObserver component when set.
            parent.setComponent(ILogObserver, self._log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        log.info(
            "fedserver {version}: server name {name}, signing key {key_id} ({how}, public key {pub})",
            version=__version__,
            name=self.config.server_name,
            key_id=self.key_id,
            how="generated" if self.key_generated else f"loaded from {self.config.signing_key_path}",
            pub=verify_key_base64(self.signing_key),
        )
        if self.tls is not None:
            log.info(
                "TLS certificate {path} ({how}), SHA-256 fingerprint {fp}",
                path=self.tls.certificate_path,
                how="self-signed, generated" if self.tls.generated else "loaded",
                fp=self.tls.fingerprint_sha256,
            )
        limits, fds = self.connection_limits, fd_limit()
        log.info(
            "Connections: at most {max} open ({why}), {per} per address; request head within {head} s, "
            "body at {rate} B/s after {body} s, idle keep-alive {idle} s",
            max=limits.max_connections,
            why="configured" if self.config.max_connections is not None else f"file-descriptor limit {fds} minus a reserve",
            per=limits.max_connections_per_address, head=limits.header_timeout, rate=limits.body_min_rate,
            body=limits.body_timeout, idle=limits.idle_timeout,
        )
        if fds is not None and limits.max_connections > fds - 64:
            log.warn(
                "max_connections {max} leaves fewer than 64 of the {fds} file descriptors (RLIMIT_NOFILE) for the "
                "database, logs and outbound federation; new connections may be refused at the limit",
                max=limits.max_connections, fds=fds,
            )
        d = defer.ensureDeferred(self._finish_start())
        d.addCallbacks(self._started, self._start_failed)

    async def _finish_start(self) -> None:
        # One server per database: a second one refuses to start (see server_lock).
        self._server_lock = await acquire_server_lock(self.config.store_target(), self.reactor)
        self.store = await open_store(self.config.store_target(), self.reactor, registry=self.room_versions)
        self._wire_federation(self.store)
        await self._wire_rooms(self.store)
        # Plugins that need the running server (e.g. a policy server client) set up now.
        self.plugin_manager.hook.fedserver_on_start(
            reactor=self.reactor, server_name=self.config.server_name,
            federation_client=self.federation_client, store=PluginStoreView(self.store),
            plugin_manager=self.plugin_manager, plugin_config=self.config.plugin_config,
        )
        self.engine.reload_hooks()
        self.federation_site.resource = build_federation_root(
            server_keys=ServerKeyResource(self.key_document),
            key_query=NotaryResource(self.notary),
            federation_v1=self.federation_resource,
            federation_v2=self.federation_v2_resource,
            extra={MEDIA_PATH: self.legacy_media_resource, **self.well_known_resources},
        )
        self.client_site.resource = build_client_root(
            client=self.client_api, extra={**self.admin_resources, MEDIA_PATH: self.media_resource, **self.well_known_resources}
        )
        # Databases from before schema 005 may hold events committed but never queued:
        # their latest local events go out once more (a no-op afterwards).
        requeued = await self.store.requeue_unsent_local_events(self.config.server_name)
        if requeued:
            log.info("Queued the latest local events of {n} rooms again (schema upgrade)", n=len(requeued))
        await self.sender.start()
        await self.resync.resume()
        await self.ephemeral.presence.start()
        # Users whose deactivation was cut short by a stop leave their remaining rooms.
        defer.ensureDeferred(self.deactivation.resume()).addErrback(
            log_background_failure, "Resuming deactivations failed", logger=log
        )
        self.user_directory.index()
        self.media_upkeep.start()
        self._wire_metrics()
        self._prune_loop = LoopingCall(self._prune_received_txns)
        self._prune_loop.clock = self.reactor
        self._prune_loop.start(PRUNE_RECEIVED_TXNS_EVERY_S, now=True)

    def _wire_federation(self, store: Any) -> None:
        """Build the federation components around ``store`` (the only place they meet)."""
        config, reactor, name = self.config, self.reactor, self.config.server_name
        self._dns = _SystemDnsResolver(reactor)
        client = self.federation_client = build_federation_client(
            reactor,
            name,
            self.signing_key,
            srv_resolver=self._dns.chain,
            verify_tls=config.federation_verify_certificates,
            allow_private_addresses=config.federation_allow_private_addresses,
            timeout=config.federation_client_timeout,
        )
        # Keys: directly from each server, then from the configured notaries.
        fetchers: list[Any] = [DirectKeyFetcher(lambda dest, path: client.get_json(dest, path, sign=False))]
        if config.trusted_key_servers:
            notaries = [(n.server_name, n.verify_keys_map()) for n in config.trusted_key_servers]
            fetchers.append(NotaryKeyFetcher(client.post_json, notaries))
        self.keyring = Keyring(
            reactor, store, fetchers, name, {self.key_id: self.signing_key.verify_key},
            threadpool=reactor.getThreadPool(), parallel_threshold=16,
        )
        self.notary = NotaryService(
            reactor, self.keyring, store, name, self.signing_key, own_key_document=self.key_document.current
        )
        # Rooms: the auth engine over the plugins, the one pipeline every event goes through,
        # and the creator of our users' events.
        self.engine = AuthEngine(self.plugin_manager, self.room_versions)
        self.pipeline = RoomPipeline(store, self.engine, self.plugin_manager, server_name=name)
        self.creator = EventCreator(reactor, store, self.pipeline, name, self.signing_key, plugin_manager=self.plugin_manager)
        # Inbound: authenticate, apply ACLs, check PDUs (steps 1-3), take them into their
        # rooms (steps 4-6) with gaps filled from the sender, and tell servers what we refused.
        self.authenticator = XMatrixAuthenticator(self.keyring, name, reactor)
        self.acls = ServerAcls(store)
        self.ingest = Ingest(store, self.keyring)
        self.failures = FailureReporter(store, self._send_edu, name, reactor)
        self.gaps = GapFiller(client, self._check_fetched, store)
        self.receiver = EventReceiver(self.pipeline, store, self.gaps, self.failures)
        # History on demand: /messages paging back past what we hold asks the room's servers.
        self.backfill = BackfillHandler(
            client=client, keyring=self.keyring, store=store, pipeline=self.pipeline, gaps=self.gaps,
            clock=reactor, server_name=name,
        )
        self.transactions = TransactionHandler(reactor, store, self.ingest, self.acls, receiver=self.receiver)
        self.transactions.register_edu_handler(FAILURE_EDU_TYPE, self.failures.on_edu)
        self.profiles = ProfileHandler(store, client, name)
        self.federation_resource = FederationResource(
            self.authenticator, acls=self.acls, transactions=self.transactions, profiles=self.profiles
        )
        self.federation_v2_resource = FederationResource(self.authenticator, acls=self.acls, version_route=False)
        # Every PDU served to other servers goes through here (redactions applied).
        self.served = ServedPdus(store)
        self.history = HistoryHandler(store, name, reactor, served=self.served)
        register_history_routes(self.federation_resource, self.history, acl_check=self.acls.is_allowed)
        # Outbound: the persisted queue; a valid request from a server ends its backoff.
        max_retry_ms = int(config.outbound_max_retry_interval * 1000)
        self.sender = FederationSender(
            reactor,
            store,
            self._put_transaction,
            name,
            min_retry_ms=min(OUTBOUND_MIN_RETRY_MS, max_retry_ms),
            max_retry_ms=max_retry_ms,
        )
        self.authenticator.on_authenticated.append(self.sender.on_server_seen)
        # The pipeline queues events for other servers in the transaction that stores them;
        # once committed, the sender is woken for those servers.
        self.pipeline.on_queued.append(self.sender.wake)

    def _wire_metrics(self) -> None:
        """Hand the metrics' observers to the components that report (if metrics are on)."""
        metrics = self.metrics
        if metrics is None:
            return
        for site in (self.client_site, self.federation_site):
            site.request_observers.append(metrics.observe_request)
        self.store.database.observe_transaction = metrics.observe_db_transaction
        self.pipeline.on_state_resolved.append(metrics.observe_state_resolution)
        self.transactions.on_processed.append(metrics.observe_transaction)
        metrics.live_gauges.update({
            "fedserver_http_open_connections": ("Open connections over the client and federation listeners",
                                                lambda: self.connections.total),
            "fedserver_federation_destinations_sending": ("Destinations with a transaction being sent",
                                                          lambda: self.sender.sending() if self.sender else 0),
            "fedserver_federation_inbound_origins_busy": ("Origins with a transaction being processed or waiting",
                                                          lambda: self.transactions.busy_origins()),
        })
        metrics.start()

    async def _metrics_sample(self) -> Any:
        from fedserver.metrics import Sample

        figures = await self.store.admin.metrics_figures(self.config.server_name)
        return Sample(**figures)

    def _put_transaction(self, destination: str, txn_id: str, body: Any) -> defer.Deferred:
        d = self.federation_client.put_json(destination, fed_path("/_matrix/federation/v1/send/{}", txn_id), body)
        return self.metrics.count_outbound(d) if self.metrics is not None else d

    async def _send_edu(self, edu_type: str, content: Any, destinations: Any) -> None:
        """Queue an EDU through the sender (nothing once the server is stopping)."""
        if self.sender is not None:
            await self.sender.send_edu(edu_type, content, destinations)

    def _wake_destinations(self, destinations: Any) -> None:
        """Start sending what another component queued in its own transaction."""
        if self.sender is not None:
            self.sender.wake(destinations)

    async def _check_fetched(self, origin: str, pdus: list) -> list:
        """Receipt checks 1-3 on events fetched to fill a gap (rooms we know)."""
        batch = await self.ingest.check_pdus(origin, pdus)
        return [entry.event for entry in batch.entries]

    async def _wire_rooms(self, store: Any) -> None:
        """Build the membership handshakes (both roles), accounts, rooms and the client API."""
        config, reactor, name = self.config, self.reactor, self.config.server_name
        # Rooms joined with partial state get their full state in the background.
        self.resync = PartialStateResync(
            client=self.federation_client, keyring=self.keyring, pipeline=self.pipeline, store=store,
            clock=reactor, server_name=name, max_response_size=config.send_join_max_response_size,
        )
        self.remote_membership = RemoteMembership(
            client=self.federation_client, keyring=self.keyring, pipeline=self.pipeline, store=store,
            room_versions=self.room_versions, server_name=name, signing_key=self.signing_key, clock=reactor,
            partial_state_joins=config.partial_state_joins, max_join_size=config.send_join_max_response_size,
            on_partial_join=self.resync.start,
        )
        self.accounts = build_account_services(
            reactor=reactor, store=store, server_name=name,
            enable_registration=config.enable_registration,
            registration_shared_secret=config.registration_shared_secret,
            federation_client=self.federation_client, profiles=self.profiles,
        )
        # Rooms an administrator blocked: no joins from our users, none over federation.
        self.room_blocks = RoomBlocks(store)
        await self.room_blocks.load()
        self.rooms = build_room_services(
            store=store, pipeline=self.pipeline, creator=self.creator, server_name=name,
            signing_key=self.signing_key, clock=reactor, room_versions=self.room_versions,
            default_room_version=config.default_room_version, remote=self.remote_membership,
            remote_alias_query=self._query_remote_alias, backfill=self.backfill,
            is_room_blocked=self.room_blocks.is_blocked, federation_client=self.federation_client,
        )
        await self.rooms.startup()
        # Account data written wakes the user's waiting /sync (it is in the next answer),
        # after the ignored users' cache forgot the old list.
        self.accounts.account_data.on_changed.append(self.rooms.ignored.invalidate)
        self.accounts.account_data.on_changed.append(self.rooms.notifier.notify_user)
        self.handshakes = HandshakeHandler(
            clock=reactor, store=store, pipeline=self.pipeline, creator=self.creator, engine=self.engine,
            keyring=self.keyring, room_versions=self.room_versions, server_name=name,
            signing_key=self.signing_key, on_invite=self._on_remote_invite, is_local_user=self._is_local_user,
            acl_check=self.acls.check, served=self.served, is_room_blocked=self.room_blocks.is_blocked,
            serve_partial_state=config.serve_partial_state,
        )
        register_membership_routes(self.federation_resource, self.federation_v2_resource, self.handshakes)
        self.federation_resource.enable_directory(self.rooms.directory)
        register_public_rooms_routes(
            self.federation_resource, self.rooms.directory, denied_rooms=self.acls.denied_rooms,
            enabled=config.public_rooms_over_federation,
        )
        self.hierarchy = SpaceHierarchy(
            store, name, reactor, federation_client=self.federation_client,
            is_room_blocked=self.room_blocks.is_blocked, acl_allows=self.acls.is_allowed,
        )
        register_federation_hierarchy_routes(self.federation_resource, self.hierarchy)
        self.client_api = build_client_api(services=self.accounts, room_versions=self.room_versions,
                                           default_room_version=config.default_room_version)
        register_room_routes(self.client_api, self.rooms)
        register_hierarchy_routes(self.client_api, self.hierarchy)
        # Account deactivation (POST /account/deactivate; the admin API shares the routine).
        self.deactivation = AccountDeactivation(store, self.rooms.membership, self.accounts.accounts.check_password_uia)
        self.deactivation.on_deactivated.append(self.rooms.ignored.invalidate)  # erase drops account data
        register_deactivation_routes(self.client_api, self.deactivation)
        # End-to-end encryption: keys, device lists, to-device messages, key backups.
        self.e2ee = build_e2ee_services(
            store=store, server_name=name, federation_client=self.federation_client,
            accounts=self.accounts.accounts, call_from_thread=reactor.callFromThread,
            notify_users=lambda users: self.rooms.notifier.notify(users=users),
            wake_destinations=self._wake_destinations,
        )
        for section in self.e2ee.sync_sections():
            self.rooms.sync.register_section(section)
        for edu_type, edu_handler in self.e2ee.edu_handlers().items():
            self.transactions.register_edu_handler(edu_type, edu_handler)
        self.pipeline.on_persisted.append(self.e2ee.local_lists.on_persisted)
        register_key_routes(self.client_api, self.e2ee)
        register_to_device_routes(self.client_api, self.e2ee.to_device)
        register_room_keys_routes(self.client_api, self.e2ee.key_backup)
        register_user_keys_routes(self.federation_resource, self.e2ee.local_lists, self.e2ee.keys)
        self._wire_daily_use(store)
        # The admin API: admin users only (an admin's access token on every request).
        admin_auth = AdminAuth(self.client_api.authenticate, self._is_admin)
        admin_api = build_admin_api(self.accounts.shared_secret)
        register_admin_routes(admin_api, AdminHandlers(
            users=AdminUsers(store, self.accounts.accounts, self.deactivation, name),
            rooms=AdminRooms(store, self.room_blocks, self.rooms.membership, self.pipeline, name, reactor),
            destinations=AdminDestinations(store, wake=self._destination_reset),
        ), admin_auth)
        self.admin_resources = {
            "/_synapse/admin": admin_api,
            **build_admin_events_resources(EventStatusHandler(store), authenticate_admin=admin_auth),
            **build_admin_failures_resource(self.failures, authenticate_admin=admin_auth),
        }
        self._wire_media(store)

    def _wire_media(self, store: Any) -> None:
        """The content repository: files, uploads, downloads (remote ones over federation),
        thumbnails; its client, federation and admin endpoints; streamed upload bodies."""
        config, reactor, name = self.config, self.reactor, self.config.server_name
        files = self.media_files = MediaFiles(config.media_directory)
        left = files.clean_tmp()
        if left:
            log.info("Removed {n} unfinished media files left by the previous run", n=left)
        waiters = UploadWaiters(reactor)
        self.media_uploader = MediaUploader(
            store, files, name, reactor,
            max_upload_size=config.max_upload_size, user_quota=config.media_user_quota, waiters=waiters,
        )
        self.media_downloader = MediaDownloader(
            store, files, name, reactor, self.federation_client,
            max_remote_size=config.max_upload_size, legacy_media=config.enable_legacy_media, waiters=waiters,
        )
        self.thumbnailer = Thumbnailer(store, files, reactor, name, max_image_pixels=config.max_image_pixels)
        # Hourly (and at start): cached remote media past remote_media_lifetime, orphan files.
        self.media_upkeep = MediaUpkeep(store, files, reactor, config.remote_media_lifetime)
        previews = None
        if config.url_preview_enabled:
            from fedserver.handlers.media.preview import build_url_previewer

            previews = build_url_previewer(reactor, self.media_uploader, config)
        routes = MediaRoutes(
            authenticate=self.client_api.authenticate, uploader=self.media_uploader,
            downloader=self.media_downloader, thumbnailer=self.thumbnailer, previews=previews,
            files=files, reactor=reactor,
        )
        register_client_media_routes(self.client_api, routes)
        register_federation_media_routes(self.federation_resource, self.media_downloader, self.thumbnailer)
        self.media_resource = build_media_resource(routes)
        self.legacy_media_resource = build_legacy_download_resource(MediaRoutes(
            authenticate=self.client_api.authenticate, uploader=self.media_uploader,
            downloader=self.media_downloader, thumbnailer=self.thumbnailer, files=files, reactor=reactor,
            never_fetch=True,
        ))
        self.admin_resources.update(build_admin_media_resource(
            self.media_downloader, authenticate=self.client_api.authenticate,
            is_admin=self._is_admin, clock=reactor,
        ))
        # Upload bodies stream into the media directory, capped at max_upload_size.
        self.client_site.requestFactory = media_request_factory(UploadBodies(files, config.max_upload_size))

    def _destination_reset(self, destination: str) -> None:
        if self.sender is not None:
            self.sender.on_server_seen(destination)

    async def _is_admin(self, user_id: str) -> bool:
        user = await self.store.accounts.get_user(user_id)
        return bool(user is not None and user.admin and not user.deactivated)

    def _wire_daily_use(self, store: Any) -> None:
        """Receipts, typing and presence (client API, /sync, EDUs both ways), push rules,
        notifications and pushers, tags, the user directory and ``.well-known``."""
        config, reactor, name = self.config, self.reactor, self.config.server_name
        notifier = self.rooms.notifier
        eph = self.ephemeral = build_ephemeral_services(
            store=store, server_name=name, clock=reactor, notifier=notifier, send_edu=self._send_edu,
            send_ephemeral_edu=self._send_ephemeral_edu, presence_enabled=config.presence_enabled,
        )
        self.push_gateway = PushGatewayClient(
            reactor, allow_http=config.push_gateway_allow_http,
            allow_private_addresses=config.push_gateway_allow_private_addresses,
            timeout=config.federation_client_timeout,
        )
        push = self.push = build_push_services(
            store=store, server_name=name, clock=reactor, notifier=notifier, source=self.rooms.source,
            post_json=self.push_gateway.post_json, allow_http_gateways=config.push_gateway_allow_http,
        )
        self.tags = TagsHandler(store, notifier)
        self.user_directory = UserDirectoryHandler(store, name, reactor)
        sync = self.rooms.sync
        for section in (eph.receipts.section, eph.typing.section, eph.presence.section, push.rules.section,
                        push.notifications.section):
            sync.register_section(section)
        sync.on_sync.append(lambda requester, set_presence: eph.presence.user_syncing(requester.user_id, set_presence))
        eph.receipts.on_read.append(push.notifications.on_read)
        self.rooms.upgrades.on_followed.append(push.rules.copy_room_rules)
        self.transactions.register_edu_handler("m.receipt", eph.receipts.on_edu)
        self.transactions.register_edu_handler("m.typing", eph.typing.on_edu)
        self.transactions.register_edu_handler("m.presence", eph.presence.on_edu)
        self.pipeline.on_persisted.append(push.notifications.on_persisted)
        self.pipeline.on_persisted.append(eph.presence.on_persisted)
        self.pipeline.on_persisted.append(self.user_directory.on_persisted)
        self.pipeline.on_full_state.append(self.user_directory.on_full_state)  # members a resync brought
        register_ephemeral_routes(self.client_api, eph)
        register_push_routes(self.client_api, push)
        register_tag_routes(self.client_api, self.tags)
        register_user_directory_routes(self.client_api, self.user_directory)
        self.well_known_resources: dict[str, Any] = {}
        if config.serve_well_known:
            self.well_known_resources[WELL_KNOWN_PATH] = build_well_known_resource(
                name, server=config.well_known_server, public_baseurl=config.public_baseurl
            )

    def _send_ephemeral_edu(self, edu_type: str, content: Any, destinations: Any, *, key: Any, ttl_ms: int) -> None:
        """Send an EDU through the sender's in-memory path (nothing once stopping)."""
        if self.sender is not None:
            self.sender.send_ephemeral_edu(edu_type, content, destinations, key=key, ttl_ms=ttl_ms)

    async def _query_remote_alias(self, server: str, alias: str) -> Any:
        return await self.federation_client.get_json(
            server, "/_matrix/federation/v1/query/directory", args={"room_alias": alias}
        )

    async def _is_local_user(self, user_id: str) -> bool:
        return (await self.store.accounts.get_user(user_id)) is not None

    async def _on_remote_invite(self, event: Any, invite_room_state: list) -> None:
        """An invite for one of our users to a room we are not in: their /sync shows it."""
        await self.store.federation_extras.set_remote_membership(
            event.state_key, event.room_id, "invite", event.event_id, event.sender, invite_room_state
        )
        self.rooms.notifier.notify_user(event.state_key)

    def _prune_received_txns(self) -> defer.Deferred:
        """Forget the answers to inbound transactions older than a day (errors are logged,
        so the loop keeps running)."""
        store = self.store
        if store is None:
            return defer.succeed(None)
        before = int(self.reactor.seconds() * 1000) - KEEP_RECEIVED_TXNS_MS
        d = store.prune_received_txns(before)
        d.addCallback(lambda n: log.debug("Pruned {n} answered transactions", n=n))
        # To-device transaction and message ids, unless the server is stopping meanwhile.
        d.addCallback(lambda _: self.store.to_device.prune(before) if self.store is not None else None)
        now = int(self.reactor.seconds() * 1000)
        d.addCallback(lambda _: defer.ensureDeferred(self._prune_notifications(now)))
        d.addCallback(lambda _: self.store.rooms.prune_client_txns(now - KEEP_CLIENT_TXNS_MS) if self.store is not None else None)
        d.addErrback(self._prune_failed)
        return d

    async def _prune_notifications(self, now_ms: int) -> None:
        store = self.store
        if store is None:
            return
        n = await store.push.prune_actions(now_ms - KEEP_READ_NOTIFICATIONS_MS, only_read=True)
        n += await store.push.prune_actions(now_ms - KEEP_UNREAD_NOTIFICATIONS_MS)
        if n:
            log.info("Pruned {n} old notifications", n=n)

    @staticmethod
    def _prune_failed(failure: Failure) -> None:
        if failure.check(StorageUnavailableError):
            return None  # the database logged it once; the next run tries again
        log.failure("Pruning answered transactions failed", failure)

    def when_ready(self) -> defer.Deferred:
        """:returns: a Deferred firing with this service once the store is open and the URL
            trees are installed, or failing if starting failed."""
        if self._ready_result is not None:
            return defer.succeed(self) if self._ready_result is self else defer.fail(self._ready_result)
        d: defer.Deferred = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    def _set_ready(self, result: Any) -> None:
        self._ready_result = result
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if result is self:
                d.callback(self)
            else:
                d.errback(result)

    def _started(self, _: Any) -> None:
        log.info("fedserver ready (database {db})", db=self.config.describe_database())
        self._set_ready(self)

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(ServerLockError):
            log.critical("fedserver failed to start: {reason}", reason=str(failure.value))
        else:
            log.failure("fedserver failed to start", failure=failure, level=LogLevel.critical)
        if self.store is None:
            self._release_server_lock()
        if self._on_fatal is not None:
            self._on_fatal(failure)
        self._set_ready(failure)

    def _release_server_lock(self) -> None:
        lock, self._server_lock = self._server_lock, None
        if lock is not None:
            lock.release()

    def stopService(self) -> defer.Deferred:
        """Stop the sender first (what it was sending stays queued), then listening, the
        transaction pruning and the federation client, and close the store last. Every step
        runs even if one before it fails (its failure is logged)."""
        sender, self.sender = self.sender, None
        resync, self.resync = getattr(self, "resync", None), None
        loop, self._prune_loop = self._prune_loop, None
        client, self.federation_client = self.federation_client, None
        dns, self._dns = self._dns, None
        store, self.store = self.store, None
        steps: list[tuple[str, Callable[[], Any]]] = []
        if sender is not None:
            steps.append(("the sender", sender.stop))
        if resync is not None:
            steps.append(("the partial-state resyncs", resync.stop))
        if self.metrics is not None:
            steps.append(("the metrics", self.metrics.stop))
        ephemeral, self.ephemeral = self.ephemeral, None
        if ephemeral is not None:
            steps.append(("typing", ephemeral.typing.stop))
            steps.append(("presence", ephemeral.presence.stop))
        push, self.push = self.push, None
        if push is not None:
            steps.append(("push delivery", push.pushers.stop))
        gateway, self.push_gateway = self.push_gateway, None
        if gateway is not None:
            steps.append(("the push gateway client", gateway.close))
        steps.append(("the listeners", super().stopService))
        steps.append(("the connection summary", self.connections.stop))
        if loop is not None and loop.running:
            steps.append(("transaction pruning", loop.stop))
        if client is not None:
            steps.append(("the federation client", client.close))
        if dns is not None:
            steps.append(("the DNS resolver", dns.stop))
        upkeep, self.media_upkeep = getattr(self, "media_upkeep", None), None
        if upkeep is not None:
            steps.insert(0, ("media upkeep", upkeep.stop))
        directory, self.user_directory = self.user_directory, None
        if directory is not None:
            directory.stop()
        rooms = getattr(self, "rooms", None)
        catch_up = rooms.relations_catch_up if rooms is not None else None
        if catch_up is not None and not catch_up.called:
            catch_up.cancel()  # waiting out a storage fault, or indexing: the next start resumes
        waits = [x.flush for x in (push and push.notifications, ephemeral and ephemeral.presence, directory) if x]
        if waits:
            steps.append(("work in progress", lambda: defer.DeferredList([w() for w in waits], consumeErrors=True)))
        close = getattr(store, "close", None)
        if close is not None:
            steps.append(("the store", close))
        steps.append(("the server lock", self._release_server_lock))

        d: defer.Deferred = defer.succeed(None)
        for name, step in steps:
            d.addCallback(lambda _, step=step: step())
            d.addErrback(lambda f, name=name: log.failure("Stopping {name} failed", f, name=name))
        return d


#: stdlib logging levels for our log_level names.
_STDLIB_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class StdlibToTwistedHandler(logging.Handler):
    """A :class:`logging.Handler` that re-emits stdlib log records as twisted.logger events
    (namespace = the stdlib logger's name), so that modules using ``logging`` reach the
    twistd log like the rest."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.CRITICAL:
                level = LogLevel.critical
            elif record.levelno >= logging.ERROR:
                level = LogLevel.error
            elif record.levelno >= logging.WARNING:
                level = LogLevel.warn
            elif record.levelno >= logging.INFO:
                level = LogLevel.info
            else:
                level = LogLevel.debug
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            Logger(namespace=record.name).emit(level, "{stdlib_message}", stdlib_message=text)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def install_stdlib_logging_bridge(level: str) -> StdlibToTwistedHandler:
    """Route stdlib ``logging`` into twisted.logger at ``level`` (a ``log_level`` name).
    Installing it again only updates the level.

    :returns: the handler on the root logger.
    """
    root = logging.getLogger()
    root.setLevel(_STDLIB_LEVELS[level])
    for handler in root.handlers:
        if isinstance(handler, StdlibToTwistedHandler):
            return handler
    handler = StdlibToTwistedHandler()
    root.addHandler(handler)
    return handler


def _twistd_observer(twistd_options: Any) -> Any:
    """The log observer twistd would have made; ``None`` if a custom ``--logger`` was given
    (or no twistd options) or twistd's logger cannot be reproduced."""
    if twistd_options is None or not hasattr(twistd_options, "get") or twistd_options.get("logger"):
        return None
    try:
        from twisted.scripts.twistd import _SomeApplicationRunner

        return _SomeApplicationRunner.loggerFactory(twistd_options)._getLogObserver()
    except Exception:
        return None


def _level_filtered_twistd_observer(twistd_options: Any, level: str) -> Any:
    """Build the log observer twistd would have made, filtered to ``level``; ``None`` if a
    custom ``--logger`` was given or twistd's logger cannot be reproduced."""
    base = _twistd_observer(twistd_options)
    if base is None:
        return None
    if not ILogObserver.providedBy(base):
        base = LegacyLogObserverWrapper(base)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(base, [predicate])


def build_log_observer(twistd_options: Any, config: Config, reactor: Any = None) -> Any:
    """The log observer of the server: ``log_format`` (text or JSON lines), ``log_level``,
    request ids, written to ``log_file`` (rotated; SIGHUP reopens it when ``reactor`` is
    given) or to the file twistd would have used. ``None`` to leave twistd's logging as it
    is (a custom ``--logger``, or no twistd options)."""
    from fedserver.logs import RotatingFile, build_observer

    out = None
    if config.log_file is not None:
        out = RotatingFile(config.log_file, config.log_max_bytes, config.log_backups)
    if reactor is not None:
        # SIGHUP never stops the server (its default action would, e.g. on systemd's
        # ExecReload): it reopens log_file after an external logrotate moved it, and is
        # otherwise only logged.
        import signal

        def on_sighup() -> None:
            if out is not None:
                out.reopen()
            else:
                log.info("SIGHUP: no log_file to reopen")

        signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(on_sighup))
    if out is not None:
        return build_observer(out, config.log_format, config.log_level)
    base = _twistd_observer(twistd_options)
    if base is None:
        return None
    out_file = getattr(base, "_outFile", None)  # twisted.logger.FileLogObserver's file
    if out_file is None:
        return _level_filtered_twistd_observer(twistd_options, config.log_level)
    return build_observer(out_file, config.log_format, config.log_level)


def _exit_nonzero(reactor: Any) -> Callable[[Failure], None]:
    """:returns: an ``on_fatal`` that stops ``reactor`` and makes the process exit with 1."""

    def on_fatal(failure: Failure) -> None:
        def exit_1() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)  # twistd itself would exit 0 after a reactor.stop()

        reactor.addSystemEventTrigger("after", "shutdown", exit_1)
        if reactor.running:
            reactor.stop()

    return on_fatal


def makeService(options: Options) -> FedserverService:
    """Assemble the server from parsed ``twistd fedserver`` options (twistd's entry point)."""
    from twisted.internet import reactor  # the wiring point is the one place that picks the reactor

    config = options.config or load_config(options["config"], options.overrides())
    observer = build_log_observer(getattr(options, "parent", None), config, reactor)
    install_stdlib_logging_bridge(config.log_level)
    try:
        return FedserverService(config, reactor, observer, on_fatal=_exit_nonzero(reactor))
    except (KeyFileError, PluginError) as e:
        raise SystemExit(f"fedserver: {e}") from None


__all__ = [
    "FedserverService", "ListenerService", "Options", "StdlibToTwistedHandler", "build_log_observer",
    "install_stdlib_logging_bridge", "makeService",
]
