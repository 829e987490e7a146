"""Local accounts: users, hashed access tokens, devices, profiles, account data and filters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from twisted.internet.defer import Deferred, succeed

from fedserver.storage.cache import LruCache
from fedserver.storage.database import Database, Txn, check_int, check_text, deferred_errors, encode_stored_json, lookup_ids, lookup_text
from fedserver.storage.interface import InvalidDataError, StorageError

#: Profile fields that have their own column.
PROFILE_FIELDS = ("displayname", "avatar_url")

#: The ``room_id`` stored for global account data.
GLOBAL_ROOM = ""


class UserExistsError(StorageError):
    """A user with this id already exists."""


class UnknownUserError(StorageError):
    """No local user has this id."""


@dataclass(frozen=True, slots=True)
class UserInfo:
    """One local user's row (the password hash included: never send it anywhere)."""

    user_id: str
    password_hash: Optional[str]
    created_ts: int
    admin: bool
    deactivated: bool
    is_guest: bool
    user_type: Optional[str]


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """Who an access token belongs to.

    :ivar token_id: identifies the token without revealing it (for logout).
    """

    user_id: str
    device_id: Optional[str]
    token_id: int
    is_guest: bool


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One device of a user (``GET /devices``)."""

    user_id: str
    device_id: str
    display_name: Optional[str]
    last_seen_ts: Optional[int]
    last_seen_ip: Optional[str]


@dataclass(frozen=True, slots=True)
class AccountDataChanges:
    """Account data changed after a stream position (for ``/sync``).

    :ivar global_data: ``{type: content}``.
    :ivar rooms: ``{room_id: {type: content}}``.
    :ivar stream_id: the position to ask from next time.
    """

    global_data: dict[str, Any]
    rooms: dict[str, dict[str, Any]]
    stream_id: int


def _encode_object(value: Any, what: str) -> bytes:
    if type(value) is not dict:
        raise InvalidDataError(f"{what} must be a JSON object")
    try:
        return encode_stored_json(value)
    except (TypeError, ValueError, UnicodeError, RecursionError) as e:
        raise InvalidDataError(f"{what} is not JSON-serialisable: {e}") from None


def _decode(data: Any) -> Any:
    return json.loads(bytes(data).decode("utf-8"))


class AccountStore:
    """SQL for local accounts, with a Deferred API (each call one transaction) and ``_txn``
    variants for callers that combine writes in :meth:`Database.run_write`.

    Access tokens are looked up by the hex SHA-256 of the token (the token itself is
    never stored); lookups are cached in memory and the cache entry is dropped when the
    token is deleted in this process.

    :param db: the database.
    :param clock_ms: the current time in milliseconds.
    :param token_cache_size: how many token lookups to keep in memory.
    """

    def __init__(self, db: Database, clock_ms: Callable[[], int], *, token_cache_size: int = 10_000):
        self._db = db
        self._clock_ms = clock_ms
        self._token_cache: LruCache[str, TokenInfo] = LruCache(token_cache_size)
        #: ``hook(txn, user_id, device_ids, deleted)`` run inside every transaction that
        #: deletes (``deleted`` true) or renames devices, so that what hangs on a device
        #: (its encryption keys, the device list other users see) changes with it, in
        #: the same transaction.
        self.device_change_hooks: list[Callable[[Txn, str, list[str], bool], None]] = []

    def _devices_changed_txn(self, txn: Txn, user_id: str, device_ids: list[str], deleted: bool) -> None:
        if device_ids:
            for hook in self.device_change_hooks:
                hook(txn, user_id, device_ids, deleted)

    # -- users ------------------------------------------------------------------------

    @deferred_errors
    def create_user(
        self,
        user_id: str,
        password_hash: Optional[str],
        *,
        admin: bool = False,
        is_guest: bool = False,
        user_type: Optional[str] = None,
        displayname: Optional[str] = None,
        device_id: Optional[str] = None,
        device_display_name: Optional[str] = None,
        token_hash: Optional[str] = None,
        ip: Optional[str] = None,
    ) -> "Deferred[Optional[int]]":
        """Create a user with an (empty or ``displayname``) profile and, if ``device_id``
        is given, a device and (with ``token_hash``) an access token, all in ONE
        transaction.

        :returns: Deferred firing with the new token's id, or ``None`` without a token.
        :raises UserExistsError: (in the Deferred) if the user id is taken; nothing is
            written.
        """
        return self._db.run_write(
            self.create_user_txn,
            user_id,
            password_hash,
            admin=admin,
            is_guest=is_guest,
            user_type=user_type,
            displayname=displayname,
            device_id=device_id,
            device_display_name=device_display_name,
            token_hash=token_hash,
            ip=ip,
        )

    def create_user_txn(
        self,
        txn: Txn,
        user_id: str,
        password_hash: Optional[str],
        *,
        admin: bool = False,
        is_guest: bool = False,
        user_type: Optional[str] = None,
        displayname: Optional[str] = None,
        device_id: Optional[str] = None,
        device_display_name: Optional[str] = None,
        token_hash: Optional[str] = None,
        ip: Optional[str] = None,
    ) -> Optional[int]:
        """:meth:`create_user` inside the caller's transaction."""
        check_text(user_id, "user_id")
        check_text(password_hash, "password_hash", nullable=True)
        check_text(user_type, "user_type", nullable=True)
        check_text(displayname, "displayname", nullable=True)
        now = self._clock_ms()
        inserted = txn.execute(
            "INSERT INTO users (user_id, password_hash, created_ts, admin, deactivated, is_guest,"
            " user_type) VALUES (?, ?, ?, ?, 0, ?, ?) ON CONFLICT (user_id) DO NOTHING",
            (user_id, password_hash, now, int(bool(admin)), int(bool(is_guest)), user_type),
        ).rowcount
        if not inserted:
            raise UserExistsError(f"user {user_id} already exists")
        txn.execute(
            "INSERT INTO profiles (user_id, displayname, avatar_url) VALUES (?, ?, NULL)",
            (user_id, displayname),
        )
        if device_id is None:
            if token_hash is not None:
                raise InvalidDataError("an access token needs a device")
            return None
        return self.add_access_token_txn(txn, user_id, device_id, token_hash, device_display_name, ip)

    @deferred_errors
    def get_user(self, user_id: str) -> "Deferred[Optional[UserInfo]]":
        """The user's row, or ``None`` if there is no such local user."""
        return self._db.run_read(self.get_user_txn, user_id)

    def get_user_txn(self, txn: Txn, user_id: str) -> Optional[UserInfo]:
        """:meth:`get_user` inside the caller's transaction."""
        if not lookup_text(user_id, "user_id"):
            return None
        row = txn.execute(
            "SELECT user_id, password_hash, created_ts, admin, deactivated, is_guest, user_type"
            " FROM users WHERE user_id = ?",
            (user_id,),
        ).fetchone()
        if row is None:
            return None
        return UserInfo(row[0], row[1], row[2], bool(row[3]), bool(row[4]), bool(row[5]), row[6])

    @deferred_errors
    def count_users(self) -> "Deferred[int]":
        """How many local users exist (deactivated ones included)."""
        return self._db.run_read(
            lambda txn: txn.execute("SELECT COUNT(*) FROM users").fetchone()[0]
        )

    @deferred_errors
    def set_admin(self, user_id: str, admin: bool) -> "Deferred[None]":
        """Make the user a server admin or not.

        :raises UnknownUserError: (in the Deferred) if there is no such user.
        """
        check_text(user_id, "user_id")

        def txn_func(txn: Txn) -> None:
            n = txn.execute(
                "UPDATE users SET admin = ? WHERE user_id = ?", (int(bool(admin)), user_id)
            ).rowcount
            if not n:
                raise UnknownUserError(user_id)

        return self._db.run_write(txn_func)

    @deferred_errors
    def set_deactivated(self, user_id: str, deactivated: bool = True) -> "Deferred[None]":
        """Deactivate (or reactivate) the user; deactivating also deletes every access
        token and device of the user.

        :raises UnknownUserError: (in the Deferred) if there is no such user.
        """
        check_text(user_id, "user_id")

        def txn_func(txn: Txn) -> None:
            n = txn.execute(
                "UPDATE users SET deactivated = ? WHERE user_id = ?", (int(bool(deactivated)), user_id)
            ).rowcount
            if not n:
                raise UnknownUserError(user_id)
            if deactivated:
                self.delete_all_tokens_txn(txn, user_id)

        return self._db.run_write(txn_func)

    @deferred_errors
    def set_password_hash(
        self, user_id: str, password_hash: Optional[str], *, keep_token_id: Optional[int] = None, logout_devices: bool = False
    ) -> "Deferred[None]":
        """Replace the user's password hash; with ``logout_devices``, also delete every
        access token and device except the device of ``keep_token_id`` (in the same
        transaction).

        :raises UnknownUserError: (in the Deferred) if there is no such user.
        """
        check_text(user_id, "user_id")
        check_text(password_hash, "password_hash", nullable=True)

        def txn_func(txn: Txn) -> None:
            n = txn.execute(
                "UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id)
            ).rowcount
            if not n:
                raise UnknownUserError(user_id)
            if logout_devices:
                self.delete_all_tokens_txn(txn, user_id, except_token_id=keep_token_id)

        return self._db.run_write(txn_func)

    # -- access tokens and devices ----------------------------------------------------

    @deferred_errors
    def add_access_token(
        self,
        user_id: str,
        device_id: str,
        token_hash: str,
        device_display_name: Optional[str] = None,
        ip: Optional[str] = None,
    ) -> "Deferred[int]":
        """Store a new access token for ``device_id`` (creating the device if it is new;
        the device's older tokens are deleted: spec "Relationship between access tokens
        and devices" lets a server invalidate them).

        :param token_hash: hex SHA-256 of the token.
        :returns: Deferred firing with the token id.
        """
        return self._db.run_write(
            self.add_access_token_txn, user_id, device_id, token_hash, device_display_name, ip
        )

    def add_access_token_txn(
        self,
        txn: Txn,
        user_id: str,
        device_id: str,
        token_hash: Optional[str],
        device_display_name: Optional[str] = None,
        ip: Optional[str] = None,
    ) -> Optional[int]:
        """:meth:`add_access_token` inside the caller's transaction (``token_hash`` None
        only creates or touches the device)."""
        check_text(user_id, "user_id")
        check_text(device_id, "device_id")
        check_text(token_hash, "token_hash", nullable=True)
        check_text(device_display_name, "device_display_name", nullable=True)
        check_text(ip, "ip", nullable=True)
        now = self._clock_ms()
        txn.execute(
            "INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts,"
            " last_seen_ip) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE"
            " SET last_seen_ts = excluded.last_seen_ts,"
            " last_seen_ip = COALESCE(excluded.last_seen_ip, devices.last_seen_ip)",
            (user_id, device_id, device_display_name, now, now, ip),
        )
        if token_hash is None:
            return None
        self._delete_tokens_where_txn(txn, "user_id = ? AND device_id = ?", (user_id, device_id))
        token_id = txn.allocate_ids("access_token", 1)
        txn.execute(
            "INSERT INTO access_tokens (token_id, token_hash, user_id, device_id, created_ts,"
            " last_used_ts) VALUES (?, ?, ?, ?, ?, ?)",
            (token_id, token_hash, user_id, device_id, now, now),
        )
        return token_id

    @deferred_errors
    def get_token(self, token_hash: str) -> "Deferred[Optional[TokenInfo]]":
        """Who the token with this hash belongs to, or ``None`` if it is unknown or its
        user is deactivated. Answers from memory when it can."""
        cached = self._token_cache.get(token_hash)
        if cached is not None:
            return succeed(cached)
        return self._db.run_read(self.get_token_txn, token_hash)

    def get_token_txn(self, txn: Txn, token_hash: str) -> Optional[TokenInfo]:
        """:meth:`get_token` inside the caller's transaction (fills the cache)."""
        if not lookup_text(token_hash, "token_hash"):
            return None
        row = txn.execute(
            "SELECT t.user_id, t.device_id, t.token_id, u.is_guest FROM access_tokens t"
            " JOIN users u ON u.user_id = t.user_id"
            " WHERE t.token_hash = ? AND u.deactivated = 0",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        info = TokenInfo(row[0], row[1], row[2], bool(row[3]))
        # Filled after the read commits; a logout that commits later invalidates it again.
        txn.call_after_commit(self._token_cache.put, token_hash, info)
        return info

    def _delete_tokens_where_txn(self, txn: Txn, where: str, params: Sequence[Any]) -> int:
        hashes = [r[0] for r in txn.execute(f"SELECT token_hash FROM access_tokens WHERE {where}", params)]
        if not hashes:
            return 0
        txn.execute(f"DELETE FROM access_tokens WHERE {where}", params)
        # Invalidate now (so nothing answers from the cache while we commit) and again
        # after the commit (in case a concurrent read filled it in between).
        self._token_cache.invalidate(hashes)
        txn.call_after_commit(self._token_cache.invalidate, hashes)
        return len(hashes)

    @deferred_errors
    def delete_device(self, user_id: str, device_id: Optional[str], token_id: Optional[int] = None) -> "Deferred[None]":
        """Log a device out: delete its tokens and the device (``POST /logout``). A token
        without a device is deleted by ``token_id``."""
        return self._db.run_write(self.delete_devices_txn, user_id, [device_id] if device_id else [], token_id)

    @deferred_errors
    def delete_devices(self, user_id: str, device_ids: Iterable[str]) -> "Deferred[None]":
        """Delete devices and their access tokens (unknown ids are ignored)."""
        return self._db.run_write(self.delete_devices_txn, user_id, list(device_ids), None)

    def delete_devices_txn(
        self, txn: Txn, user_id: str, device_ids: list[str], token_id: Optional[int] = None
    ) -> None:
        """:meth:`delete_devices` inside the caller's transaction."""
        check_text(user_id, "user_id")
        deleted = []
        for device_id in device_ids:
            check_text(device_id, "device_id")
            self._delete_tokens_where_txn(txn, "user_id = ? AND device_id = ?", (user_id, device_id))
            if txn.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)).rowcount:
                deleted.append(device_id)
        self._devices_changed_txn(txn, user_id, deleted, True)
        if token_id is not None:
            check_int(token_id, "token_id")
            self._delete_tokens_where_txn(txn, "user_id = ? AND token_id = ?", (user_id, token_id))

    @deferred_errors
    def delete_all_tokens(self, user_id: str, *, except_token_id: Optional[int] = None) -> "Deferred[int]":
        """Delete every access token and device of the user (``POST /logout/all``),
        except the token ``except_token_id`` and its device.

        :returns: Deferred firing with how many tokens went.
        """
        return self._db.run_write(self.delete_all_tokens_txn, user_id, except_token_id=except_token_id)

    def delete_all_tokens_txn(self, txn: Txn, user_id: str, *, except_token_id: Optional[int] = None) -> int:
        """:meth:`delete_all_tokens` inside the caller's transaction."""
        check_text(user_id, "user_id")
        if except_token_id is None:
            n = self._delete_tokens_where_txn(txn, "user_id = ?", (user_id,))
            gone = [r[0] for r in txn.execute("SELECT device_id FROM devices WHERE user_id = ?", (user_id,)).fetchall()]
            txn.execute("DELETE FROM devices WHERE user_id = ?", (user_id,))
            self._devices_changed_txn(txn, user_id, gone, True)
            return n
        check_int(except_token_id, "except_token_id")
        row = txn.execute(
            "SELECT device_id FROM access_tokens WHERE user_id = ? AND token_id = ?", (user_id, except_token_id)
        ).fetchone()
        keep_device = row[0] if row is not None else None
        n = self._delete_tokens_where_txn(txn, "user_id = ? AND token_id != ?", (user_id, except_token_id))
        if keep_device is None:
            where, params = "user_id = ?", (user_id,)
        else:
            where, params = "user_id = ? AND device_id != ?", (user_id, keep_device)
        gone = [r[0] for r in txn.execute(f"SELECT device_id FROM devices WHERE {where}", params).fetchall()]
        txn.execute(f"DELETE FROM devices WHERE {where}", params)
        self._devices_changed_txn(txn, user_id, gone, True)
        return n

    @deferred_errors
    def get_devices(self, user_id: str) -> "Deferred[list[DeviceInfo]]":
        """The user's devices, by device id."""
        def txn_func(txn: Txn) -> list[DeviceInfo]:
            if not lookup_text(user_id, "user_id"):
                return []
            rows = txn.execute(
                "SELECT user_id, device_id, display_name, last_seen_ts, last_seen_ip FROM devices"
                " WHERE user_id = ? ORDER BY device_id",
                (user_id,),
            ).fetchall()
            return [DeviceInfo(*r) for r in rows]

        return self._db.run_read(txn_func)

    @deferred_errors
    def get_device(self, user_id: str, device_id: str) -> "Deferred[Optional[DeviceInfo]]":
        """One device of the user, or ``None``."""
        def txn_func(txn: Txn) -> Optional[DeviceInfo]:
            if not (lookup_text(user_id, "user_id") and lookup_text(device_id, "device_id")):
                return None
            row = txn.execute(
                "SELECT user_id, device_id, display_name, last_seen_ts, last_seen_ip FROM devices"
                " WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ).fetchone()
            return None if row is None else DeviceInfo(*row)

        return self._db.run_read(txn_func)

    @deferred_errors
    def set_device_display_name(self, user_id: str, device_id: str, display_name: Optional[str]) -> "Deferred[bool]":
        """Rename a device; ``False`` if the user has no such device."""
        check_text(user_id, "user_id")
        check_text(device_id, "device_id")
        check_text(display_name, "display_name", nullable=True)

        def txn_func(txn: Txn) -> bool:
            found = txn.execute(
                "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
                (display_name, user_id, device_id),
            ).rowcount > 0
            if found:
                self._devices_changed_txn(txn, user_id, [device_id], False)
            return found

        return self._db.run_write(txn_func)

    # -- profiles ---------------------------------------------------------------------

    @deferred_errors
    def get_profile(self, user_id: str) -> "Deferred[Optional[dict[str, Optional[str]]]]":
        """``{"displayname": ..., "avatar_url": ...}`` (values may be ``None``) of a local
        user, or ``None`` if there is no such user."""
        def txn_func(txn: Txn) -> Optional[dict[str, Optional[str]]]:
            if not lookup_text(user_id, "user_id"):
                return None
            row = txn.execute(
                "SELECT p.displayname, p.avatar_url FROM users u"
                " LEFT JOIN profiles p ON p.user_id = u.user_id WHERE u.user_id = ?",
                (user_id,),
            ).fetchone()
            return None if row is None else {"displayname": row[0], "avatar_url": row[1]}

        return self._db.run_read(txn_func)

    @deferred_errors
    def set_profile_field(self, user_id: str, field: str, value: Optional[str]) -> "Deferred[None]":
        """Set (or with ``None`` clear) ``displayname`` or ``avatar_url``.

        :raises UnknownUserError: (in the Deferred) if there is no such local user.
        """
        if field not in PROFILE_FIELDS:
            raise InvalidDataError(f"unknown profile field {field!r}")
        check_text(user_id, "user_id")
        check_text(value, field, nullable=True)

        def txn_func(txn: Txn) -> None:
            if txn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is None:
                raise UnknownUserError(user_id)
            # field is one of PROFILE_FIELDS (checked above), never caller text.
            txn.execute(
                f"INSERT INTO profiles (user_id, {field}) VALUES (?, ?)"
                f" ON CONFLICT (user_id) DO UPDATE SET {field} = excluded.{field}",
                (user_id, value),
            )

        return self._db.run_write(txn_func)

    # -- account data -----------------------------------------------------------------

    @deferred_errors
    def set_account_data(
        self, user_id: str, room_id: Optional[str], data_type: str, content: dict[str, Any]
    ) -> "Deferred[int]":
        """Store global (``room_id`` None) or per-room account data, replacing the old.

        :returns: Deferred firing with the write's stream id.
        """
        return self._db.run_write(self.set_account_data_txn, user_id, room_id, data_type, content)

    def set_account_data_txn(
        self, txn: Txn, user_id: str, room_id: Optional[str], data_type: str, content: dict[str, Any]
    ) -> int:
        """:meth:`set_account_data` inside the caller's transaction."""
        check_text(user_id, "user_id")
        check_text(room_id, "room_id", nullable=True)
        check_text(data_type, "type")
        encoded = _encode_object(content, "account data content")
        stream_id = txn.allocate_ids("account_data", 1)
        txn.execute(
            "INSERT INTO account_data (user_id, room_id, type, content, stream_id) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content,"
            " stream_id = excluded.stream_id",
            (user_id, room_id or GLOBAL_ROOM, data_type, encoded, stream_id),
        )
        return stream_id

    @deferred_errors
    def get_account_data(self, user_id: str, room_id: Optional[str], data_type: str) -> "Deferred[Optional[dict]]":
        """The content stored for ``(user, room or global, type)``, or ``None``."""
        def txn_func(txn: Txn) -> Optional[dict]:
            if not (
                lookup_text(user_id, "user_id")
                and lookup_text(room_id or GLOBAL_ROOM, "room_id")
                and lookup_text(data_type, "type")
            ):
                return None
            row = txn.execute(
                "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
                (user_id, room_id or GLOBAL_ROOM, data_type),
            ).fetchone()
            return None if row is None else _decode(row[0])

        return self._db.run_read(txn_func)

    @deferred_errors
    def get_account_data_many(
        self, user_ids: Iterable[str], room_id: Optional[str], data_type: str
    ) -> "Deferred[dict[str, dict]]":
        """:meth:`get_account_data` of many users in one transaction: ``{user_id: content}``
        for those who have it (the others are left out)."""
        ids = lookup_ids(user_ids)
        room = room_id or GLOBAL_ROOM

        def txn_func(txn: Txn) -> dict[str, dict]:
            if not (lookup_text(room, "room_id") and lookup_text(data_type, "type")):
                return {}
            rows = txn.select_in(
                "SELECT user_id, content FROM account_data WHERE room_id = ? AND type = ? AND user_id IN ({})",
                ids, (room, data_type),
            )
            return {user_id: _decode(content) for user_id, content in rows}

        return self._db.run_read(txn_func)

    @deferred_errors
    def get_account_data_since(self, user_id: str, since_stream_id: int = 0) -> "Deferred[AccountDataChanges]":
        """The user's account data written after ``since_stream_id`` (all of it from 0),
        for ``/sync``."""
        check_int(since_stream_id, "since_stream_id")

        def txn_func(txn: Txn) -> AccountDataChanges:
            global_data: dict[str, Any] = {}
            rooms: dict[str, dict[str, Any]] = {}
            top = since_stream_id
            if lookup_text(user_id, "user_id"):
                for room_id, data_type, content, stream_id in txn.execute(
                    "SELECT room_id, type, content, stream_id FROM account_data"
                    " WHERE user_id = ? AND stream_id > ? ORDER BY stream_id",
                    (user_id, since_stream_id),
                ):
                    target = global_data if room_id == GLOBAL_ROOM else rooms.setdefault(room_id, {})
                    target[data_type] = _decode(content)
                    top = max(top, stream_id)
            return AccountDataChanges(global_data, rooms, max(top, self._max_stream_txn(txn)))

        return self._db.run_read(txn_func)

    @staticmethod
    def _max_stream_txn(txn: Txn) -> int:
        row = txn.execute("SELECT last_value FROM sequences WHERE name = 'account_data'").fetchone()
        return 0 if row is None else row[0]

    @deferred_errors
    def get_max_account_data_stream_id(self) -> "Deferred[int]":
        """The newest account data stream position (0 before any write)."""
        return self._db.run_read(self._max_stream_txn)

    # -- filters ----------------------------------------------------------------------

    @deferred_errors
    def add_filter(self, user_id: str, filter_json: dict[str, Any]) -> "Deferred[int]":
        """Store a filter for the user; the same filter stored twice gets the same id.

        :returns: Deferred firing with the filter id (0, 1, ... per user).
        """
        check_text(user_id, "user_id")
        encoded = _encode_object(filter_json, "filter")

        def txn_func(txn: Txn) -> int:
            row = txn.execute(
                "SELECT filter_id FROM user_filters WHERE user_id = ? AND filter_json = ?",
                (user_id, encoded),
            ).fetchone()
            if row is not None:
                return row[0]
            (top,) = txn.execute(
                "SELECT MAX(filter_id) FROM user_filters WHERE user_id = ?", (user_id,)
            ).fetchone()
            filter_id = 0 if top is None else top + 1
            txn.execute(
                "INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
                (user_id, filter_id, encoded),
            )
            return filter_id

        return self._db.run_write(txn_func)

    @deferred_errors
    def get_filter(self, user_id: str, filter_id: int) -> "Deferred[Optional[dict]]":
        """The user's filter ``filter_id``, or ``None``."""
        check_int(filter_id, "filter_id")

        def txn_func(txn: Txn) -> Optional[dict]:
            if not lookup_text(user_id, "user_id"):
                return None
            row = txn.execute(
                "SELECT filter_json FROM user_filters WHERE user_id = ? AND filter_id = ?",
                (user_id, filter_id),
            ).fetchone()
            return None if row is None else _decode(row[0])

        return self._db.run_read(txn_func)


__all__ = [
    "AccountDataChanges",
    "AccountStore",
    "DeviceInfo",
    "PROFILE_FIELDS",
    "TokenInfo",
    "UnknownUserError",
    "UserExistsError",
    "UserInfo",
]
