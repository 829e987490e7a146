"""User profiles: local display names and avatars, and remote profiles over federation."""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from fedserver.handlers.client.accounts import Requester, split_user_id
from fedserver.errors import M_UNKNOWN, MatrixError, bad_json, forbidden, invalid_param, not_found
from fedserver.storage.users.accounts_store import PROFILE_FIELDS, UnknownUserError

log = Logger()

#: Longest display name accepted, in characters.
MAX_DISPLAYNAME_LENGTH = 256
#: Longest avatar URL accepted, in characters.
MAX_AVATAR_URL_LENGTH = 1000


class ProfileHandler:
    """Reads and writes profiles.

    Only ``displayname`` and ``avatar_url`` are stored; other (custom, spec v1.14) keys
    are not supported yet: reading one finds nothing, writing one is refused.

    :param store: has an ``accounts`` attribute (:class:`fedserver.storage.users.accounts_store.AccountStore`).
    :param federation_client: has ``get_json(destination, path, args=...)``; ``None``:
        remote profiles are not looked up (404).
    :param server_name: our server name.
    """

    def __init__(self, store: Any, federation_client: Any = None, server_name: str = "") -> None:
        self._store = store.accounts if hasattr(store, "accounts") else store
        self._client = federation_client
        self.server_name = server_name

    def _is_mine(self, user_id: str) -> bool:
        parts = split_user_id(user_id)
        return parts is not None and parts[1] == self.server_name

    @staticmethod
    def _visible(profile: dict[str, Optional[str]]) -> dict[str, str]:
        return {k: v for k, v in profile.items() if v is not None}

    async def get_local_profile(self, user_id: str, field: Optional[str] = None) -> dict[str, Any]:
        """The profile of one of our users, as the federation ``/query/profile`` endpoint
        answers it: only ``field`` if given (``{}`` if unset), else every set field.

        :raises MatrixError: 404 ``M_NOT_FOUND`` if the user is not ours or does not
            exist; 400 ``M_INVALID_PARAM`` for a malformed user id.
        """
        if split_user_id(user_id) is None:
            raise invalid_param("user_id", "Invalid user ID")
        if not self._is_mine(user_id):
            raise not_found("User is not hosted on this server")
        profile = await self._store.get_profile(user_id)
        if profile is None:
            raise not_found("Profile not found")
        visible = self._visible(profile)
        if field is not None:
            return {field: visible[field]} if field in visible else {}
        return visible

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        """``GET /profile/{userId}``: any user's profile; remote users are asked over
        federation when a client is configured.

        :raises MatrixError: 400 ``M_INVALID_PARAM`` (malformed id), 404 ``M_NOT_FOUND``
            (no such user or profile), 502 ``M_UNKNOWN`` (the remote server failed).
        """
        if split_user_id(user_id) is None:
            raise invalid_param("userId", "Invalid user ID")
        if self._is_mine(user_id):
            return await self.get_local_profile(user_id)
        return await self._get_remote_profile(user_id)

    async def _get_remote_profile(self, user_id: str) -> dict[str, Any]:
        if self._client is None:
            raise not_found("Profile not found")
        server = user_id.split(":", 1)[1]
        # Imported here: the federation client pulls in the TLS stack, which the pure
        # profile logic does not need.
        from fedserver.federation.client import FederationClientError, HttpResponseError

        try:
            body = await self._client.get_json(
                server, "/_matrix/federation/v1/query/profile", args={"user_id": user_id}
            )
        except HttpResponseError as e:
            if e.code in (400, 403, 404):
                raise not_found("Profile not found") from None
            log.info("Profile of {user_id}: {server} answered {code}", user_id=user_id, server=server, code=e.code)
            raise MatrixError(502, M_UNKNOWN, "The user's homeserver failed to answer") from None
        except FederationClientError as e:
            log.info("Profile of {user_id}: {error}", user_id=user_id, error=e)
            raise MatrixError(502, M_UNKNOWN, "The user's homeserver could not be reached") from None
        if type(body) is not dict:
            raise MatrixError(502, M_UNKNOWN, "The user's homeserver sent an invalid profile")
        out: dict[str, Any] = {}
        for key in PROFILE_FIELDS:
            value = body.get(key)
            if type(value) is str:
                out[key] = value
        return out

    async def get_profile_field(self, user_id: str, field: str) -> dict[str, Any]:
        """``GET /profile/{userId}/{keyName}``.

        :raises MatrixError: 404 ``M_NOT_FOUND`` if the user or the field is missing.
        """
        profile = await self.get_profile(user_id)
        if field not in profile:
            raise not_found("Profile field not found")
        return {field: profile[field]}

    async def set_field(self, requester: Requester, user_id: str, field: str, value: Any) -> None:
        """``PUT /profile/{userId}/{keyName}``: set (or with ``None`` clear) the
        requester's own ``displayname`` or ``avatar_url``.

        :raises MatrixError: 403 ``M_FORBIDDEN`` (someone else's profile, or a custom
            field), 400 ``M_BAD_JSON`` / ``M_INVALID_PARAM`` for bad values.
        """
        if user_id != requester.user_id:
            raise forbidden("Cannot change another user's profile")
        if field not in PROFILE_FIELDS:
            raise forbidden("Custom profile fields are not supported on this server")
        if value is not None:
            if type(value) is not str:
                raise bad_json(f"{field} must be a string")
            if field == "displayname" and len(value) > MAX_DISPLAYNAME_LENGTH:
                raise invalid_param(field, f"displayname must be at most {MAX_DISPLAYNAME_LENGTH} characters")
            if field == "avatar_url":
                if len(value) > MAX_AVATAR_URL_LENGTH:
                    raise invalid_param(field, f"avatar_url must be at most {MAX_AVATAR_URL_LENGTH} characters")
                # Spec: "For avatar_url, the value must be an MXC URI string"; "" clears it.
                if value and not value.startswith("mxc://"):
                    raise invalid_param(field, "avatar_url must be an mxc:// URI")
            if "\x00" in value:
                raise invalid_param(field, f"{field} must not contain NUL")
            if value == "":
                value = None
        try:
            await self._store.set_profile_field(user_id, field, value)
        except UnknownUserError:
            raise not_found("Profile not found") from None

    async def set_displayname(self, requester: Requester, user_id: str, displayname: Optional[str]) -> None:
        """Set the requester's own display name (see :meth:`set_field`)."""
        await self.set_field(requester, user_id, "displayname", displayname)

    async def set_avatar_url(self, requester: Requester, user_id: str, avatar_url: Optional[str]) -> None:
        """Set the requester's own avatar URL (see :meth:`set_field`)."""
        await self.set_field(requester, user_id, "avatar_url", avatar_url)


__all__ = ["MAX_AVATAR_URL_LENGTH", "MAX_DISPLAYNAME_LENGTH", "ProfileHandler"]
