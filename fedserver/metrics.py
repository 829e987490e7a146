"""Prometheus metrics (prometheus_client): what the server counts, in one registry per server.

Nothing here is global: :class:`ServerMetrics` owns a :class:`prometheus_client.CollectorRegistry`
and the counters and histograms in it; the wiring (``service.py``) hands its ``observe_*``
methods to the components that report (the HTTP sites, the transaction handler, the room
pipeline, the database) and gives it a ``sample`` callable that reads what is cheaper to ask
the database for at scrape time (users, joined rooms, the outbound queue, backoffs).

Labels never come from requests: HTTP requests are counted by route *template*
(``/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}``), so the number of
series is bounded by the code, not by traffic. Per-destination series exist only for
destinations with queued items or in backoff.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from fedserver import __version__

log = Logger()

#: Latency buckets (seconds) for HTTP requests and database transactions.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets for state resolution (from trivial to a big fork).
STATE_RES_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Buckets for reactor lag: how late a timer fires.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: How often the reactor lag is probed (seconds).
LAG_PROBE_INTERVAL = 1.0

#: PDU outcomes counted for inbound transactions (``outcome`` label).
PDU_OUTCOMES = ("accepted", "soft_failed", "rejected", "missing", "duplicate", "dropped")


@dataclass
class Sample:
    """What :meth:`ServerMetrics.refresh` reads from the database at scrape time.

    :ivar users_active: local users not deactivated.
    :ivar users_deactivated: deactivated local users.
    :ivar joined_rooms: rooms with at least one local user joined.
    :ivar queue_depth: ``{destination: queued items}`` (destinations with items only).
    :ivar backoff_ms: ``{destination: retry interval in ms}`` (destinations in backoff only).
    """

    users_active: int = 0
    users_deactivated: int = 0
    joined_rooms: int = 0
    queue_depth: Mapping[str, int] = field(default_factory=dict)
    backoff_ms: Mapping[str, int] = field(default_factory=dict)


class _SampledCollector:
    """Reports the last :class:`Sample` (and live gauges) as metric families."""

    def __init__(self, owner: "ServerMetrics") -> None:
        self._owner = owner

    def collect(self) -> Iterable[Any]:
        sample = self._owner.sample_value
        users = GaugeMetricFamily("fedserver_users", "Local user accounts", labels=["status"])
        users.add_metric(["active"], sample.users_active)
        users.add_metric(["deactivated"], sample.users_deactivated)
        yield users
        yield GaugeMetricFamily("fedserver_joined_rooms", "Rooms with at least one local user joined", value=sample.joined_rooms)
        depth = GaugeMetricFamily(
            "fedserver_federation_outbound_queue_depth", "Items (PDUs, EDUs) queued for a destination", labels=["destination"]
        )
        for dest, n in sorted(sample.queue_depth.items()):
            depth.add_metric([dest], n)
        yield depth
        backoff = GaugeMetricFamily(
            "fedserver_federation_destination_backoff_seconds",
            "Current retry interval of a destination that could not be reached", labels=["destination"],
        )
        for dest, ms in sorted(sample.backoff_ms.items()):
            backoff.add_metric([dest], ms / 1000.0)
        yield backoff
        yield GaugeMetricFamily(
            "fedserver_federation_destinations_in_backoff", "Destinations currently backing off", value=len(sample.backoff_ms)
        )
        yield GaugeMetricFamily(
            "fedserver_metrics_sample_age_seconds", "Seconds since the database figures above were read",
            value=max(0.0, self._owner.now() - self._owner.sampled_at) if self._owner.sampled_at else -1.0,
        )
        for name, (doc, func) in sorted(self._owner.live_gauges.items()):
            try:
                value = float(func())
            except Exception:  # noqa: BLE001 - a broken gauge must not break the scrape
                continue
            yield GaugeMetricFamily(name, doc, value=value)


class ServerMetrics:
    """The server's metrics.

    :param clock: ``seconds()`` and ``callLater`` (the reactor): reactor lag probes and the
        age of the database sample.
    :param sample: ``() -> Awaitable[Sample]`` reading the database figures (``None``: none).
    :param process_metrics: add prometheus_client's process, platform and GC collectors
        (CPU, memory, open file descriptors...).
    """

    def __init__(
        self,
        clock: Any,
        sample: Optional[Callable[[], Awaitable[Sample]]] = None,
        *,
        process_metrics: bool = True,
    ) -> None:
        self._clock = clock
        self._sample = sample
        self.sample_value = Sample()
        self.sampled_at = 0.0
        #: ``{name: (documentation, () -> number)}`` read at each scrape.
        self.live_gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self._refreshing = False
        self._waiters: list[defer.Deferred] = []
        self._lag_loop: Optional[LoopingCall] = None
        self._lag_expected = 0.0
        reg = self.registry = CollectorRegistry(auto_describe=True)
        if process_metrics:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)
        Gauge("fedserver_build_info", "fedserver's version", ["version"], registry=reg).labels(__version__).set(1)
        self.http_requests = Counter(
            "fedserver_http_requests", "HTTP requests answered, by listener, method, route template and status",
            ["listener", "method", "route", "status"], registry=reg,
        )
        self.http_duration = Histogram(
            "fedserver_http_request_duration_seconds", "Time to answer an HTTP request, by route template",
            ["listener", "method", "route"], buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.inbound_transactions = Counter(
            "fedserver_federation_inbound_transactions", "Federation transactions received (PUT /send), by result",
            ["result"], registry=reg,
        )
        self.inbound_pdus = Counter(
            "fedserver_federation_inbound_pdus",
            "PDUs received in transactions, by outcome (dropped: failed the format, signature or hash checks)",
            ["outcome"], registry=reg,
        )
        self.inbound_edus = Counter("fedserver_federation_inbound_edus", "EDUs received in transactions", registry=reg)
        self.outbound_transactions = Counter(
            "fedserver_federation_outbound_transactions", "Federation transactions sent, by result (ok, error)",
            ["result"], registry=reg,
        )
        self.state_resolution = Histogram(
            "fedserver_state_resolution_seconds", "Time spent resolving conflicting room states, by room version",
            ["room_version"], buckets=STATE_RES_BUCKETS, registry=reg,
        )
        self.db_transactions = Histogram(
            "fedserver_database_transaction_seconds", "Time one database transaction took (read or write, commit included)",
            ["kind"], buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.reactor_lag = Histogram(
            "fedserver_reactor_lag_seconds", "How late a timer fired: time the event loop was busy with other work",
            buckets=LAG_BUCKETS, registry=reg,
        )
        for outcome in PDU_OUTCOMES:
            self.inbound_pdus.labels(outcome)  # every outcome exported from the start, at 0
        reg.register(_SampledCollector(self))

    def now(self) -> float:
        return float(self._clock.seconds())

    # -- observers handed to the components --------------------------------------------------

    def observe_request(self, listener: str, method: str, route: str, status: int, seconds: float) -> None:
        """:attr:`fedserver.http.resource.MatrixSite.request_observers` entry."""
        self.http_requests.labels(listener, method, route, str(status)).inc()
        self.http_duration.labels(listener, method, route).observe(seconds)

    def observe_transaction(self, origin: str, result: str, outcomes: Mapping[str, int], edus: int) -> None:
        """An inbound transaction was answered: ``result`` (``processed`` or ``replayed``),
        ``outcomes`` ``{outcome: number of PDUs}``."""
        self.inbound_transactions.labels(result).inc()
        for outcome, n in outcomes.items():
            if n:
                self.inbound_pdus.labels(outcome).inc(n)
        if edus:
            self.inbound_edus.inc(edus)

    def observe_state_resolution(self, room_version: str, seconds: float) -> None:
        self.state_resolution.labels(room_version).observe(seconds)

    def observe_db_transaction(self, kind: str, seconds: float) -> None:
        """Called from the database thread: prometheus_client's metrics are thread-safe."""
        self.db_transactions.labels(kind).observe(seconds)

    def count_outbound(self, d: defer.Deferred) -> defer.Deferred:
        """Count the outcome of an outbound transaction PUT (passes its result on)."""

        def ok(result: Any) -> Any:
            self.outbound_transactions.labels("ok").inc()
            return result

        def failed(failure: Any) -> Any:
            self.outbound_transactions.labels("error").inc()
            return failure

        return d.addCallbacks(ok, failed)

    # -- reactor lag ------------------------------------------------------------------------

    def start(self) -> None:
        """Start probing the reactor lag (a timer every second, whose lateness is observed)."""
        if self._lag_loop is not None:
            return
        self._lag_expected = time.monotonic() + LAG_PROBE_INTERVAL
        self._lag_loop = LoopingCall(self._probe_lag)
        self._lag_loop.clock = self._clock
        self._lag_loop.start(LAG_PROBE_INTERVAL, now=False)

    def _probe_lag(self) -> None:
        now = time.monotonic()
        self.reactor_lag.observe(max(0.0, now - self._lag_expected))
        self._lag_expected = now + LAG_PROBE_INTERVAL

    def stop(self) -> None:
        loop, self._lag_loop = self._lag_loop, None
        if loop is not None and loop.running:
            loop.stop()

    # -- the database sample ----------------------------------------------------------------

    def refresh(self) -> defer.Deferred:
        """Read the database figures (one read at a time; a scrape during a read waits for
        it). A failure keeps the previous figures (their age tells) and is logged once.

        :returns: a Deferred firing with ``None``; never fails.
        """
        if self._sample is None:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        if self._refreshing:
            return waiter
        self._refreshing = True

        def got(sample: Sample) -> None:
            self.sample_value = sample
            self.sampled_at = self.now()

        def failed(failure: Any) -> None:
            log.warn("Metrics: could not read the database figures: {error}", error=failure.getErrorMessage())

        def done(_: Any) -> None:
            self._refreshing = False
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(None)

        async def read() -> Sample:
            assert self._sample is not None
            return await self._sample()

        d: defer.Deferred = defer.ensureDeferred(read())
        d.addCallbacks(got, failed)
        d.addBoth(done)
        return waiter


__all__ = ["PDU_OUTCOMES", "Sample", "ServerMetrics"]
