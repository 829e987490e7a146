"""Local users for administrators: list, show, create or modify, deactivate, reset passwords, devices."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from twisted.logger import Logger

from fedserver.errors import MatrixError, bad_json, invalid_param, not_found
from fedserver.handlers.client.accounts import AccountHandler, split_user_id

log = Logger()

#: Largest page of the user listing.
MAX_LIMIT = 1000


def user_json(row: Any) -> dict[str, Any]:
    """One user as the admin API shows it (Synapse's field names; ``creation_ts`` in
    seconds like Synapse's, ``creation_ts_ms`` in milliseconds)."""
    return {
        "name": row.user_id,
        "displayname": row.displayname,
        "avatar_url": row.avatar_url,
        "admin": row.admin,
        "deactivated": row.deactivated,
        "erased": False,
        "shadow_banned": False,
        "locked": False,
        "is_guest": row.is_guest,
        "user_type": row.user_type,
        "creation_ts": row.created_ts // 1000,
        "creation_ts_ms": row.created_ts,
        "appservice_id": None,
        "threepids": [],
        "external_ids": [],
        "password_set": row.has_password,
    }


def device_json(device: Any) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "display_name": device.display_name,
        "last_seen_ip": device.last_seen_ip,
        "last_seen_ts": device.last_seen_ts,
        "last_seen_user_agent": None,
        "user_id": device.user_id,
    }


