"""SQL of account deactivation: the one transaction that shuts an account, and the users still leaving their rooms."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.internet.defer import Deferred

from fedserver.storage.users.accounts_store import UnknownUserError
from fedserver.storage.database import Database, Txn, check_text

if TYPE_CHECKING:
    from fedserver.storage.users.accounts_store import AccountStore

#: ``hook(txn, user_id, erase)`` run inside the deactivation transaction.
DeactivationHook = Callable[[Txn, str, bool], None]


class DeactivationStore:
    """Deactivating local users.

    :param db: the database.
    :param accounts: the :class:`~fedserver.storage.users.accounts_store.AccountStore` (tokens
        and devices go through it, so that its token cache and device hooks follow).
    """

    def __init__(self, db: Database, accounts: "AccountStore") -> None:
        self._db = db
        self._accounts = accounts
        #: run inside every deactivation transaction, so that what other areas keep for
        #: the user (pushers, the user directory, key backups...) goes with the account
        #: or not at all.
        self.hooks: list[DeactivationHook] = []

    def deactivate_user(self, user_id: str, *, erase: bool = False) -> "Deferred[None]":
        """In one transaction: mark the user deactivated (no token of theirs is accepted
        again), remove their password, every access token and device (and, through the
        device hooks, the devices' keys and pushers), clear their profile, run
        :attr:`hooks`, and list the user as still to leave their rooms
        (:meth:`get_pending`). With ``erase``, their account data and filters go too.

        :raises UnknownUserError: (in the Deferred) if there is no such local user.
        """
        erase = bool(erase)

        def txn_func(txn: Txn) -> None:
            check_text(user_id, "user_id")
            if not txn.execute(
                "UPDATE users SET deactivated = 1, password_hash = NULL WHERE user_id = ?", (user_id,)
            ).rowcount:
                raise UnknownUserError(user_id)
            self._accounts.delete_all_tokens_txn(txn, user_id)
            txn.execute("UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = ?", (user_id,))
            if erase:
                txn.execute("DELETE FROM account_data WHERE user_id = ?", (user_id,))
                txn.execute("DELETE FROM user_filters WHERE user_id = ?", (user_id,))
            for hook in self.hooks:
                hook(txn, user_id, erase)
            txn.execute(
                "INSERT INTO users_pending_deactivation (user_id, erase) VALUES (?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET erase = excluded.erase",
                (user_id, int(erase)),
            )

        return self._db.run_write(txn_func)

    def get_pending(self) -> "Deferred[list[str]]":
        """Deactivated users who may still be in rooms (a server stopped while they
        were leaving), oldest user id first."""
        return self._db.run_read(
            lambda txn: [r[0] for r in txn.execute(
                "SELECT user_id FROM users_pending_deactivation ORDER BY user_id"
            ).fetchall()]
        )

    def finish(self, user_id: str) -> "Deferred[None]":
        """The user has left every room they could."""

        def txn_func(txn: Txn) -> None:
            check_text(user_id, "user_id")
            txn.execute("DELETE FROM users_pending_deactivation WHERE user_id = ?", (user_id,))

        return self._db.run_write(txn_func)


__all__ = ["DeactivationHook", "DeactivationStore"]
