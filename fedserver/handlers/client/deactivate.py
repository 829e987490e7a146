"""Account deactivation: one routine for POST /account/deactivate and the admin API (shut the account, then leave every room)."""

# Client-Server API, "Account deactivation" (POST /account/deactivate): "Deactivate the
# user's account, removing all ability for the user to login again"; User-Interactive
# Authentication; ``erase``: "The server should additionally erase any non-event data
# associated with the user, such as account data".
#
# What deactivation does here, in this order:
# 1. One database transaction (DeactivationStore.deactivate_user): the account is marked
#    deactivated, its password, access tokens and devices go (with the devices' keys and
#    to-device inboxes, other servers told through device list updates, and their pushers),
#    every pusher of the user, the user's rows in the user directory, the profile
#    (display name and avatar); with ``erase`` also account data, filters, push rules and
#    key backups. The user is listed as still to leave their rooms.
# 2. The user leaves every room they are joined to, rejects their invites and withdraws
#    their knocks, here and on other servers. A room that refuses (e.g. a remote server
#    that answers 403) is logged and skipped; a failure that may pass (a server that
#    cannot be reached, the database unavailable) keeps the user listed, and the next
#    start of the server tries again (resume()).
# Not done: "erasure" of events (serving redacted copies to users who join later) and
# third-party identifiers (we bind none: id_server_unbind_result is always "success").

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from fedserver.errors import MatrixError, bad_json
from fedserver.storage.interface import StorageUnavailableError
from fedserver.handlers.requester import Requester

log = Logger()

#: ``(requester, auth) -> awaitable``: User-Interactive Authentication of the requester.
UiaCheck = Callable[[Any, Any], Awaitable[None]]


class AccountDeactivation:
    """Deactivates local users.

    :param store: ``deactivation``, ``rooms`` (memberships) and ``federation_extras``
        (invites and knocks in rooms this server is not in).
    :param membership: the :class:`~fedserver.handlers.rooms.membership.MembershipHandler`
        (``leave(user_id, room_id)`` leaves, rejects or withdraws, here or remotely).
    :param check_uia: authenticates the requester of ``POST /account/deactivate``
        (:meth:`~fedserver.handlers.client.accounts.AccountHandler.check_password_uia`).
    """

    def __init__(self, store: Any, membership: Any, check_uia: Optional[UiaCheck] = None) -> None:
        self._store = store
        self._membership = membership
        self._check_uia = check_uia
        self._parting: set[defer.Deferred] = set()
        #: callables ``(user_id)`` run once the account is shut (before rooms are left).
        self.on_deactivated: list[Callable[[str], Any]] = []

    async def request(self, requester: Requester, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /account/deactivate`` for the requester's own account.

        :raises InteractiveAuthRequired: until the current password is given.
        :raises MatrixError: 400 ``M_BAD_JSON`` for a malformed ``erase`` or ``id_server``.
        """
        erase = body.get("erase", False)
        if type(erase) is not bool:
            raise bad_json("erase must be a boolean")
        id_server = body.get("id_server")
        if id_server is not None and not isinstance(id_server, str):
            raise bad_json("id_server must be a string")
        if self._check_uia is not None:
            await self._check_uia(requester, body.get("auth"))
        await self.deactivate(requester.user_id, erase=erase)
        # Spec: "This must be success if the homeserver has no identifiers to unbind".
        return {"id_server_unbind_result": "success"}

    async def deactivate(self, user_id: str, *, erase: bool = False) -> int:
        """Deactivate ``user_id`` (a local user) and make them leave every room (see the
        module comment). Shared by the client API and the admin API.

        :returns: how many rooms were left (or invites rejected, knocks withdrawn).
        :raises UnknownUserError: if there is no such local user.
        """
        await self._store.deactivation.deactivate_user(user_id, erase=erase)
        log.info("Deactivated {user_id}{erased}", user_id=user_id, erased=" (erase)" if erase else "")
        for callback in list(self.on_deactivated):
            try:
                callback(user_id)
            except Exception:  # noqa: BLE001 - the account is shut; a listener must not undo the answer
                log.failure("Deactivation listener failed")
        # Leaving goes on even if the client that asked goes away (the answer waits on a
        # relay that may be cancelled without cancelling the work).
        d = defer.ensureDeferred(self._part(user_id))
        self._parting.add(d)
        d.addBoth(self._parted, d)
        relay: defer.Deferred = defer.Deferred()

        def forward(result: Any) -> None:
            if not relay.called:
                if isinstance(result, Failure):
                    relay.errback(result)
                else:
                    relay.callback(result)
            elif isinstance(result, Failure) and not result.check(StorageUnavailableError):
                log.failure("Leaving the rooms of deactivated {user_id} failed", result, user_id=user_id)

        d.addBoth(forward)
        return await relay

    def _parted(self, result: Any, d: defer.Deferred) -> Any:
        self._parting.discard(d)
        return result

    async def resume(self) -> int:
        """Leave the rooms of users whose deactivation a stopped server did not finish
        (call once at start; failures are logged).

        :returns: how many users were resumed.
        """
        users = await self._store.deactivation.get_pending()
        for user_id in users:
            log.info("Resuming the deactivation of {user_id}: leaving their rooms", user_id=user_id)
            try:
                await self._part(user_id)
            except StorageUnavailableError:
                return len(users)  # the database logs it; the next start tries again
            except Exception:  # noqa: BLE001 - one user must not stop the others
                log.failure("Resuming the deactivation of {user_id} failed", user_id=user_id)
        return len(users)

    async def _rooms(self, user_id: str) -> list[str]:
        """Rooms where the user is joined, invited or knocking (here, or recorded from
        other servers' invites and knocks)."""
        rooms = [
            m.room_id for m in await self._store.rooms.get_memberships_for_user(user_id)
            if m.membership in ("join", "invite", "knock")
        ]
        extras = getattr(self._store, "federation_extras", None)
        if extras is not None:
            latest: dict[str, str] = {}
            for row in await extras.get_remote_memberships(user_id, 0):
                latest[row.room_id] = row.membership  # ordered by stream: the last one holds
            rooms += [r for r, m in sorted(latest.items()) if m in ("invite", "knock") and r not in rooms]
        return rooms

    async def _part(self, user_id: str) -> int:
        rooms = await self._rooms(user_id)
        left = 0
        retry = False
        for room_id in rooms:
            try:
                await self._membership.leave(user_id, room_id)
                left += 1
            except MatrixError as e:
                # A refusal (403, 404...) will not change by trying again.
                log.warn("Deactivating {user_id}: could not leave {room_id}: {code} {error}", user_id=user_id,
                         room_id=room_id, code=e.code, error=e.error)
                retry = retry or e.code >= 500
            except StorageUnavailableError:
                raise
            except Exception as e:  # noqa: BLE001 - one room must not stop the others
                log.warn("Deactivating {user_id}: could not leave {room_id}: {error}", user_id=user_id,
                         room_id=room_id, error=repr(e)[:200])
                retry = True
        if not retry:
            await self._store.deactivation.finish(user_id)
        log.info("Deactivated {user_id} left {left} of {n} rooms{more}", user_id=user_id, left=left, n=len(rooms),
                 more="; the rest is tried again at the next start" if retry else "")
        return left

    def flush(self) -> defer.Deferred:
        """Fires when every leaving in progress is over (tests, stopping)."""
        return defer.DeferredList(list(self._parting), consumeErrors=True)


__all__ = ["AccountDeactivation"]
