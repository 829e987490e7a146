"""To-device messages: /sendToDevice, m.direct_to_device in and out, and the to_device part of /sync (with one-time key counts and fallback key types)."""

# Client-Server "Send-to-Device messaging": "A message is delivered exactly once to each
# client device"; the device id may be "*" for "all known devices for the user"; "Servers
# should store pending messages for local users until they are successfully delivered";
# "If the client sends messages to users on remote domains, those messages should be sent
# on to the remote servers via federation". Server-server "Send-to-device messaging": one
# m.direct_to_device EDU per destination, "message_id: Unique ID for the message, used for
# idempotence. Arbitrary utf8 string, of maximum length 32 codepoints."
# HOSTILE row 36: a device's inbox holds at most ``max_pending`` messages; more are dropped
# (and logged), none below the cap is lost; /sync hands them out ``batch`` at a time.

from __future__ import annotations

import secrets
from typing import Any, Callable, Iterable, Mapping, Optional, TypeGuard

from twisted.logger import Logger

from fedserver.errors import bad_json, invalid_param
from fedserver.handlers.client.sync_sections import SyncContext
from fedserver.handlers.e2ee.devices import server_of
from fedserver.handlers.rooms.client_events import transaction_scope
from fedserver.storage.database import Txn
from fedserver.handlers.requester import Requester

log = Logger()

DIRECT_TO_DEVICE = "m.direct_to_device"
#: Messages per /sync answer (the spec recommends 100).
BATCH = 100
#: Most messages waiting for one device (HOSTILE row 36).
MAX_PENDING = 10_000
#: Most messages in one /sendToDevice request or EDU.
MAX_MESSAGES_PER_REQUEST = 10_000


def _is_user_id(value: Any) -> "TypeGuard[str]":
    return type(value) is str and value.startswith("@") and ":" in value and len(value.encode("utf-8", "surrogatepass")) <= 255


