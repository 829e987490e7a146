"""The ``/_matrix/federation/v1`` resources: thin adapters from HTTP to the handlers."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.web.iweb import IRequest

from fedserver import __version__
from fedserver.http.errors import MatrixError, invalid_param
from fedserver.http.resource import JsonResource, query_string, read_json_body

AuthedHandler = Callable[..., Awaitable[Any]]


class FederationResource(JsonResource):
    """Everything under ``/_matrix/federation/v1``.

    Every endpoint but ``/version`` requires a valid X-Matrix signature; the handler then
    gets the authenticated ``origin``. Handlers come in through the constructor; an absent
    one leaves its endpoints unrouted (404 ``M_UNRECOGNIZED``).

    :param authenticator: a :class:`fedserver.http.xmatrix_auth.XMatrixAuthenticator`.
    :param transactions: a :class:`fedserver.handlers.transactions.TransactionHandler`.
    :param profiles: a :class:`fedserver.handlers.profile.ProfileHandler`.
    """

    def __init__(self, authenticator, *, transactions=None, profiles=None) -> None:
        super().__init__()
        self._auth = authenticator
        self._transactions = transactions
        self._profiles = profiles
        self.add_route("GET", "/version", self._version)
        if transactions is not None:
            self.add_route("PUT", "/send/{txn_id}", self.authenticated(self._send))
        if profiles is not None:
            self.add_route("GET", "/query/profile", self.authenticated(self._query_profile))

    def authenticated(self, handler: AuthedHandler) -> Callable[..., Awaitable[Any]]:
        """Wrap ``handler(request, origin, **params)`` so it runs only for signed requests."""

        async def run(request: IRequest, **params: str) -> Any:
            origin = await self._auth.authenticate(request)
            return await handler(request, origin, **params)

        return run

    # -- endpoints ------------------------------------------------------------------------

    def _version(self, request: IRequest) -> dict[str, Any]:
        return {"server": {"name": "fedserver", "version": __version__}}

    async def _send(self, request: IRequest, origin: str, txn_id: str) -> Any:
        body = read_json_body(request)
        return await self._transactions.on_transaction(origin, txn_id, body)

    async def _query_profile(self, request: IRequest, origin: str) -> Any:
        user_id = query_string(request, "user_id")
        field = query_string(request, "field", None)
        if field is not None and field not in ("displayname", "avatar_url"):
            raise invalid_param("field", "field must be displayname or avatar_url")
        return await self._profiles.get_local_profile(user_id, field)


__all__ = ["FederationResource", "MatrixError"]
