"""Server-side key backups: /room_keys/version and /room_keys/keys (versioned, with etags)."""

# Client-Server "Server-side key backups": backups are per user; "Keys can only be
# written to the most recently created version of the backup" (403
# M_WRONG_ROOM_KEYS_VERSION with current_version otherwise); a key for a session already
# held replaces it only if better (is_verified, then first_message_index, then
# forwarded_count). The server cannot read the keys: session_data and auth_data are
# stored as given (the algorithm is checked, the rest is opaque).

from __future__ import annotations

from typing import Any, Mapping, Optional

from fedserver.errors import MatrixError, bad_json, invalid_param, not_found
from fedserver.storage.users.key_backup_store import BackupVersion, SessionKey
from fedserver.handlers.requester import Requester

#: Backup algorithms we accept (spec "Backup algorithm").
ALGORITHMS = frozenset({"m.megolm_backup.v1.curve25519-aes-sha2"})
M_WRONG_ROOM_KEYS_VERSION = "M_WRONG_ROOM_KEYS_VERSION"
#: Longest room id / session id.
MAX_ID_BYTES = 255


def parse_version(value: Any, name: str = "version") -> int:
    """Our versions are decimal numbers; anything else names no backup.

    :raises MatrixError: 404 ``M_NOT_FOUND`` for a version that cannot exist.
    """
    if type(value) is not str or not value.isascii() or not value.isdigit() or len(value) > 18:
        raise not_found("Unknown backup version")
    return int(value)


def _check_id(value: Any, name: str) -> str:
    if type(value) is not str or not value or len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES or "\x00" in value:
        raise invalid_param(name, f"Invalid {name}")
    return value


def _check_session(room_id: str, session_id: str, data: Any) -> SessionKey:
    """One ``KeyBackupData``.

    :raises MatrixError: 400 ``M_BAD_JSON``.
    """
    if type(data) is not dict:
        raise bad_json("key data must be an object")
    fmi, fc, verified, session = (
        data.get("first_message_index"), data.get("forwarded_count"), data.get("is_verified"), data.get("session_data")
    )
    if type(fmi) is not int or not (0 <= fmi < 2**53) or type(fc) is not int or not (0 <= fc < 2**53):
        raise bad_json("first_message_index and forwarded_count must be non-negative integers")
    if type(verified) is not bool:
        raise bad_json("is_verified must be a boolean")
    if type(session) is not dict:
        raise bad_json("session_data must be an object")
    return SessionKey(_check_id(room_id, "roomId"), _check_id(session_id, "sessionId"), fmi, fc, verified, session)


def _check_sessions(room_id: str, body: Any) -> list[SessionKey]:
    if type(body) is not dict or type(body.get("sessions")) is not dict:
        raise bad_json("A room's backup must be an object with sessions")
    return [_check_session(room_id, sid, data) for sid, data in body["sessions"].items()]


def _version_json(v: BackupVersion) -> dict[str, Any]:
    return {"algorithm": v.algorithm, "auth_data": v.auth_data, "count": v.count, "etag": str(v.etag), "version": str(v.version)}


