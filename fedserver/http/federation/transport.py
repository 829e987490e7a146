"""The ``/_matrix/federation/v1`` resources: thin adapters from HTTP to the handlers."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.web.iweb import IRequest

from fedserver import __version__
from fedserver.errors import invalid_param
from fedserver.http.resource import JsonResource, query_string, read_json_body

AuthedHandler = Callable[..., Awaitable[Any]]

#: Longest profile ``field`` name we pass on.
MAX_PROFILE_FIELD_LENGTH = 255


class FederationResource(JsonResource):
    """Everything under ``/_matrix/federation/v1``.

    Every endpoint but ``/version`` requires a valid X-Matrix signature (HOSTILE.md rows
    1-4); the handler then gets the authenticated ``origin``. Handlers come in through the
    constructor; an absent one leaves its endpoints unrouted (404 ``M_UNRECOGNIZED``).

    Endpoints about a room must call :meth:`check_acl` once they know the room (server-server
    API "Server Access Control Lists (ACLs)": ``make_join``, ``send_join``, ``invite``,
    ``state``, ``backfill``... answer 403 ``M_FORBIDDEN`` to a denied server). ``/send``
    applies the ACLs per PDU in the transaction handler instead.

    :param authenticator: a :class:`fedserver.http.federation.xmatrix_auth.XMatrixAuthenticator`.
    :param acls: a :class:`fedserver.federation.acl.ServerAcls` (``None``: no ACLs, for
        tests of resources without rooms).
    :param transactions: a :class:`fedserver.handlers.federation.transactions.TransactionHandler`.
    :param profiles: has ``get_local_profile(user_id, field=None) -> Deferred[dict]``
        (:class:`fedserver.handlers.client.profile.ProfileHandler`).
    :param version_route: serve ``/version`` (only under ``/_matrix/federation/v1``).
    """

    def __init__(
        self,
        authenticator: Any,
        *,
        acls: Any = None,
        transactions: Any = None,
        profiles: Any = None,
        version_route: bool = True,
    ) -> None:
        super().__init__()
        self._auth = authenticator
        self._acls = acls
        self._transactions = transactions
        self._profiles = profiles
        self._directory: Any = None
        if version_route:
            self.add_route("GET", "/version", self._version)
        if transactions is not None:
            self.add_route("PUT", "/send/{txn_id}", self.authenticated(self._send))
        if profiles is not None:
            self.add_route("GET", "/query/profile", self.authenticated(self._query_profile))

    def enable_directory(self, directory: Any) -> None:
        """Serve ``GET /query/directory`` from ``directory``: anything with
        ``query_local_alias(alias) -> {"room_id", "servers"}`` raising 404 ``M_NOT_FOUND``
        (:class:`fedserver.handlers.rooms.directory.DirectoryHandler`)."""
        self._directory = directory
        self.add_route("GET", "/query/directory", self.authenticated(self._query_directory))

    def authenticated(self, handler: AuthedHandler) -> Callable[..., Awaitable[Any]]:
        """Wrap ``handler(request, origin, **params)`` so it runs only for signed requests.

        Later endpoints are added the same way::

            resource.add_route("GET", "/state/{room_id}", resource.authenticated(on_state))
        """

        async def run(request: IRequest, **params: str) -> Any:
            origin = await self._auth.authenticate(request)
            return await handler(request, origin, **params)

        return run

    async def check_acl(self, origin: str, room_id: str) -> None:
        """Refuse ``origin`` if the server ACL of ``room_id`` denies it.

        :raises MatrixError: 403 ``M_FORBIDDEN`` if denied.
        """
        if self._acls is not None:
            await self._acls.check(origin, room_id)

    # -- endpoints ------------------------------------------------------------------------

    def _version(self, request: IRequest) -> dict[str, Any]:
        # GET /_matrix/federation/v1/version (no authentication).
        return {"server": {"name": "fedserver", "version": __version__}}

    async def _send(self, request: IRequest, origin: str, txn_id: str) -> Any:
        body = read_json_body(request)
        return await self._transactions.on_transaction(origin, txn_id, body)

    async def _query_directory(self, request: IRequest, origin: str) -> Any:
        # GET /query/directory?room_alias=: the room id and join candidates of one of our
        # aliases (seed 002: "the directory server ... a room ID and a list of join
        # candidates").
        alias = query_string(request, "room_alias")
        if not alias.startswith("#") or ":" not in alias or len(alias.encode("utf-8")) > 255:
            raise invalid_param("room_alias", "Invalid room alias")
        return await self._directory.query_local_alias(alias)

    async def _query_profile(self, request: IRequest, origin: str) -> Any:
        user_id = query_string(request, "user_id")
        field = query_string(request, "field", None)
        if field is not None and (not field or len(field.encode("utf-8")) > MAX_PROFILE_FIELD_LENGTH):
            raise invalid_param("field", "Invalid profile field")
        return await self._profiles.get_local_profile(user_id, field)


__all__ = ["FederationResource"]
