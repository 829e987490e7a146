"""Account data of local users (global and per room): stored, and the user's /sync woken."""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

log = Logger()


class AccountDataHandler:
    """Writes and reads account data (client-server spec "Client Config"). A write is
    committed before the callbacks of :attr:`on_changed` run, so a /sync they wake reads
    it (e.g. :meth:`fedserver.handlers.client.notifier.Notifier.notify_user`).

    :param store: the :class:`fedserver.storage.users.accounts_store.AccountStore` (or a store
        with it as its ``accounts`` attribute).
    """

    def __init__(self, store: Any) -> None:
        self._accounts = store.accounts if hasattr(store, "accounts") else store
        #: callables ``(user_id)`` run after each committed write.
        self.on_changed: list[Callable[[str], Any]] = []

    async def set(self, user_id: str, room_id: Optional[str], data_type: str, content: dict[str, Any]) -> None:
        """Store global (``room_id`` ``None``) or per-room account data, then tell whoever
        waits for the user."""
        await self._accounts.set_account_data(user_id, room_id, data_type, content)
        for callback in list(self.on_changed):
            try:
                callback(user_id)
            except Exception:
                log.failure("account data on_changed callback failed")

    async def get(self, user_id: str, room_id: Optional[str], data_type: str) -> Optional[dict[str, Any]]:
        """The content stored, or ``None``."""
        return await self._accounts.get_account_data(user_id, room_id, data_type)
