"""Storage for server-side key backups: each user's backup versions and the encrypted session keys in them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from twisted.internet.defer import Deferred

from fedserver.storage.database import Database, Txn, check_int, check_text, lookup_text
from fedserver.storage.users.devices_store import decode_json, encode_json


@dataclass(frozen=True, slots=True)
class BackupVersion:
    """One backup version (``GET /room_keys/version``).

    :ivar etag: grows with every change of the version's keys.
    :ivar count: how many session keys it holds.
    """

    version: int
    algorithm: str
    auth_data: dict[str, Any]
    etag: int
    count: int


@dataclass(frozen=True, slots=True)
class SessionKey:
    """One backed-up session key (spec "KeyBackupData")."""

    room_id: str
    session_id: str
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "first_message_index": self.first_message_index,
            "forwarded_count": self.forwarded_count,
            "is_verified": self.is_verified,
            "session_data": self.session_data,
        }


def _better(new: SessionKey, old: SessionKey) -> bool:
    """Client-Server "Server-side key backups": of two keys for one session, keep the one
    with ``is_verified`` true; then the lower ``first_message_index``; then the lower
    ``forwarded_count`` (the old one stays when they tie)."""
    if new.is_verified != old.is_verified:
        return new.is_verified
    if new.first_message_index != old.first_message_index:
        return new.first_message_index < old.first_message_index
    return new.forwarded_count < old.forwarded_count


class KeyBackupStore:
    """SQL for key backups (schema 009). Every method is one transaction and returns a
    Deferred.

    :param db: the database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    def on_deactivated_txn(txn: Txn, user_id: str, erase: bool) -> None:
        """``DeactivationStore.hooks``: with ``erase`` (spec: "any non-event data
        associated with the user"), the user's key backups go."""
        if erase:
            txn.execute("DELETE FROM e2e_room_keys WHERE user_id = ?", (user_id,))
            txn.execute("DELETE FROM e2e_room_keys_versions WHERE user_id = ?", (user_id,))

    def create_version(self, user_id: str, algorithm: str, auth_data: dict[str, Any]) -> "Deferred[int]":
        """A new backup version, which becomes the current one; numbers are never reused.

        :returns: Deferred firing with the version number.
        """
        check_text(user_id, "user_id")
        check_text(algorithm, "algorithm")
        encoded = encode_json(auth_data)

        def txn_func(txn: Txn) -> int:
            (top,) = txn.execute("SELECT MAX(version) FROM e2e_room_keys_versions WHERE user_id = ?", (user_id,)).fetchone()
            version = 1 if top is None else top + 1
            txn.execute(
                "INSERT INTO e2e_room_keys_versions (user_id, version, algorithm, auth_data, etag, deleted)"
                " VALUES (?, ?, ?, ?, 0, 0)",
                (user_id, version, algorithm, encoded),
            )
            return version

        return self._db.run_write(txn_func)

    def _current_txn(self, txn: Txn, user_id: str) -> Optional[int]:
        row = txn.execute(
            "SELECT MAX(version) FROM e2e_room_keys_versions WHERE user_id = ? AND deleted = 0", (user_id,)
        ).fetchone()
        return None if row is None else row[0]

    def _version_txn(self, txn: Txn, user_id: str, version: int) -> Optional[BackupVersion]:
        row = txn.execute(
            "SELECT algorithm, auth_data, etag FROM e2e_room_keys_versions WHERE user_id = ? AND version = ? AND deleted = 0",
            (user_id, version),
        ).fetchone()
        if row is None:
            return None
        (count,) = txn.execute(
            "SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = ? AND version = ?", (user_id, version)
        ).fetchone()
        return BackupVersion(version, row[0], decode_json(row[1]), row[2], count)

    def get_version(self, user_id: str, version: Optional[int] = None) -> "Deferred[Optional[BackupVersion]]":
        """A version (``None``: the current one), or ``None`` if there is none / it was
        deleted."""
        check_int(version, "version", nullable=True)

        def txn_func(txn: Txn) -> Optional[BackupVersion]:
            if not lookup_text(user_id, "user_id"):
                return None
            v = self._current_txn(txn, user_id) if version is None else version
            return None if v is None else self._version_txn(txn, user_id, v)

        return self._db.run_read(txn_func)

    def get_current_version_number(self, user_id: str) -> "Deferred[Optional[int]]":
        """The number of the current (newest not deleted) version, or ``None``."""
        return self._db.run_read(lambda txn: self._current_txn(txn, user_id) if lookup_text(user_id, "user_id") else None)

    def update_auth_data(self, user_id: str, version: int, auth_data: dict[str, Any]) -> "Deferred[bool]":
        """Replace a version's ``auth_data``; ``False`` if it does not exist."""
        check_text(user_id, "user_id")
        check_int(version, "version")
        encoded = encode_json(auth_data)
        return self._db.run_write(
            lambda txn: txn.execute(
                "UPDATE e2e_room_keys_versions SET auth_data = ? WHERE user_id = ? AND version = ? AND deleted = 0",
                (encoded, user_id, version),
            ).rowcount > 0
        )

    def delete_version(self, user_id: str, version: int) -> "Deferred[Optional[bool]]":
        """Delete a version and its keys.

        :returns: Deferred firing with ``True`` if deleted now, ``False`` if it was
            deleted before, ``None`` if it never existed.
        """
        check_text(user_id, "user_id")
        check_int(version, "version")

        def txn_func(txn: Txn) -> Optional[bool]:
            row = txn.execute(
                "SELECT deleted FROM e2e_room_keys_versions WHERE user_id = ? AND version = ?", (user_id, version)
            ).fetchone()
            if row is None:
                return None
            if row[0]:
                return False
            txn.execute("UPDATE e2e_room_keys_versions SET deleted = 1 WHERE user_id = ? AND version = ?", (user_id, version))
            txn.execute("DELETE FROM e2e_room_keys WHERE user_id = ? AND version = ?", (user_id, version))
            return True

        return self._db.run_write(txn_func)

    def put_keys(self, user_id: str, version: int, keys: Iterable[SessionKey]) -> "Deferred[Optional[tuple[int, int]]]":
        """Store session keys in ``version``, which must be the current version; a key
        for a session already held replaces it only if it is better (:func:`_better`).

        :returns: Deferred firing with ``(etag, count)`` afterwards, or ``None`` if
            ``version`` is not the current version (nothing stored).
        """
        check_text(user_id, "user_id")
        check_int(version, "version")
        rows = list(keys)
        for k in rows:
            check_text(k.room_id, "room_id")
            check_text(k.session_id, "session_id")
            check_int(k.first_message_index, "first_message_index")
            check_int(k.forwarded_count, "forwarded_count")
        encoded = [encode_json(k.session_data) for k in rows]

        def txn_func(txn: Txn) -> Optional[tuple[int, int]]:
            if self._current_txn(txn, user_id) != version:
                return None
            changed = False
            for k, data in zip(rows, encoded):
                old = txn.execute(
                    "SELECT first_message_index, forwarded_count, is_verified FROM e2e_room_keys"
                    " WHERE user_id = ? AND version = ? AND room_id = ? AND session_id = ?",
                    (user_id, version, k.room_id, k.session_id),
                ).fetchone()
                if old is not None and not _better(k, SessionKey(k.room_id, k.session_id, old[0], old[1], bool(old[2]), {})):
                    continue
                txn.execute(
                    "INSERT INTO e2e_room_keys (user_id, version, room_id, session_id, first_message_index,"
                    " forwarded_count, is_verified, session_data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET"
                    " first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count,"
                    " is_verified = excluded.is_verified, session_data = excluded.session_data",
                    (user_id, version, k.room_id, k.session_id, k.first_message_index, k.forwarded_count,
                     int(k.is_verified), data),
                )
                changed = True
            if changed:
                txn.execute(
                    "UPDATE e2e_room_keys_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?", (user_id, version)
                )
            current = self._version_txn(txn, user_id, version)
            assert current is not None
            return current.etag, current.count

        return self._db.run_write(txn_func)

    def get_keys(
        self, user_id: str, version: int, room_id: Optional[str] = None, session_id: Optional[str] = None
    ) -> "Deferred[Optional[list[SessionKey]]]":
        """The keys of a version (all, a room's, or one session's).

        :returns: Deferred firing with the keys, or ``None`` if the version does not
            exist.
        """
        check_int(version, "version")

        def txn_func(txn: Txn) -> Optional[list[SessionKey]]:
            if not lookup_text(user_id, "user_id") or self._version_txn(txn, user_id, version) is None:
                return None
            sql = (
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data"
                " FROM e2e_room_keys WHERE user_id = ? AND version = ?"
            )
            params: list[Any] = [user_id, version]
            if room_id is not None:
                if not lookup_text(room_id, "room_id"):
                    return []
                sql += " AND room_id = ?"
                params.append(room_id)
            if session_id is not None:
                if not lookup_text(session_id, "session_id"):
                    return []
                sql += " AND session_id = ?"
                params.append(session_id)
            return [
                SessionKey(r[0], r[1], r[2], r[3], bool(r[4]), decode_json(r[5]))
                for r in txn.execute(sql + " ORDER BY room_id, session_id", params)
            ]

        return self._db.run_read(txn_func)

    def delete_keys(
        self, user_id: str, version: int, room_id: Optional[str] = None, session_id: Optional[str] = None
    ) -> "Deferred[Optional[tuple[int, int]]]":
        """Delete keys of a version (all, a room's, or one session's).

        :returns: Deferred firing with ``(etag, count)`` afterwards, or ``None`` if the
            version does not exist.
        """
        check_int(version, "version")

        def txn_func(txn: Txn) -> Optional[tuple[int, int]]:
            if not lookup_text(user_id, "user_id") or self._version_txn(txn, user_id, version) is None:
                return None
            sql = "DELETE FROM e2e_room_keys WHERE user_id = ? AND version = ?"
            params: list[Any] = [user_id, version]
            for column, value in (("room_id", room_id), ("session_id", session_id)):
                if value is not None:
                    if not lookup_text(value, column):
                        params = []
                        break
                    sql += f" AND {column} = ?"
                    params.append(value)
            if params and txn.execute(sql, params).rowcount:
                txn.execute(
                    "UPDATE e2e_room_keys_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?", (user_id, version)
                )
            current = self._version_txn(txn, user_id, version)
            assert current is not None
            return current.etag, current.count

        return self._db.run_write(txn_func)


__all__ = ["BackupVersion", "KeyBackupStore", "SessionKey"]
