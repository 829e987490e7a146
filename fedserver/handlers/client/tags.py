"""Room tags (Client-Server "Room Tagging"), kept as the ``m.tag`` room account data."""

from __future__ import annotations

from typing import Any, Mapping

from fedserver.errors import bad_json, forbidden, invalid_param
from fedserver.handlers.requester import Requester

#: The room account data type holding a room's tags.
TAG_TYPE = "m.tag"
#: Spec: "The name of a tag MUST NOT exceed 255 bytes."
MAX_TAG_BYTES = 255
#: Most tags on one room.
MAX_TAGS = 100


class TagsHandler:
    """Reads and changes the ``m.tag`` room account data; a change reaches the user's
    clients in the ``account_data`` of the room in their next /sync.

    :param store: ``store.accounts`` (account data).
    :param notifier: wakes the user's /sync.
    """

    def __init__(self, store: Any, notifier: Any) -> None:
        self._store = store
        self._notifier = notifier

    @staticmethod
    def _check(requester: Requester, user_id: str, room_id: str) -> None:
        if user_id != requester.user_id:
            raise forbidden("Cannot read or change another user's tags")
        if not room_id.startswith("!") or len(room_id.encode("utf-8", "surrogatepass")) > 255 or "\x00" in room_id:
            raise invalid_param("roomId", "Invalid room ID")

    async def _tags(self, user_id: str, room_id: str) -> dict[str, Any]:
        content = await self._store.accounts.get_account_data(user_id, room_id, TAG_TYPE)
        tags = content.get("tags") if isinstance(content, dict) else None
        return dict(tags) if isinstance(tags, dict) else {}

    async def get_tags(self, requester: Requester, user_id: str, room_id: str) -> dict[str, Any]:
        """``GET /user/{userId}/rooms/{roomId}/tags``.

        :raises MatrixError: 403 for another user's tags.
        """
        self._check(requester, user_id, room_id)
        return {"tags": await self._tags(user_id, room_id)}

    async def put_tag(self, requester: Requester, user_id: str, room_id: str, tag: str, body: Mapping[str, Any]) -> None:
        """``PUT /user/{userId}/rooms/{roomId}/tags/{tag}``: ``body`` is the tag's content
        (``order``: a number from 0 to 1, optional).

        :raises MatrixError: 400 ``M_INVALID_PARAM`` for a tag name over 255 bytes or too
            many tags, ``M_BAD_JSON`` for an ``order`` that is not a number; 403 for
            another user.
        """
        self._check(requester, user_id, room_id)
        if not tag or len(tag.encode("utf-8", "surrogatepass")) > MAX_TAG_BYTES:
            raise invalid_param("tag", f"A tag name is 1 to {MAX_TAG_BYTES} bytes")
        order = body.get("order")
        if order is not None and (isinstance(order, bool) or not isinstance(order, (int, float))):
            raise bad_json("order must be a number")
        tags = await self._tags(user_id, room_id)
        if tag not in tags and len(tags) >= MAX_TAGS:
            raise invalid_param("tag", f"At most {MAX_TAGS} tags per room")
        tags[tag] = dict(body)
        await self._store.accounts.set_account_data(user_id, room_id, TAG_TYPE, {"tags": tags})
        self._notifier.notify_user(user_id)

    async def delete_tag(self, requester: Requester, user_id: str, room_id: str, tag: str) -> None:
        """``DELETE /user/{userId}/rooms/{roomId}/tags/{tag}`` (a tag that is not there
        is already deleted: 200)."""
        self._check(requester, user_id, room_id)
        tags = await self._tags(user_id, room_id)
        if tag in tags:
            del tags[tag]
            await self._store.accounts.set_account_data(user_id, room_id, TAG_TYPE, {"tags": tags})
            self._notifier.notify_user(user_id)


__all__ = ["TAG_TYPE", "TagsHandler"]
