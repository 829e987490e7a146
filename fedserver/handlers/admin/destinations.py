"""Other servers we send to, for administrators: their backoff and queue, and resetting the backoff."""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

from fedserver.errors import not_found

log = Logger()

#: Destination listing orders (Synapse's ``order_by`` values, plus ``queued``).
DESTINATION_ORDERS = ("destination", "retry_last_ts", "retry_interval", "failure_ts", "queued")


def destination_json(row: Any) -> dict[str, Any]:
    """One destination in Synapse's shape (``retry_last_ts``, ``retry_interval`` and
    ``failure_ts`` are 0 / null when it is not backing off), plus ``queued``: items waiting
    in its outbound queue."""
    return {
        "destination": row.destination,
        "retry_last_ts": row.failure_ts or 0,
        "retry_interval": row.retry_interval_ms or 0,
        "failure_ts": row.failure_ts,
        "last_successful_stream_ordering": None,
        "queued": row.queued,
    }


class AdminDestinations:
    """The admin API's destination operations.

    :param store: the store (``admin`` attribute, ``clear_destination_retry``).
    :param wake: ``destination -> None``: tell the outbound sender the destination is
        reachable (ends its backoff in memory and sends what is queued), e.g.
        :meth:`fedserver.federation.sender.FederationSender.on_server_seen`.
    """

    def __init__(self, store: Any, wake: Optional[Callable[[str], None]] = None) -> None:
        self._store = store
        self._wake = wake

    async def list_destinations(
        self, *, offset: int = 0, limit: int = 100, name: Optional[str] = None, order_by: str = "destination",
        backwards: bool = False,
    ) -> dict[str, Any]:
        """``GET /_synapse/admin/v1/federation/destinations``: ``{destinations, total, next_token}``."""
        rows = [destination_json(r) for r in await self._store.admin.list_destinations(name)]
        key = order_by if order_by in DESTINATION_ORDERS else "destination"
        rows.sort(key=lambda d: (d[key] is None, d[key] if d[key] is not None else 0, d["destination"]), reverse=backwards)
        page = rows[offset:offset + limit]
        out: dict[str, Any] = {"destinations": page, "total": len(rows)}
        if offset + len(page) < len(rows):
            out["next_token"] = str(offset + len(page))
        return out

    async def get_destination(self, destination: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v1/federation/destinations/{destination}``.

        :raises MatrixError: 404 for a destination we never sent to.
        """
        for row in await self._store.admin.list_destinations(destination):
            if row.destination == destination:
                return destination_json(row)
        raise not_found("Unknown destination")

    async def reset_connection(self, destination: str) -> dict[str, Any]:
        """``POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection``:
        forget the backoff (stored and in memory) and send what is queued now.

        :raises MatrixError: 404 for a destination we never sent to.
        """
        await self.get_destination(destination)
        await self._store.clear_destination_retry(destination)
        if self._wake is not None:
            self._wake(destination)
        log.info("Admin API: backoff of {destination} reset", destination=destination)
        return {}


__all__ = ["AdminDestinations", "DESTINATION_ORDERS", "destination_json"]
