"""The Client-Server API resource under /_matrix/client: routing, access tokens, account endpoints."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from fedserver.handlers.client.account_data import AccountDataHandler
from fedserver.handlers.client.accounts import (
    AccountHandler,
    InteractiveAuthRequired,
    PasswordHasher,
    Requester,
    SharedSecretRegistration,
    utf8_length,
)
from fedserver.handlers.client.profile import ProfileHandler
from fedserver.errors import (
    M_MISSING_TOKEN,
    MatrixError,
    bad_json,
    forbidden,
    invalid_param,
    not_found,
    too_large,
)
from fedserver.http.resource import JsonResource, query_string, query_strings, read_json_object, read_json_object_or_empty
from fedserver.ratelimit import RateLimiter, rules_from_config
from fedserver.room_versions import RoomVersionRegistry
from fedserver.storage.interface import InvalidDataError

log = Logger()

#: Where the resource is mounted.
CLIENT_API_PATH = "/_matrix/client"

#: Spec versions we claim (``GET /versions``).
SUPPORTED_VERSIONS = tuple(f"v1.{n}" for n in range(1, 13))

#: The room version new rooms get unless the client asks for another (Synapse's default).
DEFAULT_ROOM_VERSION = "10"

#: Largest filter (encoded JSON) accepted.
MAX_FILTER_SIZE = 65536
#: Largest account data content (encoded JSON) accepted.
MAX_ACCOUNT_DATA_SIZE = 1024 * 1024
#: Longest account data type, room id or device id in a path.
MAX_ID_LENGTH = 255

#: Spec profile ``keyName`` grammar (``displayname``, ``avatar_url`` or a namespaced key).
_PROFILE_KEY = re.compile(r"^(avatar_url|displayname|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$")

#: Account data types the server controls (spec: 405 ``M_BAD_JSON`` for these).
_SERVER_ACCOUNT_DATA = frozenset({"m.fully_read", "m.push_rules"})

AuthedHandler = Callable[..., Any]


def client_ip(request: IRequest) -> str:
    """The client's address as a string ("" if unknown), for rate limits and devices."""
    try:
        addr = request.getClientAddress()
    except Exception:
        return ""
    return str(getattr(addr, "host", "") or "")


def get_access_token(request: IRequest) -> Optional[str]:
    """The access token of a request: ``Authorization: Bearer TOKEN``, or the
    ``access_token`` query parameter (spec "Using access tokens"; the query parameter was
    removed in v1.20, and we still claim older versions).

    A request whose token depends on which one we read is refused: several
    ``Authorization`` headers, or repeated ``access_token`` parameters, or a header and a
    parameter, are accepted only if they all carry the same token.

    :returns: ``None`` if the request carries none.
    :raises MatrixError: 401 ``M_MISSING_TOKEN`` for an Authorization header that is not
        a Bearer token, or for different tokens in one request.
    """
    tokens: set[str] = set()
    for header in request.requestHeaders.getRawHeaders(b"Authorization") or ():
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise MatrixError(401, M_MISSING_TOKEN, "Invalid Authorization header")
        try:
            tokens.add(token.decode("ascii"))
        except UnicodeDecodeError:
            raise MatrixError(401, M_MISSING_TOKEN, "Invalid Authorization header") from None
    for value in query_strings(request, "access_token"):
        tokens.add(value)
    if len(tokens) > 1:
        raise MatrixError(401, M_MISSING_TOKEN, "Ambiguous credentials: the request carries different access tokens")
    return tokens.pop() if tokens else None


async def _resolve(result: Any) -> Any:
    if inspect.isawaitable(result):
        return await result
    return result



def _capped_object(request: IRequest, limit: int) -> dict[str, Any]:
    content = request.content
    if content is not None:
        content.seek(0, 2)
        if content.tell() > limit:
            raise too_large(f"Body larger than {limit} bytes")
    return read_json_object(request)


