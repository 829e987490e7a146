"""Our users' device lists: each change recorded and announced to the servers that share a room with the user, in the transaction that makes it."""

# Server-server "Device Management": "Servers must send m.device_list_update EDUs to all
# the servers who share a room with a given local user, and must be sent whenever that
# user's device list changes (i.e. for new or deleted devices, when that user joins a room
# which contains servers which are not already receiving updates for that user's device
# list, or changes in device information such as the device's human-readable name)."
# "Servers send m.device_list_update EDUs in a sequence per origin user, each with a
# unique stream_id. They also include a pointer to the most recent previous EDU(s) ... in
# the prev_id field." We emit them in series: one prev_id.
# The EDUs are queued (enqueue_outbound_txn) in the transaction that makes the change, so
# a 200 to the client means other servers will hear of it, restart or not (DESIGN
# "Durability": device list updates persist until delivered).

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

from twisted.logger import Logger

from fedserver.background import log_background_failure
from fedserver.e2ee.keys import with_signatures
from fedserver.storage.database import Txn

log = Logger()

DEVICE_LIST_UPDATE = "m.device_list_update"
SIGNING_KEY_UPDATE = "m.signing_key_update"


def server_of(user_id: str) -> str:
    """The server name of a (well-formed) user id."""
    return user_id.partition(":")[2]


