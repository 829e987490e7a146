"""Local accounts: registration, password login, access tokens, devices and shared-secret registration."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

from twisted.internet import defer, threads
from twisted.logger import Logger

from fedserver.handlers.requester import Requester  # noqa: F401 - re-exported
from fedserver.config import split_server_name
from fedserver.errors import (
    M_FORBIDDEN,
    M_INVALID_USERNAME,
    M_UNKNOWN,
    M_UNKNOWN_TOKEN,
    M_UNRECOGNIZED,
    M_USER_DEACTIVATED,
    M_USER_IN_USE,
    MatrixError,
    bad_json,
    forbidden,
    invalid_param,
    missing_param,
)
from fedserver.ratelimit import ADMIN_REGISTER_FAILED_IP, LOGIN_FAILED_USER, LOGIN_IP, REGISTER_IP, RateLimiter
from fedserver.storage.users.accounts_store import UserExistsError

log = Logger()

# -- identifiers ------------------------------------------------------------------------------

#: Appendix "User Identifiers": the localpart of a NEW user id may only hold these.
_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")
#: ... while existing ("historical") ids may hold any printable ASCII but ':'.
_HISTORICAL_LOCALPART = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
#: Appendix "User Identifiers": "The length of a user ID, including the @ sigil and the
#: domain, MUST NOT exceed 255 bytes."
MAX_USER_ID_BYTES = 255
#: Longest password accepted (a bound on the work and memory of one KDF call).
MAX_PASSWORD_LENGTH = 512
#: Longest client-chosen device id and device display name.
MAX_DEVICE_ID_LENGTH = 255
MAX_DEVICE_NAME_LENGTH = 512


def utf8_length(text: str) -> int:
    """Bytes of ``text`` in UTF-8, counting a lone surrogate (which JSON can carry but no
    valid identifier holds) as its 3-byte encoding instead of raising."""
    return len(text.encode("utf-8", "surrogatepass"))


def is_valid_localpart(localpart: Any) -> bool:
    """Whether ``localpart`` may be used for a new user (lowercase ``a-z 0-9 . _ = - / +``)."""
    return type(localpart) is str and bool(_LOCALPART.match(localpart))


def split_user_id(user_id: Any) -> Optional[tuple[str, str]]:
    """``(localpart, server_name)`` of a well-formed user id (historical localparts
    allowed, the server name per the appendix "Server Name" grammar), or ``None``."""
    if type(user_id) is not str or not user_id.startswith("@") or utf8_length(user_id) > MAX_USER_ID_BYTES:
        return None
    localpart, sep, server = user_id[1:].partition(":")
    if not sep or not server or not _HISTORICAL_LOCALPART.match(localpart):
        return None
    try:
        split_server_name(server)  # appendix "Server Name" grammar
    except ValueError:
        return None
    return localpart, server


# -- secrets ----------------------------------------------------------------------------------


def new_access_token() -> str:
    """A new random access token (256 bits of entropy)."""
    return "fst_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What is stored for an access token: its hex SHA-256."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_device_id() -> str:
    """A new device id: 10 uppercase letters (about 47 bits)."""
    return "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(10))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


class PasswordHasher:
    """Hashes and checks passwords with scrypt (memory-hard, from the standard library).

    A hash is stored as ``$scrypt$ln=14,r=8,p=1$<salt>$<key>`` (unpadded base64, 16-byte
    salt, 32-byte key), so the parameters can be raised later without breaking old hashes.
    The KDF runs in the reactor's thread pool so it never blocks the reactor, at most
    ``concurrency`` at a time (each call takes ``128 * r * 2**ln`` bytes: 16 MiB by default).

    :param reactor: provides the thread pool; ``None`` runs the KDF inline (command-line
        tools, tests).
    :param log_n: log2 of scrypt's cost parameter N for new hashes.
    :param r: scrypt's block size.
    :param p: scrypt's parallelism.
    :param concurrency: the most KDF calls running at once.
    """

    def __init__(self, reactor: Any = None, *, log_n: int = 14, r: int = 8, p: int = 1, concurrency: int = 2) -> None:
        self._check_params(log_n, r, p)
        self._reactor = reactor
        self._params = (log_n, r, p)
        self._limit = defer.DeferredSemaphore(concurrency)

    @staticmethod
    def _check_params(log_n: int, r: int, p: int) -> None:
        if not (1 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError("scrypt parameters out of range")

    @staticmethod
    def _kdf(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
        n = 1 << log_n
        # surrogatepass: a JSON body may carry lone surrogates ("\ud800"); they must hash
        # (deterministically), not crash.
        return hashlib.scrypt(
            password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, maxmem=256 * r * n + (1 << 20), dklen=32
        )

    def _run(self, func: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._reactor is None:
            return defer.maybeDeferred(func, *args)
        return self._limit.run(threads.deferToThreadPool, self._reactor, self._reactor.getThreadPool(), func, *args)

    def hash_sync(self, password: str) -> str:
        """The stored form of ``password`` (blocking: for tools, not the reactor thread)."""
        log_n, r, p = self._params
        salt = secrets.token_bytes(16)
        key = self._kdf(password, salt, log_n, r, p)
        return f"$scrypt$ln={log_n},r={r},p={p}${_b64(salt)}${_b64(key)}"

    def verify_sync(self, password: str, stored: Optional[str]) -> bool:
        """Whether ``password`` matches the stored hash (blocking). A missing or
        unparseable hash still costs one KDF call and never matches."""
        parsed = self._parse(stored)
        if parsed is None:
            log_n, r, p = self._params
            self._kdf(password, b"\0" * 16, log_n, r, p)
            return False
        (log_n, r, p), salt, key = parsed
        return hmac.compare_digest(self._kdf(password, salt, log_n, r, p), key)

    def _parse(self, stored: Optional[str]) -> Optional[tuple[tuple[int, int, int], bytes, bytes]]:
        if type(stored) is not str:
            return None
        parts = stored.split("$")
        if len(parts) != 5 or parts[0] != "" or parts[1] != "scrypt":
            return None
        try:
            params = dict(item.split("=", 1) for item in parts[2].split(","))
            log_n, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
            self._check_params(log_n, r, p)
            salt, key = _unb64(parts[3]), _unb64(parts[4])
        except (ValueError, KeyError):
            return None
        return (log_n, r, p), salt, key

    def hash(self, password: str) -> defer.Deferred:
        """:returns: Deferred firing with the stored form of ``password``."""
        return self._run(self.hash_sync, password)

    def verify(self, password: str, stored: Optional[str]) -> defer.Deferred:
        """:returns: Deferred firing with whether ``password`` matches ``stored``
            (``stored`` None: False, after the same work as a real check)."""
        return self._run(self.verify_sync, password, stored)


# -- who is calling ------------------------------------------------------------------------


# Requester lives in fedserver.handlers.requester (imported above; re-exported here).


def unknown_token(error: str = "Unknown access token") -> MatrixError:
    """401 ``M_UNKNOWN_TOKEN`` with ``soft_logout: false`` (spec "Soft logout")."""
    return MatrixError(401, M_UNKNOWN_TOKEN, error, soft_logout=False)


# -- user-interactive authentication --------------------------------------------------------


class InteractiveAuthRequired(Exception):
    """Answer the request with 401 and :attr:`body` (spec "User-Interactive Authentication
    API"): ``flows``, ``params``, ``session``, ``completed``, and ``errcode``/``error``
    when a stage just failed.
    """

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("user-interactive authentication required")
        self.body = body


@dataclass
class _UiaSession:
    created: float
    completed: list[str]
    user_id: Optional[str]


class InteractiveAuth:
    """Sessions of the User-Interactive Authentication API, kept in memory.

    A session lives ``ttl`` seconds; at most ``max_sessions`` are kept (oldest dropped),
    so unauthenticated clients cannot grow memory without bound. A client that supplies
    a completed stage without a ``session`` gets a new session (as Synapse allows for
    ``m.login.dummy``).

    :param clock: provides ``seconds()``.
    """

    def __init__(self, clock: Any, *, ttl: float = 600.0, max_sessions: int = 10_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max = max_sessions
        self._sessions: OrderedDict[str, _UiaSession] = OrderedDict()

    def _new_session(self, user_id: Optional[str]) -> tuple[str, _UiaSession]:
        now = self._clock.seconds()
        while self._sessions:
            first = next(iter(self._sessions.values()))
            if first.created + self._ttl > now and len(self._sessions) < self._max:
                break
            self._sessions.popitem(last=False)
        sid = secrets.token_urlsafe(18)
        session = _UiaSession(now, [], user_id)
        self._sessions[sid] = session
        return sid, session

    def _get(self, sid: Any) -> Optional[_UiaSession]:
        if type(sid) is not str:
            return None
        session = self._sessions.get(sid)
        if session is None or session.created + self._ttl <= self._clock.seconds():
            return None
        return session

    @staticmethod
    def _challenge(flows: list[list[str]], sid: str, session: _UiaSession, error: Optional[MatrixError] = None) -> InteractiveAuthRequired:
        body: dict[str, Any] = {
            "flows": [{"stages": list(f)} for f in flows],
            "params": {},
            "session": sid,
        }
        if session.completed:
            body["completed"] = list(session.completed)
        if error is not None:
            body["errcode"] = error.errcode
            body["error"] = error.error
        return InteractiveAuthRequired(body)

    async def check(
        self,
        auth: Any,
        flows: list[list[str]],
        verify_stage: Callable[[str, dict[str, Any]], Any],
        *,
        user_id: Optional[str] = None,
    ) -> None:
        """Run one step of UIA for a request whose body holds ``auth``.

        :param flows: the acceptable flows, each a list of stage types.
        :param verify_stage: ``verify_stage(stage_type, auth_dict)`` (may return an
            awaitable); raises :class:`MatrixError` if the stage fails.
        :param user_id: the user the session is for (a session made for one user cannot be
            used by another).
        :returns: once a flow is complete (the session is then used up).
        :raises InteractiveAuthRequired: when more stages are needed or a stage failed.
        """
        if auth is None:
            sid, session = self._new_session(user_id)
            raise self._challenge(flows, sid, session)
        if type(auth) is not dict:
            raise bad_json("auth must be an object")
        sid = auth.get("session")
        session = self._get(sid) if sid is not None else None
        if session is None or session.user_id != user_id:
            if sid is not None:
                # An unknown or expired session: start again (spec: the server "MUST
                # respond with 401" and a fresh set of flows).
                sid, session = self._new_session(user_id)
                raise self._challenge(flows, sid, session, MatrixError(401, M_UNKNOWN, "Unknown or expired session"))
            sid, session = self._new_session(user_id)
        stage = auth.get("type")
        allowed = {s for f in flows for s in f}
        if type(stage) is not str or stage not in allowed:
            raise self._challenge(flows, sid, session, MatrixError(401, M_UNRECOGNIZED, "Unsupported authentication type"))
        try:
            result = verify_stage(stage, auth)
            if hasattr(result, "__await__"):
                await result
        except MatrixError as e:
            if e.code == 429:
                raise
            raise self._challenge(flows, sid, session, e) from None
        if stage not in session.completed:
            session.completed.append(stage)
        for flow in flows:
            if all(s in session.completed for s in flow):
                self._sessions.pop(sid, None)
                return
        raise self._challenge(flows, sid, session)


# -- the handler -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginResult:
    """A new access token and who it is for."""

    user_id: str
    device_id: str
    access_token: str
    token_id: int

    def to_json(self, server_name: str) -> dict[str, Any]:
        """The spec's login/register response body."""
        return {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "access_token": self.access_token,
            "home_server": server_name,
        }


class AccountHandler:
    """Registration, password login, logout, tokens, devices and passwords of local users.

    :param store: has an ``accounts`` attribute: :class:`fedserver.storage.users.accounts_store.AccountStore`.
    :param server_name: our server name (the domain of local user ids).
    :param hasher: the :class:`PasswordHasher`.
    :param clock: provides ``seconds()`` (UIA sessions).
    :param ratelimiter: a :class:`fedserver.ratelimit.RateLimiter` (``None``: no limits).
    :param enable_registration: allow open registration (``POST /register``).
    """

    #: UIA flows of open registration (spec "Dummy Auth").
    REGISTER_FLOWS = [["m.login.dummy"]]
    #: UIA flows of password changes and device deletion (spec "Password-based").
    PASSWORD_FLOWS = [["m.login.password"]]

    def __init__(
        self,
        store: Any,
        server_name: str,
        hasher: PasswordHasher,
        clock: Any,
        *,
        ratelimiter: Optional[RateLimiter] = None,
        enable_registration: bool = False,
    ) -> None:
        self._store = store.accounts if hasattr(store, "accounts") else store
        self.server_name = server_name
        self._hasher = hasher
        self._clock = clock
        self._limiter = ratelimiter
        self.enable_registration = enable_registration
        self.uia = InteractiveAuth(clock)

    @property
    def store(self) -> Any:
        """The :class:`~fedserver.storage.users.accounts_store.AccountStore`."""
        return self._store

    def _limit(self, action: str, key: Any) -> None:
        if self._limiter is not None:
            self._limiter.check(action, key)

    # -- identifiers --------------------------------------------------------------------

    def user_id_for(self, localpart: str) -> str:
        """The local user id of ``localpart``."""
        return f"@{localpart}:{self.server_name}"

    def is_mine(self, user_id: Any) -> bool:
        """Whether ``user_id`` is a well-formed id of this server."""
        parts = split_user_id(user_id)
        return parts is not None and parts[1] == self.server_name

    def check_localpart(self, localpart: Any) -> str:
        """Validate a requested localpart for a new user.

        :returns: the user id it gives.
        :raises MatrixError: 400 ``M_INVALID_USERNAME``.
        """
        if type(localpart) is not str or not localpart:
            raise MatrixError(400, M_INVALID_USERNAME, "The username must be a non-empty string")
        if not is_valid_localpart(localpart):
            raise MatrixError(
                400, M_INVALID_USERNAME, "User ID can only contain characters a-z, 0-9, or '._=-/+'"
            )
        user_id = self.user_id_for(localpart)
        if utf8_length(user_id) > MAX_USER_ID_BYTES:
            raise MatrixError(400, M_INVALID_USERNAME, f"User ID may not be longer than {MAX_USER_ID_BYTES} bytes")
        return user_id

    async def check_username_available(self, localpart: Any) -> str:
        """``GET /register/available``: the localpart is valid and not taken.

        :returns: the user id.
        :raises MatrixError: 400 ``M_INVALID_USERNAME`` or ``M_USER_IN_USE``.
        """
        user_id = self.check_localpart(localpart)
        if await self._store.get_user(user_id) is not None:
            raise MatrixError(400, M_USER_IN_USE, "User ID already taken.")
        return user_id

    @staticmethod
    def check_password_value(password: Any, name: str = "password") -> str:
        """A password from a request body.

        :raises MatrixError: 400 ``M_BAD_JSON`` / ``M_INVALID_PARAM``.
        """
        if type(password) is not str:
            raise bad_json(f"{name} must be a string")
        if not password:
            raise invalid_param(name, "The password must not be empty")
        if len(password) > MAX_PASSWORD_LENGTH or "\x00" in password:
            raise invalid_param(name, f"The password must be at most {MAX_PASSWORD_LENGTH} characters, without NUL")
        return password

    @staticmethod
    def _check_device_fields(device_id: Any, display_name: Any) -> None:
        if device_id is not None and (
            type(device_id) is not str or not device_id or len(device_id) > MAX_DEVICE_ID_LENGTH
        ):
            raise invalid_param("device_id", f"device_id must be a string of 1 to {MAX_DEVICE_ID_LENGTH} characters")
        if display_name is not None and (type(display_name) is not str or len(display_name) > MAX_DEVICE_NAME_LENGTH):
            raise invalid_param(
                "initial_device_display_name",
                f"initial_device_display_name must be a string of at most {MAX_DEVICE_NAME_LENGTH} characters",
            )

    # -- creating users -------------------------------------------------------------------

    async def create_user(
        self,
        localpart: str,
        password: Optional[str],
        *,
        admin: bool = False,
        user_type: Optional[str] = None,
        displayname: Optional[str] = None,
        login: bool = True,
        device_id: Optional[str] = None,
        device_display_name: Optional[str] = None,
        ip: Optional[str] = None,
    ) -> tuple[str, Optional[LoginResult]]:
        """Create a local user (and, with ``login``, a device and access token) in one
        transaction. The display name defaults to the localpart.

        :returns: ``(user_id, LoginResult or None)``.
        :raises MatrixError: 400 ``M_INVALID_USERNAME`` / ``M_USER_IN_USE``.
        """
        user_id = self.check_localpart(localpart)
        password_hash = None if password is None else await self._hasher.hash(password)
        token = device = token_hash = None
        if login:
            token = new_access_token()
            token_hash = hash_token(token)
            device = device_id or new_device_id()
        try:
            token_id = await self._store.create_user(
                user_id,
                password_hash,
                admin=admin,
                user_type=user_type,
                displayname=localpart if displayname is None else displayname,
                device_id=device,
                device_display_name=device_display_name,
                token_hash=token_hash,
                ip=ip,
            )
        except UserExistsError:
            raise MatrixError(400, M_USER_IN_USE, "User ID already taken.") from None
        log.info("Registered {user_id}{admin}", user_id=user_id, admin=" (admin)" if admin else "")
        if not login:
            return user_id, None
        assert token is not None and device is not None
        return user_id, LoginResult(user_id, device, token, token_id)

    async def register(self, body: Mapping[str, Any], *, kind: str = "user", ip: str = "") -> dict[str, Any]:
        """``POST /register`` (spec "Account registration"), with the ``m.login.dummy``
        UIA flow.

        :param body: the request body.
        :param kind: the ``kind`` query parameter.
        :param ip: the client's address (rate limiting, device last seen).
        :returns: the response body.
        :raises InteractiveAuthRequired: 401 with the flows (until ``auth`` completes one).
        :raises MatrixError: 403 ``M_FORBIDDEN`` (registration disabled, guests), 400
            ``M_INVALID_USERNAME`` / ``M_USER_IN_USE`` / ``M_MISSING_PARAM`` /
            ``M_INVALID_PARAM``, 429 ``M_LIMIT_EXCEEDED``.
        """
        self._limit(REGISTER_IP, ip)
        if kind not in ("user", "guest"):
            raise invalid_param("kind", "kind must be 'user' or 'guest'")
        if not self.enable_registration:
            raise forbidden("Registration is disabled")
        if kind == "guest":
            raise forbidden("Guest access is disabled")
        username = body.get("username")
        password = body.get("password")
        device_id = body.get("device_id")
        display_name = body.get("initial_device_display_name")
        inhibit_login = body.get("inhibit_login", False)
        if type(inhibit_login) is not bool:
            raise bad_json("inhibit_login must be a boolean")
        self._check_device_fields(device_id, display_name)
        if password is not None:
            self.check_password_value(password)
        # Spec: "Homeservers MUST perform the relevant checks and return these codes
        # before performing User-Interactive Authentication".
        if username is not None:
            await self.check_username_available(username)
        await self.uia.check(body.get("auth"), self.REGISTER_FLOWS, lambda stage, auth: None)
        if password is None:
            raise missing_param("password")
        for _ in range(5):
            localpart = username if username is not None else _random_localpart()
            try:
                user_id, result = await self.create_user(
                    localpart,
                    password,
                    login=not inhibit_login,
                    device_id=device_id,
                    device_display_name=display_name,
                    ip=ip,
                )
                break
            except MatrixError as e:
                if username is not None or e.errcode != M_USER_IN_USE:
                    raise
        else:  # pragma: no cover - five random 12-character collisions
            raise MatrixError(500, M_UNKNOWN, "Could not allocate a user ID")
        if result is None:
            return {"user_id": user_id, "home_server": self.server_name}
        return result.to_json(self.server_name)

    # -- login / logout -------------------------------------------------------------------

    def _login_user_id(self, body: Mapping[str, Any]) -> str:
        """The user id a login body names (``identifier`` of type ``m.id.user``, or the
        deprecated top-level ``user``), not yet checked to exist."""
        identifier = body.get("identifier")
        if identifier is not None:
            if type(identifier) is not dict:
                raise bad_json("identifier must be an object")
            id_type = identifier.get("type")
            if id_type != "m.id.user":
                raise MatrixError(400, M_UNKNOWN, f"Unsupported identifier type {str(id_type)[:50]!r}")
            user = identifier.get("user")
        else:
            user = body.get("user")
            if user is None:
                if body.get("medium") is not None or body.get("address") is not None:
                    raise MatrixError(400, M_UNKNOWN, "Third-party identifiers are not supported")
                raise missing_param("identifier")
        if type(user) is not str or not user:
            raise bad_json("user must be a non-empty string")
        if user.startswith("@"):
            parts = split_user_id(user)
            if parts is None:
                raise forbidden("Invalid username or password")
            localpart, server = parts
            if server.lower() != self.server_name.lower():
                raise forbidden("Invalid username or password")
        else:
            localpart = user
        # Local users are registered lowercase only, so matching is case-insensitive.
        return self.user_id_for(localpart.lower())

    async def login(self, body: Mapping[str, Any], *, ip: str = "") -> LoginResult:
        """``POST /login`` with ``m.login.password`` (spec "Password-based").

        :raises MatrixError: 400 ``M_UNKNOWN`` (login or identifier type), 400
            ``M_BAD_JSON`` / ``M_MISSING_PARAM``, 403 ``M_FORBIDDEN`` (wrong user or
            password), 403 ``M_USER_DEACTIVATED``, 429 ``M_LIMIT_EXCEEDED``.
        """
        self._limit(LOGIN_IP, ip)
        login_type = body.get("type")
        if login_type != "m.login.password":
            raise MatrixError(400, M_UNKNOWN, f"Unknown login type {str(login_type)[:50]!r}")
        user_id = self._login_user_id(body)
        password = body.get("password")
        if type(password) is not str:
            raise missing_param("password") if password is None else bad_json("password must be a string")
        device_id = body.get("device_id")
        display_name = body.get("initial_device_display_name")
        self._check_device_fields(device_id, display_name)
        if self._limiter is not None:
            self._limiter.peek(LOGIN_FAILED_USER, user_id)
        user = await self._store.get_user(user_id) if utf8_length(user_id) <= MAX_USER_ID_BYTES else None
        ok = False
        if len(password) <= MAX_PASSWORD_LENGTH:
            # Unknown users cost the same KDF work, so timing does not reveal who exists.
            ok = await self._hasher.verify(password, user.password_hash if user is not None else None)
        if not ok or user is None:
            if self._limiter is not None:
                self._limiter.record(LOGIN_FAILED_USER, user_id)
            raise forbidden("Invalid username or password")
        if user.deactivated:
            raise MatrixError(403, M_USER_DEACTIVATED, "This account has been deactivated")
        return await self.issue_token(user_id, device_id, display_name, ip=ip)

    async def issue_token(
        self, user_id: str, device_id: Optional[str] = None, device_display_name: Optional[str] = None, *, ip: Optional[str] = None
    ) -> LoginResult:
        """A new access token for ``user_id`` on ``device_id`` (a new device if ``None``).
        Older tokens of the same device are revoked."""
        device = device_id or new_device_id()
        token = new_access_token()
        token_id = await self._store.add_access_token(user_id, device, hash_token(token), device_display_name, ip or None)
        return LoginResult(user_id, device, token, token_id)

    async def get_requester(self, token: str) -> Requester:
        """Who an access token belongs to.

        :raises MatrixError: 401 ``M_UNKNOWN_TOKEN`` (``soft_logout`` false).
        """
        if type(token) is not str or not token or len(token) > 1024:
            raise unknown_token()
        info = await self._store.get_token(hash_token(token))
        if info is None:
            raise unknown_token()
        return Requester(info.user_id, info.device_id, info.token_id, info.is_guest)

    async def logout(self, requester: Requester) -> None:
        """``POST /logout``: revoke the token and delete its device."""
        await self._store.delete_device(requester.user_id, requester.device_id, requester.access_token_id)

    async def logout_all(self, requester: Requester) -> None:
        """``POST /logout/all``: revoke every token of the user and delete every device."""
        await self._store.delete_all_tokens(requester.user_id)

    # -- password-protected operations -----------------------------------------------------

    async def _check_own_password(self, requester: Requester, stage: str, auth: dict[str, Any]) -> None:
        if stage != "m.login.password":
            raise forbidden("Unsupported authentication type")
        password = auth.get("password")
        if type(password) is not str:
            raise bad_json("auth.password must be a string")
        try:
            named = self._login_user_id(auth)
        except MatrixError:
            raise forbidden("Invalid username or password") from None
        if self._limiter is not None:
            self._limiter.peek(LOGIN_FAILED_USER, requester.user_id)
        user = await self._store.get_user(requester.user_id)
        ok = len(password) <= MAX_PASSWORD_LENGTH and await self._hasher.verify(
            password, user.password_hash if user is not None else None
        )
        if not ok or named != requester.user_id:
            if self._limiter is not None:
                self._limiter.record(LOGIN_FAILED_USER, requester.user_id)
            raise forbidden("Invalid username or password")

    async def check_password_uia(self, requester: Requester, auth: Any) -> None:
        """User-Interactive Authentication with the current password (``m.login.password``)
        for another area's protected operation (e.g. replacing cross-signing keys).

        :raises InteractiveAuthRequired: until the password is given.
        """
        await self.uia.check(
            auth,
            self.PASSWORD_FLOWS,
            lambda stage, a: self._check_own_password(requester, stage, a),
            user_id=requester.user_id,
        )

    async def change_password(self, requester: Requester, body: Mapping[str, Any]) -> None:
        """``POST /account/password``: UIA with the current password, then the new hash;
        with ``logout_devices`` (default true) every other token and device goes.

        :raises InteractiveAuthRequired: until the current password is given.
        """
        new_password = body.get("new_password")
        if new_password is None:
            raise missing_param("new_password")
        self.check_password_value(new_password, "new_password")
        logout_devices = body.get("logout_devices", True)
        if type(logout_devices) is not bool:
            raise bad_json("logout_devices must be a boolean")
        await self.uia.check(
            body.get("auth"),
            self.PASSWORD_FLOWS,
            lambda stage, auth: self._check_own_password(requester, stage, auth),
            user_id=requester.user_id,
        )
        password_hash = await self._hasher.hash(new_password)
        await self._store.set_password_hash(
            requester.user_id, password_hash, keep_token_id=requester.access_token_id, logout_devices=logout_devices
        )

    def hash_password(self, password: str) -> defer.Deferred:
        """Hash a new password with the server's KDF (in a thread; for the admin API).

        :returns: Deferred firing with the self-describing hash string.
        """
        return self._hasher.hash(password)

    async def delete_devices(self, requester: Requester, device_ids: Iterable[str], auth: Any) -> None:
        """``DELETE /devices/{deviceId}`` and ``POST /delete_devices``: UIA with the
        current password, then the devices and their tokens go."""
        ids = list(device_ids)
        await self.uia.check(
            auth,
            self.PASSWORD_FLOWS,
            lambda stage, a: self._check_own_password(requester, stage, a),
            user_id=requester.user_id,
        )
        await self._store.delete_devices(requester.user_id, ids)


def _random_localpart() -> str:
    return "u" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(11))


