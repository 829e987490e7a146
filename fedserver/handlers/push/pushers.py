"""Pushers (``/pushers``, ``/pushers/set``) and delivery of notifications to push gateways."""

# Client-Server "Push Notifications" (pushers) and the Push Gateway API:
# - POST /pushers/set with ``kind: null`` deletes the pusher; otherwise it is created or
#   updated; without ``append``, other users' pushers with the same app id and pushkey
#   are removed.
# - For every notification of a user with ``http`` pushers, one
#   ``POST {data.url}`` (``/_matrix/push/v1/notify``) per gateway URL, listing the
#   devices; ``format: event_id_only`` sends only the event id, room id, counts and
#   devices. Errors are retried with exponential backoff ("SHOULD retry for a reasonable
#   amount of time"): MAX_ATTEMPTS attempts over about two minutes, in memory. A
#   notification given up, or still being retried when the server stops, is logged (a
#   push that arrives minutes late is of little use, so nothing is kept for after a
#   restart). Pushkeys the gateway ``rejected`` lose their pusher.

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.errors import bad_json, invalid_param, missing_param
from fedserver.events.model import Event
from fedserver.push.evaluator import tweaks
from fedserver.handlers.push.notifications import log_unless_storage_fault
from fedserver.storage.users.push_store import Pusher
from fedserver.handlers.requester import Requester

log = Logger()

#: The path every gateway URL must have (spec ``PusherData.url``).
NOTIFY_PATH = "/_matrix/push/v1/notify"
MAX_APP_ID = 64
MAX_PUSHKEY_BYTES = 512
MAX_PUSHERS_PER_USER = 100
#: Delivery attempts per notification and the first retry delay (doubling: the last
#: attempt is about two minutes after the first).
MAX_ATTEMPTS = 8
FIRST_RETRY_S = 1.0

#: ``(url, body) -> Deferred[(status, parsed JSON or None)]``.
PostJson = Callable[[str, dict[str, Any]], Any]