class ClientAPI(JsonResource):
    """Everything under ``/_matrix/client``.

    Routes are registered with templates relative to the mount point, the version
    included; a ``/v3/...`` route is served under ``/r0/...`` too. Unknown paths answer
    404 ``M_UNRECOGNIZED``, a known path with another method 405; a trailing slash is
    ignored (``/v3/pushrules/``).

    Other modules add endpoints through :meth:`add_authed_route` (the handler gets the
    :class:`~fedserver.handlers.client.accounts.Requester`) and :meth:`add_public_route`::

        async def on_create_room(request, requester, **params): ...
        client_api.add_authed_route("POST", "/v3/createRoom", on_create_room)
        client_api.add_authed_route("PUT", "/v3/rooms/{room_id}/send/{event_type}/{txn_id}", on_send)

    A handler returns what :data:`fedserver.http.resource.HandlerResult` describes (a
    JSON value, ``(status, value)``, ``None`` for ``{}``), directly, as a Deferred or as
    a coroutine; it raises :class:`~fedserver.errors.MatrixError` for errors and may
    raise :class:`~fedserver.handlers.client.accounts.InteractiveAuthRequired` (answered 401).

    :param accounts: the :class:`~fedserver.handlers.client.accounts.AccountHandler`.
    :param profiles: the :class:`~fedserver.handlers.client.profile.ProfileHandler`.
    :param room_versions: the server's room versions (``/capabilities``).
    :param default_room_version: advertised as ``m.room_versions.default``.
    """

    def __init__(
        self,
        *,
        accounts: AccountHandler,
        profiles: ProfileHandler,
        room_versions: Optional[RoomVersionRegistry] = None,
        default_room_version: str = DEFAULT_ROOM_VERSION,
        account_data: Optional[AccountDataHandler] = None,
    ) -> None:
        super().__init__()
        self.accounts = accounts
        self.profiles = profiles
        self.account_data = account_data if account_data is not None else AccountDataHandler(accounts.store)
        self.room_versions = room_versions if room_versions is not None else RoomVersionRegistry()
        self.default_room_version = default_room_version
        #: ``unstable_features`` of ``GET /versions``; other modules may add flags.
        self.unstable_features: dict[str, bool] = {}
        #: Extra entries of ``GET /capabilities``; other modules may add theirs.
        self.capabilities: dict[str, Any] = {}
        self._register_account_routes()

    # -- registering routes -------------------------------------------------------------

    def _add(self, method: str, template: str, handler: Callable[..., Any], r0: bool) -> None:
        self.add_route(method, template, handler)
        if r0 and template.startswith("/v3/"):
            self.add_route(method, "/r0/" + template[len("/v3/") :], handler)

    def add_public_route(self, method: str, template: str, handler: Callable[..., Any], *, r0: bool = True) -> None:
        """Route ``method template`` to ``handler(request, **params)`` with no access
        token required (and ``/r0/`` alias for ``/v3/`` templates unless ``r0`` is false).

        A storage :class:`~fedserver.storage.interface.InvalidDataError` (e.g. a lone
        surrogate in a string to be stored) is answered 400 ``M_BAD_JSON``.

        :raises ValueError: if the route exists already.
        """

        async def run(request: IRequest, **params: str) -> Any:
            try:
                return await _resolve(handler(request, **params))
            except InteractiveAuthRequired as e:
                return 401, e.body
            except InvalidDataError as e:
                raise bad_json(f"Cannot store this: {e}") from None

        self._add(method, template, run, r0)

    def add_authed_route(self, method: str, template: str, handler: AuthedHandler, *, r0: bool = True) -> None:
        """Route ``method template`` to ``handler(request, requester, **params)``, run
        only for requests with a valid access token (else 401 ``M_MISSING_TOKEN`` /
        ``M_UNKNOWN_TOKEN``). ``requester`` is a :class:`~fedserver.handlers.client.accounts.Requester`.

        :raises ValueError: if the route exists already.
        """

        async def run(request: IRequest, **params: str) -> Any:
            requester = await self.authenticate(request)
            try:
                return await _resolve(handler(request, requester, **params))
            except InteractiveAuthRequired as e:
                return 401, e.body
            except InvalidDataError as e:
                # e.g. a lone surrogate ("\ud800" in JSON) in a string to be stored
                raise bad_json(f"Cannot store this: {e}") from None

        self._add(method, template, run, r0)

    async def authenticate(self, request: IRequest) -> Requester:
        """The :class:`Requester` of a request's access token.

        :raises MatrixError: 401 ``M_MISSING_TOKEN`` or ``M_UNKNOWN_TOKEN``.
        """
        token = get_access_token(request)
        if token is None:
            raise MatrixError(401, M_MISSING_TOKEN, "Missing access token")
        requester = await self.accounts.get_requester(token)
        request.requester = requester  # type: ignore[attr-defined]
        return requester

    def render(self, request: IRequest) -> Any:
        postpath = list(request.postpath or ())
        if len(postpath) > 1 and postpath[-1] == b"":
            request.postpath = postpath[:-1]
        return super().render(request)

    # -- account endpoints --------------------------------------------------------------

    def _register_account_routes(self) -> None:
        pub, authed = self.add_public_route, self.add_authed_route
        pub("GET", "/versions", self._versions, r0=False)
        pub("GET", "/v3/login", self._login_flows)
        pub("POST", "/v3/login", self._login)
        pub("POST", "/v3/register", self._register)
        pub("GET", "/v3/register/available", self._register_available)
        authed("POST", "/v3/logout", self._logout)
        authed("POST", "/v3/logout/all", self._logout_all)
        authed("GET", "/v3/account/whoami", self._whoami)
        authed("POST", "/v3/account/password", self._change_password)
        authed("GET", "/v3/capabilities", self._capabilities)
        pub("GET", "/v3/profile/{user_id}", self._get_profile)
        pub("GET", "/v3/profile/{user_id}/{key}", self._get_profile_field)
        authed("PUT", "/v3/profile/{user_id}/{key}", self._set_profile_field)
        authed("DELETE", "/v3/profile/{user_id}/{key}", self._delete_profile_field)
        authed("POST", "/v3/user/{user_id}/filter", self._post_filter)
        authed("GET", "/v3/user/{user_id}/filter/{filter_id}", self._get_filter)
        authed("PUT", "/v3/user/{user_id}/account_data/{data_type}", self._put_account_data)
        authed("GET", "/v3/user/{user_id}/account_data/{data_type}", self._get_account_data)
        authed("PUT", "/v3/user/{user_id}/rooms/{room_id}/account_data/{data_type}", self._put_room_account_data)
        authed("GET", "/v3/user/{user_id}/rooms/{room_id}/account_data/{data_type}", self._get_room_account_data)
        authed("GET", "/v3/devices", self._get_devices)
        authed("GET", "/v3/devices/{device_id}", self._get_device)
        authed("PUT", "/v3/devices/{device_id}", self._put_device)
        authed("DELETE", "/v3/devices/{device_id}", self._delete_device)
        authed("POST", "/v3/delete_devices", self._delete_devices)
        authed("GET", "/v3/voip/turnServer", self._turn_server)

    def _versions(self, request: IRequest) -> Any:
        return {"versions": list(SUPPORTED_VERSIONS), "unstable_features": dict(self.unstable_features)}

    def _login_flows(self, request: IRequest) -> Any:
        return {"flows": [{"type": "m.login.password"}]}

    async def _login(self, request: IRequest) -> Any:
        body = read_json_object(request)
        result = await self.accounts.login(body, ip=client_ip(request))
        return result.to_json(self.accounts.server_name)

    async def _register(self, request: IRequest) -> Any:
        kind = query_string(request, "kind", "user")
        body = read_json_object(request)
        return await self.accounts.register(body, kind=kind, ip=client_ip(request))

    async def _register_available(self, request: IRequest) -> Any:
        username = query_string(request, "username")
        await self.accounts.check_username_available(username)
        return {"available": True}

    async def _logout(self, request: IRequest, requester: Requester) -> Any:
        await self.accounts.logout(requester)
        return {}

    async def _logout_all(self, request: IRequest, requester: Requester) -> Any:
        await self.accounts.logout_all(requester)
        return {}

    def _whoami(self, request: IRequest, requester: Requester) -> Any:
        body: dict[str, Any] = {"user_id": requester.user_id, "is_guest": requester.is_guest}
        if requester.device_id is not None:
            body["device_id"] = requester.device_id
        return body

    async def _change_password(self, request: IRequest, requester: Requester) -> Any:
        await self.accounts.change_password(requester, read_json_object(request))
        return {}

    def _capabilities(self, request: IRequest, requester: Requester) -> Any:
        caps: dict[str, Any] = {
            "m.change_password": {"enabled": True},
            "m.room_versions": {
                "default": self.default_room_version,
                "available": dict(self.room_versions.capabilities()),
            },
            "m.set_displayname": {"enabled": True},
            "m.set_avatar_url": {"enabled": True},
            "m.3pid_changes": {"enabled": False},
            "m.get_login_token": {"enabled": False},
            "m.profile_fields": {"enabled": True, "allowed": ["displayname", "avatar_url"]},
        }
        caps.update(self.capabilities)
        return {"capabilities": caps}

    # -- profiles -----------------------------------------------------------------------

    @staticmethod
    def _check_profile_key(key: str) -> None:
        if not _PROFILE_KEY.match(key) or len(key) > MAX_ID_LENGTH:
            raise invalid_param("keyName", "Invalid profile key")

    async def _get_profile(self, request: IRequest, user_id: str) -> Any:
        return await self.profiles.get_profile(user_id)

    async def _get_profile_field(self, request: IRequest, user_id: str, key: str) -> Any:
        self._check_profile_key(key)
        return await self.profiles.get_profile_field(user_id, key)

    async def _set_profile_field(self, request: IRequest, requester: Requester, user_id: str, key: str) -> Any:
        self._check_profile_key(key)
        body = _capped_object(request, MAX_FILTER_SIZE)
        if key not in body:
            raise bad_json(f"Body must contain {key!r}")
        await self.profiles.set_field(requester, user_id, key, body[key])
        return {}

    async def _delete_profile_field(self, request: IRequest, requester: Requester, user_id: str, key: str) -> Any:
        self._check_profile_key(key)
        await self.profiles.set_field(requester, user_id, key, None)
        return {}

    # -- TURN ---------------------------------------------------------------------------

    def _turn_server(self, request: IRequest, requester: Requester) -> Any:
        # No TURN server configured: an empty object, as Synapse answers then.
        return {}

    # -- filters and account data -------------------------------------------------------

    @staticmethod
    def _check_own(requester: Requester, user_id: str, what: str) -> None:
        if user_id != requester.user_id:
            raise forbidden(f"Cannot {what} for other users")

    async def _post_filter(self, request: IRequest, requester: Requester, user_id: str) -> Any:
        self._check_own(requester, user_id, "create filters")
        body = _capped_object(request, MAX_FILTER_SIZE)
        filter_id = await self.accounts.store.add_filter(user_id, body)
        # Spec: the id must not start with "{" (digits never do).
        return {"filter_id": str(filter_id)}

    async def _get_filter(self, request: IRequest, requester: Requester, user_id: str, filter_id: str) -> Any:
        self._check_own(requester, user_id, "get filters")
        if not (filter_id.isascii() and filter_id.isdigit()) or len(filter_id) > 18:
            raise not_found("Unknown filter")
        found = await self.accounts.store.get_filter(user_id, int(filter_id))
        if found is None:
            raise not_found("Unknown filter")
        return found

    @staticmethod
    def _check_type(data_type: str) -> None:
        if not data_type or len(data_type) > MAX_ID_LENGTH:
            raise invalid_param("type", "Invalid account data type")

    @staticmethod
    def _check_room_id(room_id: str) -> None:
        if not room_id.startswith("!") or utf8_length(room_id) > MAX_ID_LENGTH or "\x00" in room_id:
            raise invalid_param("roomId", f"{room_id[:100]!r} is not a valid room ID")

    async def _put_account_data(self, request: IRequest, requester: Requester, user_id: str, data_type: str) -> Any:
        return await self._put_any_account_data(request, requester, user_id, None, data_type)

    async def _put_room_account_data(
        self, request: IRequest, requester: Requester, user_id: str, room_id: str, data_type: str
    ) -> Any:
        return await self._put_any_account_data(request, requester, user_id, room_id, data_type)

    async def _put_any_account_data(
        self, request: IRequest, requester: Requester, user_id: str, room_id: Optional[str], data_type: str
    ) -> Any:
        self._check_own(requester, user_id, "add account data")
        if room_id is not None:
            self._check_room_id(room_id)
        self._check_type(data_type)
        if data_type in _SERVER_ACCOUNT_DATA:
            raise MatrixError(405, "M_BAD_JSON", f"Cannot set {data_type} through this API.")
        body = _capped_object(request, MAX_ACCOUNT_DATA_SIZE)
        await self.account_data.set(user_id, room_id, data_type, body)
        return {}

    async def _get_account_data(self, request: IRequest, requester: Requester, user_id: str, data_type: str) -> Any:
        return await self._get_any_account_data(requester, user_id, None, data_type)

    async def _get_room_account_data(
        self, request: IRequest, requester: Requester, user_id: str, room_id: str, data_type: str
    ) -> Any:
        return await self._get_any_account_data(requester, user_id, room_id, data_type)

    async def _get_any_account_data(
        self, requester: Requester, user_id: str, room_id: Optional[str], data_type: str
    ) -> Any:
        self._check_own(requester, user_id, "get account data")
        if room_id is not None:
            self._check_room_id(room_id)
        found = await self.account_data.get(user_id, room_id, data_type)
        if found is None:
            raise not_found("Account data not found")
        return found

    # -- devices ------------------------------------------------------------------------

    @staticmethod
    def _device_json(device: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"device_id": device.device_id}
        if device.display_name is not None:
            out["display_name"] = device.display_name
        if device.last_seen_ip is not None:
            out["last_seen_ip"] = device.last_seen_ip
        if device.last_seen_ts is not None:
            out["last_seen_ts"] = device.last_seen_ts
        return out

    async def _get_devices(self, request: IRequest, requester: Requester) -> Any:
        devices = await self.accounts.store.get_devices(requester.user_id)
        return {"devices": [self._device_json(d) for d in devices]}

    async def _get_device(self, request: IRequest, requester: Requester, device_id: str) -> Any:
        device = await self.accounts.store.get_device(requester.user_id, device_id)
        if device is None:
            raise not_found("Device not found")
        return self._device_json(device)

    async def _put_device(self, request: IRequest, requester: Requester, device_id: str) -> Any:
        body = read_json_object(request)
        name = body.get("display_name")
        if name is not None and (type(name) is not str or len(name) > 512):
            raise bad_json("display_name must be a string of at most 512 characters")
        if not await self.accounts.store.set_device_display_name(requester.user_id, device_id, name):
            raise not_found("Device not found")
        return {}

    async def _delete_device(self, request: IRequest, requester: Requester, device_id: str) -> Any:
        body = read_json_object_or_empty(request)
        await self.accounts.delete_devices(requester, [device_id], body.get("auth"))
        return {}

    async def _delete_devices(self, request: IRequest, requester: Requester) -> Any:
        body = read_json_object(request)
        devices = body.get("devices")
        if type(devices) is not list or not all(type(d) is str for d in devices):
            raise bad_json("devices must be a list of device ids")
        await self.accounts.delete_devices(requester, devices, body.get("auth"))
        return {}