class KeyBackupHandler:
    """Key backups of our users.

    :param store: the :class:`~fedserver.storage.sqlite.SQLiteStore` (``key_backups``).
    """

    def __init__(self, store: Any) -> None:
        self._backups = store.key_backups

    @staticmethod
    def _check_version_body(body: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        algorithm = body.get("algorithm")
        auth_data = body.get("auth_data")
        if type(algorithm) is not str:
            raise bad_json("algorithm must be a string")
        if algorithm not in ALGORITHMS:
            raise invalid_param("algorithm", f"Unsupported backup algorithm {algorithm[:100]!r}")
        if type(auth_data) is not dict:
            raise bad_json("auth_data must be an object")
        return algorithm, auth_data

    async def create_version(self, requester: Requester, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /room_keys/version``: a new backup, the current one from now on."""
        algorithm, auth_data = self._check_version_body(body)
        version = await self._backups.create_version(requester.user_id, algorithm, auth_data)
        return {"version": str(version)}

    async def get_version(self, requester: Requester, version: Optional[str] = None) -> dict[str, Any]:
        """``GET /room_keys/version[/{version}]``.

        :raises MatrixError: 404 ``M_NOT_FOUND`` if there is no such (or no) backup.
        """
        number = None if version is None else parse_version(version)
        found = await self._backups.get_version(requester.user_id, number)
        if found is None:
            raise not_found("No current backup version" if version is None else "Unknown backup version")
        return _version_json(found)

    async def update_version(self, requester: Requester, version: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /room_keys/version/{version}``: only ``auth_data`` may change.

        :raises MatrixError: 400 ``M_INVALID_PARAM`` if the algorithm or the body's
            version differ; 404 for an unknown version.
        """
        number = parse_version(version)
        algorithm, auth_data = self._check_version_body(body)
        if "version" in body and body["version"] != version:
            raise invalid_param("version", "The version in the body differs from the one in the path")
        found = await self._backups.get_version(requester.user_id, number)
        if found is None:
            raise not_found("Unknown backup version")
        if algorithm != found.algorithm:
            raise invalid_param("algorithm", "The algorithm of a backup cannot change")
        if not await self._backups.update_auth_data(requester.user_id, number, auth_data):
            raise not_found("Unknown backup version")
        return {}

    async def delete_version(self, requester: Requester, version: str) -> dict[str, Any]:
        """``DELETE /room_keys/version/{version}``: the backup and its keys go; deleting
        one deleted before succeeds too (the spec asks for that)."""
        number = parse_version(version)
        if await self._backups.delete_version(requester.user_id, number) is None:
            raise not_found("Unknown backup version")
        return {}

    # -- keys ----------------------------------------------------------------------------

    async def put_keys(
        self, requester: Requester, version: str, body: Any, room_id: Optional[str] = None, session_id: Optional[str] = None
    ) -> dict[str, Any]:
        """``PUT /room_keys/keys[/{roomId}[/{sessionId}]]?version=``.

        :raises MatrixError: 403 ``M_WRONG_ROOM_KEYS_VERSION`` (with ``current_version``)
            if ``version`` is not the current backup; 404 if there is no backup at all.
        """
        user_id = requester.user_id
        try:
            number = parse_version(version)
        except MatrixError:
            number = -1
        if session_id is not None:
            keys = [_check_session(room_id or "", session_id, body)]
        elif room_id is not None:
            keys = _check_sessions(room_id, body)
        else:
            if type(body) is not dict or type(body.get("rooms")) is not dict:
                raise bad_json("Body must be an object with rooms")
            keys = [k for rid, room in body["rooms"].items() for k in _check_sessions(rid, room)]
        result = await self._backups.put_keys(user_id, number, keys) if number >= 0 else None
        if result is None:
            current = await self._backups.get_current_version_number(user_id)
            if current is None:
                raise not_found("Unknown backup version")
            raise MatrixError(403, M_WRONG_ROOM_KEYS_VERSION, "Wrong backup version.", current_version=str(current))
        etag, count = result
        return {"etag": str(etag), "count": count}

    async def get_keys(
        self, requester: Requester, version: str, room_id: Optional[str] = None, session_id: Optional[str] = None
    ) -> dict[str, Any]:
        """``GET /room_keys/keys[/{roomId}[/{sessionId}]]?version=``.

        :raises MatrixError: 404 for an unknown version, or an unknown session.
        """
        number = parse_version(version)
        keys = await self._backups.get_keys(requester.user_id, number, room_id, session_id)
        if keys is None:
            raise not_found("Unknown backup version")
        if session_id is not None:
            if not keys:
                raise not_found("Key not found")
            return keys[0].to_json()
        if room_id is not None:
            return {"sessions": {k.session_id: k.to_json() for k in keys}}
        rooms: dict[str, Any] = {}
        for k in keys:
            rooms.setdefault(k.room_id, {"sessions": {}})["sessions"][k.session_id] = k.to_json()
        return {"rooms": rooms}

    async def delete_keys(
        self, requester: Requester, version: str, room_id: Optional[str] = None, session_id: Optional[str] = None
    ) -> dict[str, Any]:
        """``DELETE /room_keys/keys[/{roomId}[/{sessionId}]]?version=``."""
        number = parse_version(version)
        result = await self._backups.delete_keys(requester.user_id, number, room_id, session_id)
        if result is None:
            raise not_found("Unknown backup version")
        etag, count = result
        return {"etag": str(etag), "count": count}


__all__ = ["KeyBackupHandler", "M_WRONG_ROOM_KEYS_VERSION"]