def check_gateway_url(url: Any, *, allow_http: bool) -> str:
    """Spec: "MUST be an HTTPS URL with a path of /_matrix/push/v1/notify" (``http`` only
    when the operator allows it).

    :raises MatrixError: 400 ``M_INVALID_PARAM``.
    """
    if not isinstance(url, str) or len(url) > 2048 or not url.isascii() or not url.isprintable():
        raise invalid_param("data.url", "data.url must be a URL (ASCII, percent-encoded)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise invalid_param("data.url", "data.url is not a valid URL") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise invalid_param("data.url", "data.url must be an https URL" if not allow_http else "data.url must be an http(s) URL")
    if parts.path != NOTIFY_PATH or parts.username or parts.password or parts.fragment or port == 0:
        raise invalid_param("data.url", f"data.url must have the path {NOTIFY_PATH}")
    return url


class PushersHandler:
    """Pushers of local users, and delivery to their gateways.

    :param store: ``push`` (pushers, unread totals), events and state.
    :param clock: ``seconds()``, ``callLater`` (retries).
    :param post_json: sends one request to a gateway (``None``: nothing is delivered).
    :param allow_http: accept ``http://`` gateway URLs (``push_gateway_allow_http``).
    """

    def __init__(
        self, store: Any, clock: Any, post_json: Optional[PostJson] = None, *, allow_http: bool = False
    ) -> None:
        self._store = store
        self._clock = clock
        self._post = post_json
        self._allow_http = allow_http
        self._in_flight: set[defer.Deferred] = set()
        self._stopped = False

    # -- client API -----------------------------------------------------------------------------

    async def get_pushers(self, requester: Requester) -> dict[str, Any]:
        """``GET /pushers``."""
        pushers = await self._store.push.get_pushers([requester.user_id])
        out = []
        for p in pushers:
            item: dict[str, Any] = {
                "pushkey": p.pushkey, "kind": p.kind, "app_id": p.app_id, "app_display_name": p.app_display_name,
                "device_display_name": p.device_display_name, "lang": p.lang, "data": p.data,
            }
            if p.profile_tag is not None:
                item["profile_tag"] = p.profile_tag
            out.append(item)
        return {"pushers": out}

    async def set_pusher(self, requester: Requester, body: Mapping[str, Any]) -> None:
        """``POST /pushers/set``.

        :raises MatrixError: 400 ``M_MISSING_PARAM`` / ``M_INVALID_PARAM`` / ``M_BAD_JSON``.
        """
        if "kind" not in body:
            raise missing_param("kind")
        for key in ("app_id", "pushkey"):
            if key not in body:
                raise missing_param(key)
            if not isinstance(body[key], str) or not body[key]:
                raise bad_json(f"{key} must be a non-empty string")
        app_id, pushkey, kind = body["app_id"], body["pushkey"], body["kind"]
        if len(app_id) > MAX_APP_ID:
            raise invalid_param("app_id", f"app_id is at most {MAX_APP_ID} characters")
        if len(pushkey.encode("utf-8", "surrogatepass")) > MAX_PUSHKEY_BYTES:
            raise invalid_param("pushkey", f"pushkey is at most {MAX_PUSHKEY_BYTES} bytes")
        user_id = requester.user_id
        if kind is None:
            await self._store.push.delete_pusher(user_id, app_id, pushkey)
            return
        if kind != "http":
            raise invalid_param("kind", "Only http pushers are supported")
        missing = [k for k in ("app_display_name", "device_display_name", "lang", "data") if k not in body]
        if missing:
            raise missing_param(", ".join(missing))
        for key in ("app_display_name", "device_display_name", "lang"):
            if not isinstance(body[key], str) or len(body[key]) > 1024:
                raise bad_json(f"{key} must be a string")
        data = body["data"]
        if not isinstance(data, dict):
            raise bad_json("data must be an object")
        check_gateway_url(data.get("url"), allow_http=self._allow_http)
        fmt = data.get("format")
        if fmt is not None and not isinstance(fmt, str):
            raise bad_json("data.format must be a string")
        profile_tag = body.get("profile_tag")
        if profile_tag is not None and (not isinstance(profile_tag, str) or len(profile_tag) > 1024):
            raise bad_json("profile_tag must be a string")
        append = body.get("append", False)
        if not isinstance(append, bool):
            raise bad_json("append must be a boolean")
        existing = await self._store.push.get_pushers([user_id])
        if len(existing) >= MAX_PUSHERS_PER_USER and not any(p.app_id == app_id and p.pushkey == pushkey for p in existing):
            raise invalid_param("pushkey", f"At most {MAX_PUSHERS_PER_USER} pushers per user")
        pusher = Pusher(
            user_id, app_id, pushkey, kind, body["app_display_name"], body["device_display_name"], profile_tag,
            body["lang"], dict(data), getattr(requester, "device_id", None), int(self._clock.seconds() * 1000),
        )
        await self._store.push.set_pusher(pusher, append=append)

    # -- delivery -------------------------------------------------------------------------------

    def on_notify(self, user_id: str, event: Event, actions: list, room_id: str) -> None:
        """Send one notification to the user's gateways."""
        self.on_notify_many([(user_id, event, actions, room_id)])

    def on_notify_many(self, notifications: list[tuple[str, Event, list, str]]) -> None:
        """``NotificationsHandler.on_notify``: send each ``(user_id, event, actions,
        room_id)`` to the user's gateways. The pushers of all the users are read at once
        (one read for a batch of events, not one per notification)."""
        if self._post is None or self._stopped or not notifications:
            return
        d = defer.ensureDeferred(self._deliver_many(notifications))
        self._track(d, notifications[0][0])

    def _track(self, d: defer.Deferred, user_id: str) -> None:
        self._in_flight.add(d)
        d.addBoth(self._finished, d)
        d.addErrback(lambda f: None if f.check(defer.CancelledError) else f)  # stop() counted it
        d.addErrback(log_unless_storage_fault, "Push delivery for {user_id} failed", user_id=user_id)

    async def _deliver_many(self, notifications: list[tuple[str, Event, list, str]]) -> None:
        users = sorted({n[0] for n in notifications})
        by_user: dict[str, list[Pusher]] = defaultdict(list)
        for p in await self._store.push.get_pushers(users):
            if p.kind == "http":
                by_user[p.user_id].append(p)
        if self._stopped:
            return
        for user_id, event, actions, room_id in notifications:
            pushers = by_user.get(user_id)
            if pushers:
                # Each delivery on its own (a slow gateway holds up no other).
                self._track(defer.ensureDeferred(self._deliver(user_id, event, actions, room_id, pushers)), user_id)

    def _finished(self, result: Any, d: defer.Deferred) -> Any:
        self._in_flight.discard(d)
        return result

    def flush(self) -> defer.Deferred:
        """Fires when every delivery started so far is finished (tests, stopping)."""
        return defer.DeferredList(list(self._in_flight), consumeErrors=True)

    def stop(self) -> None:
        """Start no more deliveries and cancel the ones in progress (retries included;
        how many is logged: they are not tried again after a restart)."""
        self._stopped = True
        if self._in_flight:
            log.warn("Stopping push delivery: {n} notification(s) not delivered to their gateways are dropped",
                     n=len(self._in_flight))
        for d in list(self._in_flight):
            d.cancel()

    async def _deliver(self, user_id: str, event: Event, actions: list, room_id: str, pushers: list[Pusher]) -> None:
        unread = await self._store.push.count_unread_notifications(user_id)
        full = await self._full_notification(user_id, event, room_id)
        groups: dict[tuple[str, bool], list[Pusher]] = defaultdict(list)
        for p in pushers:
            url = p.data.get("url")
            if isinstance(url, str):
                groups[(url, p.data.get("format") == "event_id_only")].append(p)
        set_tweaks = tweaks(actions)
        prio = "high" if ("sound" in set_tweaks or set_tweaks.get("highlight") is True) else "low"
        for (url, id_only), group in groups.items():
            notification: dict[str, Any] = {"event_id": event.event_id, "room_id": room_id, "prio": prio}
            if not id_only:
                notification.update(full)
            notification["counts"] = {"unread": unread}
            notification["devices"] = [
                {
                    "app_id": p.app_id,
                    "pushkey": p.pushkey,
                    "pushkey_ts": p.pushkey_ts // 1000,
                    "data": {k: v for k, v in p.data.items() if k != "url"},
                    "tweaks": set_tweaks,
                }
                for p in group
            ]
            await self._post_with_retries(user_id, url, {"notification": notification}, group, event.event_id)

    async def _full_notification(self, user_id: str, event: Event, room_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": event.type, "sender": event.sender, "content": event.content}
        if event.type == "m.room.member":
            out["user_is_target"] = event.state_key == user_id
        state = await self._store.get_current_state_events(
            room_id, [("m.room.name", ""), ("m.room.canonical_alias", ""), ("m.room.member", event.sender)]
        )
        name = state.get(("m.room.name", ""))
        if name is not None and isinstance(name.content.get("name"), str) and name.content["name"]:
            out["room_name"] = name.content["name"]
        alias = state.get(("m.room.canonical_alias", ""))
        if alias is not None and isinstance(alias.content.get("alias"), str):
            out["room_alias"] = alias.content["alias"]
        member = state.get(("m.room.member", event.sender))
        if member is not None and isinstance(member.content.get("displayname"), str):
            out["sender_display_name"] = member.content["displayname"]
        return out

    async def _post_with_retries(
        self, user_id: str, url: str, body: dict[str, Any], group: list[Pusher], event_id: str = ""
    ) -> None:
        assert self._post is not None
        delay = FIRST_RETRY_S
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                code, answer = await defer.maybeDeferred(self._post, url, body)
            except defer.CancelledError:
                raise
            except Exception as e:
                code, answer = None, None
                log.info("Push gateway {url} failed (attempt {n}): {error}", url=url, n=attempt, error=str(e)[:200])
            if code is not None and 200 <= code < 300:
                rejected = answer.get("rejected") if isinstance(answer, dict) else None
                if isinstance(rejected, list):
                    for p in group:
                        if p.pushkey in rejected:
                            log.info("Gateway rejected pushkey of {user_id}; removing the pusher", user_id=user_id)
                            await self._store.push.delete_pushers_by_key(p.app_id, p.pushkey, [user_id])
                return
            if code is not None:
                log.info("Push gateway {url} answered {code} (attempt {n})", url=url, code=code, n=attempt)
            if attempt == MAX_ATTEMPTS:
                log.warn("Push gateway {url} failed {n} times: the notification of {event_id} for {user_id} is dropped",
                         url=url, n=attempt, event_id=event_id, user_id=user_id)
                return
            if self._stopped:
                return
            waiter: defer.Deferred = defer.Deferred()
            call = self._clock.callLater(delay, waiter.callback, None)
            try:
                await waiter
            finally:
                if call.active():
                    call.cancel()
            delay *= 2


__all__ = ["NOTIFY_PATH", "PushersHandler", "check_gateway_url"]
