"""The operator's list of failures sent to and received from other servers (seed 000)."""

from __future__ import annotations

from typing import Any, Optional

from twisted.web.iweb import IRequest

from fedserver.http.admin.events import AdminGuard, AuthenticateAdmin
from fedserver.errors import invalid_param
from fedserver.http.resource import JsonResource, query_int, query_string

#: ``GET {ADMIN_FAILURES_PATH}?direction=sent|received&server=&limit=&from=``.
ADMIN_FAILURES_PATH = "/_fedserver/admin/v1/failures"


def failure_json(f: Any) -> dict[str, Any]:
    """One stored failure as the endpoint and the CLI show it."""
    return {
        "id": f.failure_id,
        "direction": f.direction,
        "server_name": f.server_name,
        "severity": f.severity,
        "code": f.code,
        "reason": f.reason,
        "room_id": f.room_id,
        "affected": f.affected,
        "source": f.source,
        "ts": f.ts,
    }


def build_admin_failures_resource(
    reporter: Any, *, authenticate_admin: Optional[AuthenticateAdmin] = None, allow_loopback: bool = True
) -> dict[str, JsonResource]:
    """``{ADMIN_FAILURES_PATH: resource}`` to mount on the client listener: failures newest
    first, ``{"failures": [...], "next_batch": id or null}``.

    :param reporter: the :class:`fedserver.handlers.federation.failures.FailureReporter`.
    :param authenticate_admin: see :class:`fedserver.http.admin.events.AdminGuard`.
    """
    guard = AdminGuard(authenticate_admin, allow_loopback=allow_loopback)

    async def listing(request: IRequest) -> Any:
        await guard.check(request)
        direction = query_string(request, "direction", None)
        if direction not in (None, "sent", "received"):
            raise invalid_param("direction", "direction must be sent or received")
        server = query_string(request, "server", None)
        limit = query_int(request, "limit", 100, minimum=1, maximum=1000)
        raw_from = query_string(request, "from", None)
        before: Optional[int] = None
        if raw_from is not None:
            if not raw_from.isdigit() or len(raw_from) > 18:
                raise invalid_param("from", "from must be a next_batch value")
            before = int(raw_from)
        rows = await reporter.list(direction, server_name=server, limit=limit, before_id=before)
        return {
            "failures": [failure_json(f) for f in rows],
            "next_batch": str(rows[-1].failure_id) if len(rows) == limit else None,
        }

    resource = JsonResource()
    resource.add_route("GET", "", listing)
    return {ADMIN_FAILURES_PATH: resource}