# -- shared-secret registration ------------------------------------------------------------------


def registration_mac(
    secret: str, nonce: str, username: str, password: str, admin: bool, user_type: Optional[str] = None
) -> str:
    """The MAC of Synapse's shared-secret registration: hex HMAC-SHA1 keyed with the
    shared secret over ``nonce NUL username NUL password NUL admin|notadmin [NUL user_type]``."""
    def enc(text: str) -> bytes:
        return text.encode("utf-8", "surrogatepass")  # lone surrogates must not crash

    mac = hmac.new(enc(secret), digestmod=hashlib.sha1)
    mac.update(enc(nonce))
    mac.update(b"\x00")
    mac.update(enc(username))
    mac.update(b"\x00")
    mac.update(enc(password))
    mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    if user_type:
        mac.update(b"\x00")
        mac.update(enc(user_type))
    return mac.hexdigest()


#: The ``user_type`` values shared-secret registration accepts (as Synapse).
USER_TYPES = ("support", "bot")


class SharedSecretRegistration:
    """Synapse's admin shared-secret registration (``/_synapse/admin/v1/register``), so
    that tools such as ``register_new_matrix_user`` work against us.

    Nonces are single-use (consumed by the first POST naming them, whatever its MAC)
    and expire after ``nonce_ttl`` seconds; at most ``max_nonces`` are outstanding.

    :param accounts: the :class:`AccountHandler`.
    :param secret: ``registration_shared_secret``; ``None`` disables the API (400, as
        Synapse answers).
    :param clock: provides ``seconds()``.
    :param ratelimiter: counts failed attempts per address.
    """

    def __init__(
        self,
        accounts: AccountHandler,
        secret: Optional[str],
        clock: Any,
        *,
        ratelimiter: Optional[RateLimiter] = None,
        nonce_ttl: float = 60.0,
        max_nonces: int = 10_000,
    ) -> None:
        self._accounts = accounts
        self._secret = secret
        self._clock = clock
        self._limiter = ratelimiter
        self._ttl = nonce_ttl
        self._max = max_nonces
        self._nonces: OrderedDict[str, float] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether a shared secret is configured."""
        return self._secret is not None

    def _check_enabled(self) -> None:
        if self._secret is None:
            raise MatrixError(400, M_UNKNOWN, "Shared secret registration is not enabled")

    def new_nonce(self) -> str:
        """``GET``: a new single-use nonce.

        :raises MatrixError: 400 if the API is disabled.
        """
        self._check_enabled()
        now = self._clock.seconds()
        while self._nonces:
            oldest = next(iter(self._nonces.values()))
            if oldest + self._ttl > now and len(self._nonces) < self._max:
                break
            self._nonces.popitem(last=False)
        nonce = secrets.token_hex(16)
        self._nonces[nonce] = now
        return nonce

    def _failed(self, ip: str, error: MatrixError) -> MatrixError:
        if self._limiter is not None:
            self._limiter.record(ADMIN_REGISTER_FAILED_IP, ip)
        return error

    async def register(self, body: Mapping[str, Any], *, ip: str = "") -> dict[str, Any]:
        """``POST``: check the nonce and MAC, then create the user and log it in.

        :returns: ``{"access_token", "user_id", "home_server", "device_id"}``.
        :raises MatrixError: 400 (disabled, bad fields, unknown or expired nonce,
            ``M_INVALID_USERNAME``, ``M_USER_IN_USE``), 403 ``M_FORBIDDEN`` (MAC
            incorrect), 429 after repeated failures from one address.
        """
        self._check_enabled()
        assert self._secret is not None
        if self._limiter is not None:
            self._limiter.peek(ADMIN_REGISTER_FAILED_IP, ip)
        nonce = body.get("nonce")
        if type(nonce) is not str:
            raise self._failed(ip, missing_param("nonce") if nonce is None else bad_json("nonce must be a string"))
        created = self._nonces.pop(nonce, None)
        if created is None or created + self._ttl <= self._clock.seconds():
            raise self._failed(ip, MatrixError(400, M_UNKNOWN, "Unrecognised nonce"))
        username = body.get("username")
        password = body.get("password")
        admin = body.get("admin", False)
        user_type = body.get("user_type")
        displayname = body.get("displayname")
        mac = body.get("mac")
        if type(username) is not str or not username or len(username) > 512 or "\x00" in username:
            raise self._failed(ip, invalid_param("username", "username must be a non-empty string without NUL"))
        if type(password) is not str or not password or len(password) > MAX_PASSWORD_LENGTH or "\x00" in password:
            raise self._failed(ip, invalid_param("password", "password must be a non-empty string without NUL"))
        if type(admin) is not bool:
            raise self._failed(ip, invalid_param("admin", "admin must be a boolean"))
        if user_type is not None and user_type not in USER_TYPES:
            raise self._failed(ip, invalid_param("user_type", "Invalid user type"))
        if displayname is not None and (type(displayname) is not str or len(displayname) > 256):
            raise self._failed(ip, invalid_param("displayname", "displayname must be a string of at most 256 characters"))
        if type(mac) is not str:
            raise self._failed(ip, missing_param("mac") if mac is None else bad_json("mac must be a string"))
        want = registration_mac(self._secret, nonce, username, password, admin, user_type)
        if not hmac.compare_digest(want.encode("ascii"), mac.lower().encode("utf-8", "surrogatepass")):
            raise self._failed(ip, MatrixError(403, M_FORBIDDEN, "HMAC incorrect"))
        # The MAC covers the username as sent; user ids are lowercase.
        user_id, result = await self._accounts.create_user(
            username.lower(), password, admin=admin, user_type=user_type, displayname=displayname, ip=ip or None
        )
        assert result is not None
        return result.to_json(self._accounts.server_name)


__all__ = [
    "AccountHandler",
    "InteractiveAuth",
    "InteractiveAuthRequired",
    "LoginResult",
    "PasswordHasher",
    "Requester",
    "SharedSecretRegistration",
    "USER_TYPES",
    "hash_token",
    "is_valid_localpart",
    "new_access_token",
    "new_device_id",
    "registration_mac",
    "split_user_id",
    "unknown_token",
]
