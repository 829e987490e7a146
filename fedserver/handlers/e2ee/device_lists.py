"""Other servers' users' device lists (the EDUs in, resyncs, the cache) and the device-list changes /sync and /keys/changes report."""

# Server-server "Device Management": "When a server wishes to determine a remote user's
# device list for the first time, it should populate a local cache from the result of a
# /user/keys/query API on the remote server. However, subsequent updates to the cache
# should be applied by consuming m.device_list_update EDUs." "If a server receives an
# EDU which refers to a prev_id it does not recognise, it must resynchronise its list"
# (we use /user/devices, whose answer carries the stream_id to continue from).
# We cache a user's list only while one of our users shares a room with them (only then
# does their server keep us informed); the cache is checked against the rooms on use.
#
# Client-Server "Extensions to /sync": device_lists.changed lists "users who have updated
# their device identity or cross-signing keys, or who now share an encrypted room with
# the client since the previous sync response", left "users with whom we do not share any
# encrypted rooms anymore". As the spec allows ("for the sake of simpler logic"), every
# room counts, encrypted or not.

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, TypeGuard

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.e2ee.keys import InvalidKeyError, check_cross_signing_key, check_device_keys, check_signed_by_master
from fedserver.federation.client import fed_path
from fedserver.handlers.client.sync_sections import SyncContext, SyncToken
from fedserver.handlers.e2ee.devices import server_of
from fedserver.errors import invalid_param
from fedserver.storage.database import Txn

log = Logger()

#: Most devices kept for one remote user (a hostile server could send thousands).
MAX_REMOTE_DEVICES = 1000
#: Seconds a resync through /user/devices may take.
RESYNC_TIMEOUT_S = 30.0


def _is_user_id(value: Any) -> "TypeGuard[str]":
    return type(value) is str and value.startswith("@") and ":" in value and len(value.encode("utf-8", "surrogatepass")) <= 255


def _device_name(keys: Any) -> Optional[str]:
    unsigned = keys.get("unsigned") if isinstance(keys, dict) else None
    name = unsigned.get("device_display_name") if isinstance(unsigned, dict) else None
    return name if type(name) is str and len(name) <= 512 else None


def checked_remote_device_keys(user_id: str, device_id: Any, keys: Any) -> Optional[dict[str, Any]]:
    """Device keys another server sent for its user, if they are well-formed and signed
    by the device itself (what its owner uploaded); ``None`` otherwise."""
    if type(device_id) is not str or not device_id:
        return None
    try:
        return check_device_keys(keys, user_id, device_id).json
    except InvalidKeyError:
        return None


def checked_remote_signing_keys(user_id: str, master: Any, self_signing: Any) -> dict[str, Any]:
    """The master and self-signing keys another server sent for its user that are
    well-formed (the self-signing key signed by the master key): ``{key_type: json}``."""
    out: dict[str, Any] = {}
    master_key = None
    if master is not None:
        try:
            master_key = check_cross_signing_key(master, user_id, "master")
            out["master"] = master_key
        except InvalidKeyError:
            pass
    if self_signing is not None and master_key is not None:
        try:
            ssk = check_cross_signing_key(self_signing, user_id, "self_signing")
            check_signed_by_master(ssk, user_id, master_key)
            out["self_signing"] = ssk
        except InvalidKeyError:
            pass
    return out