class AdminUsers:
    """The admin API's user operations.

    :param store: the store (``admin`` and ``accounts`` attributes).
    :param accounts: the :class:`AccountHandler` (user creation, password hashing).
    :param deactivation: the :class:`~fedserver.handlers.client.deactivate.AccountDeactivation`
        shared with ``POST /account/deactivate``, so both deactivate alike.
    :param server_name: ours.
    """

    def __init__(self, store: Any, accounts: AccountHandler, deactivation: Any, server_name: str) -> None:
        self._store = store
        self._accounts = accounts
        self._deactivation = deactivation
        self._server_name = server_name

    def check_local(self, user_id: Any) -> str:
        """:raises MatrixError: 400 ``M_INVALID_PARAM`` for a malformed or remote user id."""
        parts = split_user_id(user_id) if isinstance(user_id, str) else None
        if parts is None:
            raise invalid_param("user_id", "Not a valid user ID")
        if parts[1] != self._server_name:
            raise invalid_param("user_id", "Can only manage local users")
        return user_id

    async def _row(self, user_id: str) -> Any:
        row = await self._store.admin.get_user(self.check_local(user_id))
        if row is None:
            raise not_found("User not found")
        return row

    # -- reading ----------------------------------------------------------------------------

    async def list_users(
        self, *, offset: int = 0, limit: int = 100, name: Optional[str] = None, deactivated: bool = False,
        admins: Optional[bool] = None, guests: bool = True, order_by: str = "name", backwards: bool = False,
    ) -> dict[str, Any]:
        """``GET /_synapse/admin/v2/users``: ``{users, total, next_token}``."""
        rows, total = await self._store.admin.list_users(
            offset=offset, limit=limit, name=name, deactivated=deactivated, admins=admins, guests=guests,
            order_by=order_by, backwards=backwards,
        )
        out: dict[str, Any] = {"users": [user_json(r) for r in rows], "total": total}
        if offset + len(rows) < total:
            out["next_token"] = str(offset + len(rows))
        return out

    async def get_user(self, user_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v2/users/{userId}``."""
        return user_json(await self._row(user_id))

    async def devices(self, user_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v2/users/{userId}/devices``."""
        await self._row(user_id)
        devices = await self._store.accounts.get_devices(user_id)
        return {"devices": [device_json(d) for d in devices], "total": len(devices)}

    async def joined_rooms(self, user_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v1/users/{userId}/joined_rooms``."""
        await self._row(user_id)
        rooms = [r for r, m in await self._store.admin.get_local_memberships(user_id) if m == "join"]
        return {"joined_rooms": rooms, "total": len(rooms)}

    # -- changing ---------------------------------------------------------------------------

    async def put_user(self, user_id: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """``PUT /_synapse/admin/v2/users/{userId}``: create the user (201) or change it
        (200): ``password``, ``logout_devices``, ``displayname``, ``avatar_url``, ``admin``,
        ``deactivated``, ``user_type``.

        :raises MatrixError: 400 for bad fields (``threepids`` and ``external_ids`` are not
            supported: 400 ``M_UNRECOGNIZED`` unless empty), 404 never (absent users are made).
        """
        self.check_local(user_id)
        password = body.get("password")
        if password is not None:
            AccountHandler.check_password_value(password)
        for key in ("admin", "deactivated", "logout_devices"):
            if key in body and type(body[key]) is not bool:
                raise bad_json(f"{key} must be a boolean")
        for key in ("displayname", "avatar_url", "user_type"):
            if body.get(key) is not None and (type(body[key]) is not str or len(body[key]) > 1024):
                raise bad_json(f"{key} must be a string")
        for key in ("threepids", "external_ids"):
            if body.get(key):
                raise MatrixError(400, "M_UNRECOGNIZED", f"{key} are not supported by this server")
        existing = await self._store.admin.get_user(user_id)
        if existing is None:
            localpart = user_id[1:].split(":", 1)[0]
            await self._accounts.create_user(
                localpart, password, admin=bool(body.get("admin", False)), user_type=body.get("user_type"),
                displayname=body.get("displayname"), login=False,
            )
            if body.get("avatar_url") is not None:
                await self._store.accounts.set_profile_field(user_id, "avatar_url", body["avatar_url"])
            if body.get("deactivated") is True:
                await self.deactivate(user_id)
            log.info("Admin API: created {user_id}", user_id=user_id)
            return 201, user_json(await self._row(user_id))
        if password is not None:
            await self.reset_password(user_id, password, logout_devices=body.get("logout_devices", True))
        if "admin" in body:
            await self._store.accounts.set_admin(user_id, body["admin"])
        for key in ("displayname", "avatar_url"):
            if key in body:
                await self._store.accounts.set_profile_field(user_id, key, body[key])
        if body.get("deactivated") is True and not existing.deactivated:
            await self.deactivate(user_id)
        elif body.get("deactivated") is False and existing.deactivated:
            if password is None and not existing.has_password:
                raise bad_json("Give a password to reactivate a user")
            await self._store.admin.reactivate_user(user_id)
        return 200, user_json(await self._row(user_id))

    async def set_admin(self, user_id: str, admin: Any) -> None:
        """``PUT /_synapse/admin/v1/users/{userId}/admin``."""
        if type(admin) is not bool:
            raise bad_json("admin must be a boolean")
        await self._row(user_id)
        await self._store.accounts.set_admin(user_id, admin)

    async def reset_password(self, user_id: str, new_password: Any, *, logout_devices: Any = True) -> None:
        """``POST /_synapse/admin/v1/reset_password/{userId}``: a new password; with
        ``logout_devices`` (default true) every access token and device of the user goes.

        :raises MatrixError: 400 for a bad password, 404 for an unknown user.
        """
        AccountHandler.check_password_value(new_password, "new_password")
        if type(logout_devices) is not bool:
            raise bad_json("logout_devices must be a boolean")
        await self._row(user_id)
        hashed = await self._accounts.hash_password(new_password)
        await self._store.accounts.set_password_hash(user_id, hashed, logout_devices=logout_devices)
        log.info("Admin API: password of {user_id} reset", user_id=user_id)

    async def deactivate(self, user_id: str, *, erase: Any = False) -> dict[str, Any]:
        """``POST /_synapse/admin/v1/deactivate/{userId}`` (and ``deactivated: true``).

        The same routine as ``POST /account/deactivate``
        (:meth:`~fedserver.handlers.client.deactivate.AccountDeactivation.deactivate`):
        spec "Account deactivation", the user can never log in again; password, access
        tokens, devices, pushers and profile go (with ``erase`` also account data, filters,
        push rules and key backups), then the user leaves every room, rejects its invites
        and withdraws its knocks, here and on other servers.

        :returns: ``{"id_server_unbind_result": "success"}`` (we bind no third-party ids).
        """
        if type(erase) is not bool:
            raise bad_json("erase must be a boolean")
        await self._row(user_id)
        left = await self._deactivation.deactivate(user_id, erase=erase)
        log.info("Admin API: deactivated {user_id}{erased}; left {left} rooms", user_id=user_id,
                 erased=" (erased)" if erase else "", left=left)
        return {"id_server_unbind_result": "success"}


__all__ = ["AdminUsers", "MAX_LIMIT", "device_json", "user_json"]