def check_messages(messages: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """``{user_id: {device_id or "*": content}}``.

    :raises MatrixError: 400 ``M_BAD_JSON`` / ``M_INVALID_PARAM``.
    """
    if type(messages) is not dict:
        raise bad_json("messages must be an object of user id to {device id: content}")
    total = 0
    for user_id, by_device in messages.items():
        if not _is_user_id(user_id):
            raise invalid_param("messages", f"{str(user_id)[:100]!r} is not a user id")
        if type(by_device) is not dict:
            raise bad_json("messages values must be objects of device id to content")
        for device_id, content in by_device.items():
            if not device_id or len(device_id.encode("utf-8", "surrogatepass")) > 255:
                raise invalid_param("messages", "invalid device id")
            if type(content) is not dict:
                raise bad_json("message contents must be objects")
        total += len(by_device)
    if total > MAX_MESSAGES_PER_REQUEST:
        raise invalid_param("messages", f"at most {MAX_MESSAGES_PER_REQUEST} messages per request")
    return messages


class ToDeviceHandler:
    """To-device messages.

    :param store: the :class:`~fedserver.storage.sqlite.SQLiteStore` (``to_device``,
        ``accounts``, ``enqueue_outbound_txn``).
    :param server_name: ours.
    :param call_from_thread: runs a function in the reactor thread.
    :param notify_users: wakes the /sync long-polls of our users.
    :param wake_destinations: starts sending what was queued for other servers.
    :param max_pending: most messages waiting for one device.
    :param batch: most messages per /sync answer.
    """

    key = "d"

    def __init__(
        self,
        store: Any,
        server_name: str,
        *,
        call_from_thread: Callable[..., Any],
        notify_users: Callable[[Iterable[str]], None],
        wake_destinations: Callable[[Iterable[str]], None],
        max_pending: int = MAX_PENDING,
        batch: int = BATCH,
    ) -> None:
        self._store = store
        self.server_name = server_name
        self._call_from_thread = call_from_thread
        self._notify_users = notify_users
        self._wake = wake_destinations
        self.max_pending = max_pending
        self.batch = batch

    def is_mine(self, user_id: str) -> bool:
        return server_of(user_id) == self.server_name

    # -- sending -------------------------------------------------------------------------

    async def send(self, requester: Requester, event_type: str, txn_id: str, body: Mapping[str, Any]) -> None:
        """``PUT /sendToDevice/{eventType}/{txnId}``: queue the messages for our users'
        devices and one ``m.direct_to_device`` EDU per other server, in one transaction
        with the transaction id (a retry does nothing more)."""
        if not event_type or len(event_type.encode("utf-8", "surrogatepass")) > 255:
            raise invalid_param("eventType", "Invalid event type")
        if not txn_id or len(txn_id.encode("utf-8", "surrogatepass")) > 255:
            raise invalid_param("txnId", "Invalid transaction id")
        messages = check_messages(body.get("messages"))
        sender = requester.user_id
        scope = transaction_scope(requester)
        local = {u: d for u, d in messages.items() if self.is_mine(u)}
        remote: dict[str, dict[str, Any]] = {}
        for user_id, by_device in messages.items():
            if not self.is_mine(user_id):
                remote.setdefault(server_of(user_id), {})[user_id] = by_device
        edus = {
            server: {
                "sender": sender,
                "type": event_type,
                "message_id": secrets.token_urlsafe(18)[:24],
                "messages": users,
            }
            for server, users in remote.items()
        }
        store = self._store

        def txn_func(txn: Txn) -> None:
            if not store.to_device.claim_txn_id_txn(txn, sender, scope, txn_id):
                return
            woken = self._queue_local_txn(txn, sender, event_type, local)
            for server, content in edus.items():
                store.enqueue_outbound_txn(txn, [server], edus=[{"edu_type": DIRECT_TO_DEVICE, "content": content}])
            txn.call_after_commit(self._call_from_thread, self._committed, woken, sorted(edus))

        await store.run_write(txn_func)

    def _queue_local_txn(
        self, txn: Txn, sender: str, event_type: str, messages: Mapping[str, Mapping[str, Any]]
    ) -> list[str]:
        """Queue messages for our users' devices ("*": every device); drop what would
        overflow a device's inbox. :returns: the users with new messages."""
        accounts_devices = self._store.devices
        rows: list[tuple[str, str, dict[str, Any]]] = []
        for user_id, by_device in messages.items():
            known = set(accounts_devices.get_local_devices_txn(txn, {user_id: None}, with_keys_only=False).get(user_id, {}))
            for device_id, content in by_device.items():
                targets = sorted(known) if device_id == "*" else ([device_id] if device_id in known else [])
                for target in targets:
                    rows.append((user_id, target, {"sender": sender, "type": event_type, "content": content}))
        if not rows:
            return []
        pending = self._store.to_device.pending_counts_txn(txn, [(u, d) for u, d, _ in rows])
        kept = []
        dropped = 0
        for user_id, device_id, message in rows:
            n = pending.get((user_id, device_id), 0)
            if n >= self.max_pending:
                dropped += 1
                continue
            pending[(user_id, device_id)] = n + 1
            kept.append((user_id, device_id, message))
        if dropped:
            log.warn("Dropped {n} to-device messages from {sender}: inbox full ({cap} waiting)",
                     n=dropped, sender=sender, cap=self.max_pending)
        self._store.to_device.add_messages_txn(txn, kept)
        return sorted({u for u, _, _ in kept})

    def _committed(self, users: list[str], servers: list[str]) -> None:
        try:
            if users:
                self._notify_users(users)
            if servers:
                self._wake(servers)
        except Exception:  # noqa: BLE001
            log.failure("Waking after to-device messages failed")

    # -- receiving -----------------------------------------------------------------------

    def on_edu(self, origin: str, content: dict[str, Any]) -> Any:
        """``m.direct_to_device`` from ``origin``: messages for our users' devices, once
        per ``message_id``. An EDU whose sender is not a user of ``origin`` is ignored
        (HOSTILE row 35), as are messages for users of other servers."""
        sender = content.get("sender")
        event_type = content.get("type")
        message_id = content.get("message_id")
        messages = content.get("messages")
        if not _is_user_id(sender) or server_of(sender) != origin or origin == self.server_name:
            log.info("Ignoring m.direct_to_device from {origin} sent as {sender!r:.100}", origin=origin, sender=sender)
            return None
        if (
            type(event_type) is not str or not event_type or len(event_type) > 255
            or type(message_id) is not str or not message_id or len(message_id) > 255
        ):
            log.info("Ignoring a malformed m.direct_to_device from {origin}", origin=origin)
            return None
        try:
            messages = check_messages(messages)
        except Exception:  # noqa: BLE001 - MatrixError: the EDU is malformed
            log.info("Ignoring m.direct_to_device with malformed messages from {origin}", origin=origin)
            return None
        local = {u: d for u, d in messages.items() if self.is_mine(u)}
        if len(local) != len(messages):
            log.info("m.direct_to_device from {origin}: ignoring messages for users not ours", origin=origin)

        def txn_func(txn: Txn) -> None:
            if not self._store.to_device.claim_message_id_txn(txn, origin, message_id):
                return
            woken = self._queue_local_txn(txn, sender, event_type, local)
            txn.call_after_commit(self._call_from_thread, self._committed, woken, [])

        return self._store.run_write(txn_func)

    # -- /sync -----------------------------------------------------------------------------

    def current_position(self, user_id: str) -> Any:
        return self._store.to_device.get_position()

    async def contribute(self, ctx: SyncContext, since: Optional[int], now: int) -> bool:
        """The device's waiting messages (what ``since`` acknowledged is deleted first),
        ``device_one_time_keys_count`` and ``device_unused_fallback_key_types``."""
        device_id = ctx.device_id
        if not device_id:
            return False
        user_id = ctx.user_id
        store = self._store

        def read_txn(txn: Txn) -> tuple[bool, dict[str, int], list[str]]:
            pending = store.to_device.has_pending_txn(txn, user_id, device_id)
            counts = store.devices.count_one_time_keys_txn(txn, user_id, device_id)
            fallback = store.devices.unused_fallback_key_types_txn(txn, user_id, device_id)
            return pending, counts, fallback

        # Most syncs find an empty inbox: only a read then, no write transaction.
        pending, counts, fallback = await store.run_read(read_txn)
        messages: list[dict[str, Any]] = []
        if pending:
            delivery = await store.run_write(store.to_device.deliver_txn, user_id, device_id, since, now, self.batch)
            messages = delivery.messages
        ctx.result.setdefault("to_device", {"events": []})["events"].extend(messages)
        ctx.result["device_one_time_keys_count"] = counts
        ctx.result["device_unused_fallback_key_types"] = fallback
        return bool(messages)


__all__ = ["DIRECT_TO_DEVICE", "ToDeviceHandler", "check_messages"]
