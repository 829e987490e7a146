"""The failures mechanism between servers (seed 000): telling a server what we refused of its."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from fedserver.background import is_storage_fault

log = Logger()

#: The EDU type failures travel in. Namespaced: servers that do not know it ignore it, as
#: the spec requires of unknown EDU types.
FAILURE_EDU_TYPE = "org.fedserver.failures"

FATAL = "FATAL"
ERROR = "ERROR"
WARN = "WARN"
SEVERITIES = (FATAL, ERROR, WARN)

#: The numeric codes (documented in docs/failures.md). Seed 000 left them "to be defined
#: later"; the thousands digit repeats the severity.
CODE_INVALID_EVENT = 1001  # FATAL: not a valid event of its room version
CODE_BAD_SIGNATURE = 2001  # ERROR: a required signature did not verify
CODE_AUTH_REJECTED = 2002  # ERROR: the authorization rules rejected it
CODE_MISSING_AUTH = 2003  # ERROR: its auth events could not be found or fetched
CODE_SOFT_FAILED = 3001  # WARN: accepted, but refused by the current state or a policy
CODE_CITES_REJECTED = 3002  # WARN: accepted, but it cites an event we rejected

CODES: Mapping[int, str] = {
    CODE_INVALID_EVENT: FATAL,
    CODE_BAD_SIGNATURE: ERROR,
    CODE_AUTH_REJECTED: ERROR,
    CODE_MISSING_AUTH: ERROR,
    CODE_SOFT_FAILED: WARN,
    CODE_CITES_REJECTED: WARN,
}

#: The most failures one EDU carries, and the most we accept from one.
MAX_PER_EDU = 100
MAX_REASON = 500


class FailureReport(NamedTuple):
    """One failure: ``affected`` is the event this failure is about; ``source`` the event
    that caused it (e.g. the rejected event an accepted one cites), or ``None``."""

    severity: str
    code: int
    reason: str
    room_id: Optional[str]
    affected: Optional[str]
    source: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "reason": self.reason}
        for k in ("room_id", "affected", "source"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out


def parse_failure(item: Any) -> Optional[FailureReport]:
    """A failure from an EDU, or ``None`` if it is malformed (peers are not trusted)."""
    if not isinstance(item, dict):
        return None
    severity, code, reason = item.get("severity"), item.get("code"), item.get("reason")
    if severity not in SEVERITIES or type(code) is not int or not isinstance(reason, str):
        return None
    if not (0 <= code < 10_000):
        return None
    fields = []
    for k in ("room_id", "affected", "source"):
        v = item.get(k)
        if v is not None and (not isinstance(v, str) or len(v.encode("utf-8", "replace")) > 255 or "\x00" in v):
            return None
        fields.append(v)
    return FailureReport(severity, code, reason[:MAX_REASON], *fields)


class FailureReporter:
    """Sends failures to the servers concerned and records those we send and receive.

    When we reject or soft-fail an event another server sent or accepted, that server is
    told: ``FATAL`` (could not parse), ``ERROR`` (parsed but rejected) or ``WARN``
    (accepted, but something was wrong), with a code, a reason, the affected event and
    the source event. A report identical to one already sent is not sent again.

    :param store: has ``federation_extras`` (:class:`fedserver.storage.
        federation_extras_store.FederationExtrasStore`).
    :param send_edu: ``(edu_type, content, destinations) -> Deferred``.
    :param server_name: ours (never told about itself).
    :param clock: for timestamps.
    """

    def __init__(self, store, send_edu: Callable[..., Any], server_name: str, clock: IReactorTime) -> None:
        self._extras = store.federation_extras
        self._send_edu = send_edu
        self._server_name = server_name
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def report(self, servers: Iterable[str], failures: Iterable[FailureReport]) -> None:
        """Tell each of ``servers`` about ``failures`` (recorded as sent; duplicates of
        earlier reports are neither recorded nor sent again)."""
        failures = list(failures)[:MAX_PER_EDU]
        for server in sorted(set(servers) - {self._server_name, ""}):
            rows = [(server, f.severity, f.code, f.reason, f.room_id, f.affected, f.source) for f in failures]
            new = await self._extras.add_failures("sent", rows, self._now_ms())
            if not new:
                continue
            try:
                await self._send_edu(FAILURE_EDU_TYPE, {"failures": [f.to_json() for f in failures]}, [server])
            except Exception as e:  # noqa: BLE001 - a failure report must never break ingest
                if not is_storage_fault(e):  # the database logs its outages once
                    log.failure("Could not queue failures for {server}", server=server)

    async def on_edu(self, origin: str, content: Mapping[str, Any]) -> int:
        """Record the failures ``origin`` tells us about.

        :returns: how many were new.
        """
        items = content.get("failures") if isinstance(content, Mapping) else None
        if not isinstance(items, list):
            return 0
        parsed = [p for p in (parse_failure(i) for i in items[:MAX_PER_EDU]) if p is not None]
        if not parsed:
            return 0
        rows = [(origin, f.severity, f.code, f.reason, f.room_id, f.affected, f.source) for f in parsed]
        new = await self._extras.add_failures("received", rows, self._now_ms())
        for f in parsed:
            log.warn(
                "{origin} reports {severity} {code} on {affected}: {reason}",
                origin=origin, severity=f.severity, code=f.code, affected=f.affected, reason=f.reason,
            )
        return new

    def list(self, direction: Optional[str] = None, **kw: Any):
        """Failures sent and received, newest first (see ``list_failures`` of the store)."""
        return self._extras.list_failures(direction, **kw)