class RemoteDeviceLists:
    """Device lists of other servers' users: ``m.device_list_update`` and
    ``m.signing_key_update`` EDUs in, resyncs through ``/user/devices``, the cache.

    :param store: the :class:`~fedserver.storage.sqlite.SQLiteStore`.
    :param server_name: ours.
    :param federation_client: ``get_json(destination, path, timeout=)``.
    :param call_from_thread: runs a function in the reactor thread.
    :param notify_users: wakes the /sync long-polls of our users.
    """

    def __init__(
        self,
        store: Any,
        server_name: str,
        federation_client: Any,
        *,
        call_from_thread: Callable[..., Any],
        notify_users: Callable[[Iterable[str]], None],
    ) -> None:
        self._store = store
        self.server_name = server_name
        self._client = federation_client
        self._call_from_thread = call_from_thread
        self._notify_users = notify_users
        self._locks: dict[str, defer.DeferredLock] = {}
        self._pending: set[defer.Deferred] = set()

    def _lock(self, user_id: str) -> defer.DeferredLock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = defer.DeferredLock()
        return lock

    async def _locked(self, user_id: str, work: Callable[[], Any]) -> Any:
        lock = self._lock(user_id)
        await lock.acquire()
        try:
            return await work()
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user_id, None)

    def _changed_txn(self, txn: Txn, user_id: str) -> None:
        """``user_id``'s list changed: the stream moves; our users sharing a room with
        them are woken after the commit."""
        devices = self._store.devices
        devices.record_change_txn(txn, [user_id])
        local = sorted(u for u in devices.get_users_sharing_room_txn(txn, user_id) if server_of(u) == self.server_name)
        txn.call_after_commit(self._call_from_thread, self._notify, local)

    def _notify(self, users: list[str]) -> None:
        try:
            self._notify_users(users)
        except Exception:  # noqa: BLE001
            log.failure("Waking after a remote device list change failed")

    def _shares_room_txn(self, txn: Txn, user_id: str) -> bool:
        return any(server_of(u) == self.server_name for u in self._store.devices.get_users_sharing_room_txn(txn, user_id))

    # -- EDUs in -------------------------------------------------------------------------

    def on_device_list_update(self, origin: str, content: dict[str, Any]) -> "defer.Deferred[None]":
        """``m.device_list_update`` from ``origin``. An EDU about a user of another
        server than the origin is ignored (HOSTILE row 35), as is one about a user no
        user of ours shares a room with."""
        user_id = content.get("user_id")
        device_id = content.get("device_id")
        stream_id = content.get("stream_id")
        prev_ids = content.get("prev_id") or []
        deleted = content.get("deleted", False)
        if not _is_user_id(user_id) or server_of(user_id) != origin or origin == self.server_name:
            log.info("Ignoring m.device_list_update from {origin} about {user!r:.100}", origin=origin, user=user_id)
            return defer.succeed(None)
        if (
            type(device_id) is not str or not device_id or len(device_id) > 255
            or type(stream_id) is not int or not (0 <= stream_id < 2**63)
            or type(prev_ids) is not list or not all(type(p) is int for p in prev_ids)
            or type(deleted) is not bool
        ):
            log.info("Ignoring a malformed m.device_list_update from {origin}", origin=origin)
            return defer.succeed(None)
        keys = None
        if not deleted and content.get("keys") is not None:
            keys = checked_remote_device_keys(user_id, device_id, content["keys"])
            if keys is None:
                log.info("Ignoring bad keys of {user}/{device} from {origin}", user=user_id, device=device_id, origin=origin)
        name = content.get("device_display_name")
        name = name if type(name) is str and len(name) <= 512 else None
        return defer.ensureDeferred(
            self._locked(user_id, lambda: self._apply_update(user_id, device_id, stream_id, prev_ids, deleted, keys, name))
        )

    async def _apply_update(
        self, user_id: str, device_id: str, stream_id: int, prev_ids: list[int], deleted: bool,
        keys: Optional[dict[str, Any]], name: Optional[str],
    ) -> None:
        devices = self._store.devices

        def txn_func(txn: Txn) -> str:
            if not self._shares_room_txn(txn, user_id):
                devices.forget_remote_txn(txn, user_id)
                return "ignored"
            state = devices.get_remote_list_txn(txn, user_id)
            if state is None:
                # Not cached: nothing to update, but our users' clients must query again.
                self._changed_txn(txn, user_id)
                return "changed"
            if state.stream_id is not None and stream_id <= state.stream_id and not state.stale:
                return "old"
            if state.stale or state.stream_id is None or any(p > state.stream_id for p in prev_ids):
                devices.mark_remote_stale_txn(txn, user_id)
                self._changed_txn(txn, user_id)
                return "resync"
            devices.update_remote_device_txn(
                txn, user_id, device_id, stream_id, deleted=deleted, display_name=name, keys=keys
            )
            self._changed_txn(txn, user_id)
            return "applied"

        outcome = await devices.run_write(txn_func)
        log.debug("m.device_list_update {user}/{device} {stream}: {outcome}", user=user_id, device=device_id,
                  stream=stream_id, outcome=outcome)
        if outcome == "resync":
            await self._resync(user_id)

    def on_signing_key_update(self, origin: str, content: dict[str, Any]) -> "defer.Deferred[None]":
        """``m.signing_key_update`` from ``origin``: the new public cross-signing keys of
        one of its users (ignored for other servers' users, HOSTILE row 35)."""
        user_id = content.get("user_id")
        if not _is_user_id(user_id) or server_of(user_id) != origin or origin == self.server_name:
            log.info("Ignoring m.signing_key_update from {origin} about {user!r:.100}", origin=origin, user=user_id)
            return defer.succeed(None)
        master = content.get("master_key")
        if master is None:
            # Only a new self-signing key: check it against the master key we hold.
            return defer.ensureDeferred(self._locked(user_id, lambda: self._apply_signing_keys(user_id, None, content.get("self_signing_key"))))
        return defer.ensureDeferred(self._locked(user_id, lambda: self._apply_signing_keys(user_id, master, content.get("self_signing_key"))))

    async def _apply_signing_keys(self, user_id: str, master: Any, self_signing: Any) -> None:
        devices = self._store.devices
        if master is None:
            held = (await devices.get_cross_signing_keys([user_id], ("master",))).get(user_id, {}).get("master")
            if held is None:
                return
            keys = checked_remote_signing_keys(user_id, held, self_signing)
            keys.pop("master", None)
        else:
            keys = checked_remote_signing_keys(user_id, master, self_signing)
        if not keys:
            log.info("Ignoring an m.signing_key_update of {user} without valid keys", user=user_id)
            return

        def txn_func(txn: Txn) -> None:
            if not self._shares_room_txn(txn, user_id):
                return
            for key_type, key in keys.items():
                devices.set_cross_signing_key_txn(txn, user_id, key_type, key.public_key, key.json)
            self._changed_txn(txn, user_id)

        await devices.run_write(txn_func)

    # -- resyncing -----------------------------------------------------------------------

    async def _resync(self, user_id: str) -> bool:
        """Replace the cache of ``user_id`` with what ``/user/devices`` answers now.

        :returns: whether it worked (if not, the list stays stale: the next query asks
            the server again).
        """
        try:
            answer = await self._client.get_json(
                server_of(user_id), fed_path("/_matrix/federation/v1/user/devices/{}", user_id), timeout=RESYNC_TIMEOUT_S
            )
        except Exception as e:  # noqa: BLE001 - any failure leaves the list stale
            log.info("Resyncing the devices of {user} failed: {e}", user=user_id, e=str(e)[:200])
            return False
        if not isinstance(answer, dict) or answer.get("user_id") != user_id or type(answer.get("stream_id")) is not int:
            log.info("Bad /user/devices answer for {user}", user=user_id)
            return False
        stream_id = answer["stream_id"]
        listed = answer.get("devices")
        if type(listed) is not list:
            return False
        snapshot = []
        for entry in listed[:MAX_REMOTE_DEVICES]:
            if not isinstance(entry, dict):
                continue
            device_id = entry.get("device_id")
            keys = checked_remote_device_keys(user_id, device_id, entry.get("keys"))
            if keys is None:
                continue
            name = entry.get("device_display_name")
            snapshot.append((device_id, name if type(name) is str and len(name) <= 512 else None, keys))
        signing = checked_remote_signing_keys(user_id, answer.get("master_key"), answer.get("self_signing_key"))
        devices = self._store.devices

        def txn_func(txn: Txn) -> None:
            if not self._shares_room_txn(txn, user_id):
                return
            devices.replace_remote_list_txn(txn, user_id, stream_id, snapshot)
            devices.delete_cross_signing_keys_txn(txn, user_id)
            for key_type, key in signing.items():
                devices.set_cross_signing_key_txn(txn, user_id, key_type, key.public_key, key.json)
            self._changed_txn(txn, user_id)

        await devices.run_write(txn_func)
        log.info("Resynced the devices of {user} at {stream}: {n} devices", user=user_id, stream=stream_id, n=len(snapshot))
        return True

    async def _resync_locked(self, user_id: str) -> bool:
        return bool(await self._locked(user_id, lambda: self._resync(user_id)))

    # -- the cache, for /keys/query -------------------------------------------------------

    async def cached(self, user_ids: Iterable[str]) -> dict[str, Any]:
        """Users whose cached list can answer a query (fresh, and still sharing a room
        with one of our users), resyncing stale ones first: ``{user_id: RemoteListState}``."""
        ids = list(dict.fromkeys(user_ids))
        states = await self._store.devices.get_remote_lists(ids)
        out = {}
        for user_id, state in states.items():
            if state.stale and not await self._resync_locked(user_id):
                continue
            out[user_id] = state
        if out:
            sharing = await self._store.devices.run_read(
                lambda txn: {u for u in out if self._shares_room_txn(txn, u)}
            )
            out = {u: s for u, s in out.items() if u in sharing}
        return out

    async def cache_query_answer(self, user_id: str, devices_json: dict[str, Any], master: Any, self_signing: Any) -> None:
        """Start caching ``user_id`` from a ``/user/keys/query`` answer (no stream id: the
        next update resyncs), if one of our users shares a room with them."""
        snapshot = []
        for device_id, keys in list(devices_json.items())[:MAX_REMOTE_DEVICES]:
            checked = checked_remote_device_keys(user_id, device_id, keys)
            if checked is not None:
                snapshot.append((device_id, _device_name(keys), checked))
        signing = checked_remote_signing_keys(user_id, master, self_signing)
        devices = self._store.devices

        def txn_func(txn: Txn) -> None:
            if devices.get_remote_list_txn(txn, user_id) is not None or not self._shares_room_txn(txn, user_id):
                return
            devices.replace_remote_list_txn(txn, user_id, None, snapshot)
            for key_type, key in signing.items():
                devices.set_cross_signing_key_txn(txn, user_id, key_type, key.public_key, key.json)

        await self._locked(user_id, lambda: devices.run_write(txn_func))