class LocalDeviceLists:
    """Records and announces changes of our users' device lists.

    :param store: the :class:`~fedserver.storage.sqlite.SQLiteStore` (``devices``,
        ``enqueue_outbound_txn``).
    :param server_name: ours.
    :param call_from_thread: runs a function in the reactor thread (after-commit hooks run
        in the database thread); ``reactor.callFromThread``.
    :param notify_users: ``(user_ids)`` wakes the /sync long-polls of our users.
    :param wake_destinations: ``(server_names)`` starts sending what was queued for them
        (``FederationSender.wake``).
    """

    def __init__(
        self,
        store: Any,
        server_name: str,
        *,
        call_from_thread: Callable[..., Any],
        notify_users: Callable[[Iterable[str]], None],
        wake_destinations: Callable[[Iterable[str]], None],
    ) -> None:
        self._store = store
        self.server_name = server_name
        self._call_from_thread = call_from_thread
        self._notify_users = notify_users
        self._wake = wake_destinations

    def is_mine(self, user_id: str) -> bool:
        return server_of(user_id) == self.server_name

    # -- what a device looks like to others ----------------------------------------------

    def device_keys_txn(self, txn: Txn, user_id: str, device_ids: Optional[Iterable[str]]) -> dict[str, dict[str, Any]]:
        """The keys of our user's devices as others see them: as uploaded, with the
        signatures the owner added later (cross-signing: "signatures made by other users'
        self-signing keys about their respective devices") and ``unsigned.device_display_name``.

        :param device_ids: ``None`` for every device with keys.
        """
        devices = self._store.devices
        found = devices.get_local_devices_txn(txn, {user_id: list(device_ids) if device_ids is not None else None})
        sigs = devices.get_signatures_txn(txn, [user_id], signers=[user_id])
        out: dict[str, dict[str, Any]] = {}
        for device_id, device in found.get(user_id, {}).items():
            if device.keys is None:
                continue
            keys = with_signatures(device.keys, sigs.get((user_id, device_id), []))
            unsigned = dict(keys.get("unsigned") or {})
            if device.display_name is not None:
                unsigned["device_display_name"] = device.display_name
            else:
                unsigned.pop("device_display_name", None)
            keys["unsigned"] = unsigned
            out[device_id] = keys
        return out

    # -- announcing --------------------------------------------------------------------

    def broadcast_txn(
        self,
        txn: Txn,
        user_id: str,
        device_ids: Iterable[str] = (),
        *,
        deleted: Iterable[str] = (),
        signing_keys: Optional[Mapping[str, Any]] = None,
        only_if_new_servers_in: Optional[str] = None,
    ) -> None:
        """Inside a write transaction: ``user_id``'s device list changed.

        The user moves in the device-list stream (``/sync`` ``device_lists.changed`` of
        everyone sharing a room with them, and their own devices); an
        ``m.device_list_update`` per device (``deleted`` ones marked so), and an
        ``m.signing_key_update`` with ``signing_keys`` (the public cross-signing keys),
        are queued for every other server sharing a room with the user. After the commit
        the local users concerned are woken and the sender started.

        :param only_if_new_servers_in: a room the user just joined: announce (to every
            server sharing a room, so that nobody sees a gap in the sequence) only if
            that room holds a server that shared no other room with the user.
        """
        devices = self._store.devices
        deleted = set(deleted)
        ids = sorted(set(device_ids) | deleted)
        sharing = devices.get_users_sharing_room_txn(txn, user_id)
        servers = {server_of(u) for u in sharing} - {self.server_name}
        if only_if_new_servers_in is not None:
            in_room = {server_of(u) for u in devices.get_joined_members_txn(txn, [only_if_new_servers_in])}
            others = set(devices.get_joined_rooms_txn(txn, user_id)) - {only_if_new_servers_in}
            before = {server_of(u) for u in devices.get_joined_members_txn(txn, others)}
            if not (in_room - before - {self.server_name}):
                return
        else:
            devices.record_change_txn(txn, [user_id])
        if servers:
            current = self.device_keys_txn(txn, user_id, [d for d in ids if d not in deleted])
            names = devices.get_local_devices_txn(txn, {user_id: ids}, with_keys_only=False).get(user_id, {})
            edus = []
            for device_id in ids:
                if device_id not in deleted and device_id not in current:
                    continue  # no keys: nothing for other servers
                stream_id, prev = devices.next_update_id_txn(txn, user_id)
                content: dict[str, Any] = {
                    "user_id": user_id,
                    "device_id": device_id,
                    "stream_id": stream_id,
                    "prev_id": prev,
                    "deleted": device_id in deleted,
                }
                if device_id not in deleted:
                    content["keys"] = current[device_id]
                    name = names.get(device_id)
                    if name is not None and name.display_name is not None:
                        content["device_display_name"] = name.display_name
                edus.append({"edu_type": DEVICE_LIST_UPDATE, "content": content})
            if signing_keys:
                edus.append({"edu_type": SIGNING_KEY_UPDATE, "content": {"user_id": user_id, **signing_keys}})
            if edus:
                self._store.enqueue_outbound_txn(txn, sorted(servers), edus=edus)
        local = {u for u in sharing if self.is_mine(u)} | {user_id}
        txn.call_after_commit(self._call_from_thread, self._committed, sorted(local), sorted(servers))

    def _committed(self, users: list[str], servers: list[str]) -> None:
        try:
            self._notify_users(users)
            if servers:
                self._wake(servers)
        except Exception:  # noqa: BLE001 - the change is committed; a wakeup failing must not hide it
            log.failure("Waking after a device list change failed")

    # -- hooks ---------------------------------------------------------------------------

    def on_devices_changed_txn(self, txn: Txn, user_id: str, device_ids: list[str], deleted: bool) -> None:
        """:attr:`~fedserver.storage.users.accounts_store.AccountStore.device_change_hooks`:
        devices of our user were deleted (logout, ``DELETE /devices``, password change,
        deactivation) or renamed, in the transaction ``txn``. A deleted device's keys,
        one-time keys and waiting to-device messages go with it."""
        devices = self._store.devices
        if deleted:
            had_keys = devices.delete_device_e2e_txn(txn, user_id, device_ids)
            if had_keys:
                self.broadcast_txn(txn, user_id, had_keys, deleted=had_keys)
        else:
            with_keys = [d for d in device_ids if devices.get_device_keys_txn(txn, user_id, d) is not None]
            if with_keys:
                self.broadcast_txn(txn, user_id, with_keys)

    def on_persisted(self, room_id: str, taken: list) -> None:
        """``RoomPipeline.on_persisted``: one of our users joined a room; if it holds a
        server that was not hearing of their devices yet, announce them."""
        joins = [
            e.state_key for e, outcome in taken
            if outcome.accepted and not outcome.duplicate and e.type == "m.room.member"
            and e.state_key is not None and self.is_mine(e.state_key)
            and (e.content or {}).get("membership") == "join"
        ]
        for user_id in dict.fromkeys(joins):
            d = self._store.devices.run_write(self._announce_join_txn, user_id, room_id)
            d.addErrback(log_background_failure, "Announcing the devices of {user} failed", logger=log, user=user_id)

    def _announce_join_txn(self, txn: Txn, user_id: str, room_id: str) -> None:
        with_keys = list(self.device_keys_txn(txn, user_id, None))
        if with_keys:
            self.broadcast_txn(txn, user_id, with_keys, only_if_new_servers_in=room_id)

    # -- /user/devices --------------------------------------------------------------------

    async def user_devices(self, user_id: str) -> dict[str, Any]:
        """``GET /_matrix/federation/v1/user/devices/{userId}`` of one of our users: the
        devices with keys, the ``stream_id`` of the list (that of the last
        ``m.device_list_update`` sent) and the public master and self-signing keys."""

        def txn_func(txn: Txn) -> dict[str, Any]:
            devices = self._store.devices
            keys = self.device_keys_txn(txn, user_id, None)
            names = devices.get_local_devices_txn(txn, {user_id: None}, with_keys_only=False).get(user_id, {})
            out: dict[str, Any] = {
                "user_id": user_id,
                "stream_id": devices.get_update_id_txn(txn, user_id),
                "devices": [],
            }
            for device_id in sorted(keys):
                entry: dict[str, Any] = {"device_id": device_id, "keys": keys[device_id]}
                name = names.get(device_id)
                if name is not None and name.display_name is not None:
                    entry["device_display_name"] = name.display_name
                out["devices"].append(entry)
            cross = devices.get_cross_signing_keys_txn(txn, [user_id], ("master", "self_signing")).get(user_id, {})
            sigs = devices.get_signatures_txn(txn, [user_id], signers=[user_id])
            if "master" in cross:
                master = cross["master"]
                pub = next(iter(master.get("keys", {}).values()), None)
                out["master_key"] = with_signatures(master, sigs.get((user_id, pub), []))
            if "self_signing" in cross:
                out["self_signing_key"] = cross["self_signing"]
            return out

        return await self._store.devices.run_read(txn_func)


__all__ = ["DEVICE_LIST_UPDATE", "LocalDeviceLists", "SIGNING_KEY_UPDATE", "server_of"]