# -- wiring -----------------------------------------------------------------------------------


@dataclass
class AccountServices:
    """What the account endpoints need, built once per server (see
    :func:`build_account_services`).

    :ivar accounts: the :class:`AccountHandler`.
    :ivar profiles: the :class:`ProfileHandler` (also for the federation ``/query/profile``).
    :ivar shared_secret: the :class:`SharedSecretRegistration` (admin API).
    :ivar ratelimiter: the :class:`RateLimiter` shared by them.
    :ivar account_data: the :class:`AccountDataHandler` (its ``on_changed`` wakes /sync).
    """

    accounts: AccountHandler
    profiles: ProfileHandler
    shared_secret: SharedSecretRegistration
    ratelimiter: RateLimiter
    account_data: AccountDataHandler


def build_account_services(
    *,
    reactor: Any,
    store: Any,
    server_name: str,
    enable_registration: bool = False,
    registration_shared_secret: Optional[str] = None,
    federation_client: Any = None,
    rate_limits: Optional[Mapping[str, Any]] = None,
    hasher: Optional[PasswordHasher] = None,
    profiles: Optional[ProfileHandler] = None,
) -> AccountServices:
    """Build the account and profile handlers on ``store`` (a :class:`~fedserver.storage.sqlite.SQLiteStore`).

    :param reactor: the clock and the thread pool the password KDF runs in.
    :param rate_limits: ``{action: {per_second, burst}}`` overriding
        :data:`fedserver.ratelimit.DEFAULT_RULES`.
    :param hasher: the password hasher (tests pass a cheaper one).
    :param profiles: an existing :class:`ProfileHandler` to share (e.g. the one the
        federation ``/query/profile`` endpoint uses); made here if ``None``.
    :raises ValueError: for bad ``rate_limits``.
    """
    limiter = RateLimiter(reactor, rules_from_config(rate_limits))
    accounts = AccountHandler(
        store,
        server_name,
        hasher if hasher is not None else PasswordHasher(reactor),
        reactor,
        ratelimiter=limiter,
        enable_registration=enable_registration,
    )
    if profiles is None:
        profiles = ProfileHandler(store, federation_client, server_name)
    shared = SharedSecretRegistration(accounts, registration_shared_secret, reactor, ratelimiter=limiter)
    return AccountServices(accounts, profiles, shared, limiter, AccountDataHandler(store))


def build_client_api(
    *,
    services: AccountServices,
    room_versions: Optional[RoomVersionRegistry] = None,
    default_room_version: str = DEFAULT_ROOM_VERSION,
) -> ClientAPI:
    """The resource to mount at ``/_matrix/client`` (:data:`CLIENT_API_PATH`)."""
    return ClientAPI(
        accounts=services.accounts,
        profiles=services.profiles,
        account_data=services.account_data,
        room_versions=room_versions,
        default_room_version=default_room_version,
    )


__all__ = [
    "AccountServices",
    "CLIENT_API_PATH",
    "ClientAPI",
    "DEFAULT_ROOM_VERSION",
    "SUPPORTED_VERSIONS",
    "build_account_services",
    "build_client_api",
    "client_ip",
    "get_access_token",
]