# -- what /sync and /keys/changes report ---------------------------------------------------


class DeviceListChanges:
    """Who changed for one of our users between two positions: the ``device_lists`` of
    ``/sync`` (the ``l`` section of the token) and ``/keys/changes``.

    :param store: the :class:`~fedserver.storage.sqlite.SQLiteStore`.
    """

    key = "l"

    def __init__(self, store: Any) -> None:
        self._store = store

    def current_position(self, user_id: str) -> "defer.Deferred[int]":
        return self._store.devices.get_position()

    async def contribute(self, ctx: SyncContext, since: Optional[int], now: int) -> bool:
        """Client-Server "Extensions to /sync": ``device_lists`` is only populated for an
        incremental sync."""
        if since is None:
            return False
        changed, left = await self.changes(
            ctx.user_id, since, now, ctx.since_events, ctx.now_events, sent_whole=ctx.newly_joined
        )
        if not changed and not left:
            return False
        ctx.result["device_lists"] = {"changed": sorted(changed), "left": sorted(left)}
        return True

    async def changes(
        self, user_id: str, since: int, now: int, since_events: Optional[int], now_events: int,
        sent_whole: Iterable[str] = (),
    ) -> tuple[set[str], set[str]]:
        """``(changed, left)`` for ``user_id`` between device-list positions ``(since,
        now]`` and event positions ``(since_events, now_events]``.

        ``changed``: users sharing a room with ``user_id`` (or ``user_id`` itself) whose
        devices or cross-signing keys changed; users who joined one of their rooms; the
        members of rooms they joined. ``left``: members of rooms they or the members left
        who share no room with them any more.

        :param sent_whole: rooms this ``/sync`` sends whole, as if just joined: their
            members count as new too (a room joined with partial state whose resync
            ended since the token: its members arrived with the resync, not as member
            events after the token).
        """
        devices = self._store.devices
        whole = set(sent_whole)

        def txn_func(txn: Txn) -> tuple[set[str], set[str]]:
            moved = devices.get_changed_users_txn(txn, since, now) if now > since else set()
            changed = devices.filter_users_sharing_room_txn(txn, user_id, moved - {user_id})
            if user_id in moved:
                changed.add(user_id)
            left: set[str] = set()
            if since_events is not None and now_events > since_events:
                joined_now = set(devices.get_joined_rooms_txn(txn, user_id))
                mine = devices.get_member_changes_txn(txn, (), since_events, now_events, user_id=user_id)
                newly_joined = {c.room_id for c in mine if c.membership == "join" and c.room_id in joined_now}
                left_rooms = {c.room_id for c in mine if c.membership in ("leave", "ban") and c.room_id not in joined_now}
                candidates: set[str] = set()
                for c in devices.get_member_changes_txn(txn, joined_now - newly_joined, since_events, now_events):
                    if c.user_id == user_id:
                        continue
                    if c.membership == "join":
                        changed.add(c.user_id)
                    elif c.membership in ("leave", "ban"):
                        candidates.add(c.user_id)
                changed |= devices.get_joined_members_txn(txn, newly_joined) - {user_id}
                candidates |= devices.get_joined_members_txn(txn, left_rooms)
                candidates -= {user_id}
                if candidates:
                    still = devices.filter_users_sharing_room_txn(txn, user_id, candidates)
                    left = candidates - still
                changed -= left
            if whole:
                changed |= devices.get_joined_members_txn(txn, whole) - {user_id} - left
            return changed, left

        return await devices.run_read(txn_func)

    async def keys_changes(self, user_id: str, from_token: str, to_token: str) -> dict[str, Any]:
        """``GET /keys/changes?from=&to=`` with two ``/sync`` tokens.

        :raises MatrixError: 400 ``M_INVALID_PARAM`` for a token that is not ours.
        """
        start = SyncToken.parse(from_token)
        end = SyncToken.parse(to_token)
        if start is None:
            raise invalid_param("from", "Invalid sync token")
        if end is None:
            raise invalid_param("to", "Invalid sync token")
        since = start.sections.get(self.key, 0)
        now = end.sections.get(self.key)
        if now is None:
            now = await self._store.devices.get_position()
        changed, left = await self.changes(user_id, since, max(now, since), start.events, max(end.events, start.events))
        return {"changed": sorted(changed), "left": sorted(left)}


__all__ = [
    "DeviceListChanges",
    "RemoteDeviceLists",
    "checked_remote_device_keys",
    "checked_remote_signing_keys",
]
