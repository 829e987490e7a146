"""The Prometheus scrape endpoint (GET /metrics) of the separate metrics listener."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from fedserver.http.resource import PathNode, build_tree, respond_bytes, respond_error
from fedserver.errors import unrecognized

#: Where the metrics are served on the metrics listener.
METRICS_PATH = "/metrics"


class MetricsResource(resource.Resource):
    """``GET /metrics``: refreshes the database figures of ``metrics`` (a
    :class:`fedserver.metrics.ServerMetrics`), then answers the text exposition format.

    :param metrics: the server's metrics.
    """

    isLeaf = True

    def __init__(self, metrics: Any) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: IRequest) -> Any:
        if request.postpath not in ([], [b""]):
            respond_error(request, unrecognized())
            return server.NOT_DONE_YET

        def answer(_: Any) -> None:
            body = generate_latest(self._metrics.registry)
            respond_bytes(request, 200, body, CONTENT_TYPE_LATEST.encode("ascii"))

        self._metrics.refresh().addCallback(answer)
        return server.NOT_DONE_YET

    render_HEAD = render_GET


def build_metrics_root(metrics: Any) -> PathNode:
    """The metrics listener's tree: :data:`METRICS_PATH`, and 404 for the rest."""
    resource: Any = MetricsResource(metrics)
    return build_tree({METRICS_PATH: resource})


__all__ = ["METRICS_PATH", "MetricsResource", "build_metrics_root"]
