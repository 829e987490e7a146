"""Device, one-time and fallback keys: /keys/upload, /keys/query and /keys/claim for clients (local and remote users), /user/keys/query and /user/keys/claim for other servers."""

# Client-Server "Key Distribution": a device publishes its identity keys and one-time
# keys with /keys/upload; others fetch identity keys with /keys/query and claim one-time
# keys with /keys/claim; for users of other servers the requests go over federation
# ("The APIs defined here are designed to be able to proxy much of the client's request
# through to federation") and an unreachable server is named in ``failures``.

from __future__ import annotations

from typing import Any, Mapping, Optional, TypeGuard

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.background import is_storage_fault
from fedserver.e2ee.keys import (
    InvalidKeyError,
    check_device_keys,
    check_one_time_keys,
    with_signatures,
)
from fedserver.errors import MatrixError, bad_json, invalid_param
from fedserver.handlers.e2ee.device_lists import (
    RemoteDeviceLists,
    checked_remote_device_keys,
    checked_remote_signing_keys,
)
from fedserver.handlers.e2ee.devices import LocalDeviceLists, server_of
from fedserver.storage.database import Txn
from fedserver.handlers.requester import Requester

log = Logger()

#: Default and largest ``timeout`` (ms) for the federation part of a query or claim.
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 60_000
#: Most users in one query, devices per user in a query, keys in one claim.
MAX_QUERY_USERS = 10_000
MAX_QUERY_DEVICES = 1_000
MAX_CLAIMS = 10_000
#: Most unclaimed one-time keys a device may hold per algorithm, and keys per upload.
MAX_ONE_TIME_KEYS = 10_000
MAX_KEYS_PER_UPLOAD = 1_000


def key_error(e: InvalidKeyError) -> MatrixError:
    """The 400 answer for a refused key."""
    return MatrixError(400, e.errcode, str(e))


def _is_user_id(value: Any) -> "TypeGuard[str]":
    return type(value) is str and value.startswith("@") and ":" in value and len(value.encode("utf-8", "surrogatepass")) <= 255


def _timeout(body: Mapping[str, Any]) -> float:
    value = body.get("timeout", DEFAULT_TIMEOUT_MS)
    if type(value) is not int:
        raise bad_json("timeout must be an integer")
    return max(0, min(value, MAX_TIMEOUT_MS)) / 1000.0


def check_query(device_keys: Any, *, limit: int = MAX_QUERY_USERS) -> dict[str, list[str]]:
    """The ``device_keys`` of a query: ``{user_id: [device ids]}`` (empty: all).

    :raises MatrixError: 400 ``M_BAD_JSON`` / ``M_INVALID_PARAM``.
    """
    if type(device_keys) is not dict:
        raise bad_json("device_keys must be an object of user id to device ids")
    if len(device_keys) > limit:
        raise invalid_param("device_keys", f"at most {limit} users per query")
    out = {}
    for user_id, devices in device_keys.items():
        if not _is_user_id(user_id):
            raise invalid_param("device_keys", f"{str(user_id)[:100]!r} is not a user id")
        if devices is None:
            devices = []
        if type(devices) is not list or len(devices) > MAX_QUERY_DEVICES or not all(
            type(d) is str and 0 < len(d) <= 255 for d in devices
        ):
            raise bad_json("device_keys values must be lists of device ids")
        out[user_id] = list(dict.fromkeys(devices))
    return out


def check_claims(one_time_keys: Any) -> dict[str, dict[str, str]]:
    """The ``one_time_keys`` of a claim: ``{user_id: {device_id: algorithm}}``.

    :raises MatrixError: 400 ``M_BAD_JSON`` / ``M_INVALID_PARAM``.
    """
    if type(one_time_keys) is not dict:
        raise bad_json("one_time_keys must be an object of user id to {device id: algorithm}")
    out: dict[str, dict[str, str]] = {}
    total = 0
    for user_id, by_device in one_time_keys.items():
        if not _is_user_id(user_id):
            raise invalid_param("one_time_keys", f"{str(user_id)[:100]!r} is not a user id")
        if type(by_device) is not dict:
            raise bad_json("one_time_keys values must be objects of device id to algorithm")
        for device_id, algorithm in by_device.items():
            if not device_id or len(device_id) > 255 or type(algorithm) is not str or not algorithm or len(algorithm) > 255:
                raise bad_json("one_time_keys values must map device ids to algorithm names")
        total += len(by_device)
        out[user_id] = dict(by_device)
    if total > MAX_CLAIMS:
        raise invalid_param("one_time_keys", f"at most {MAX_CLAIMS} keys per claim")
    return out


async def _settle(work: Any) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, exception)`` of an awaitable."""
    try:
        return True, await work
    except Exception as e:  # noqa: BLE001 - reported per server in "failures"
        return False, e


async def _all(works: list[Any]) -> list[tuple[bool, Any]]:
    """Run awaitables concurrently; each one's :func:`_settle` outcome, in order."""
    return list(await defer.gatherResults([defer.ensureDeferred(_settle(w)) for w in works]))


def _failure(e: Exception) -> dict[str, Any]:
    code = getattr(e, "code", None)
    return {"status": code if type(code) is int else 503, "message": str(e)[:200]}


class E2eKeysHandler:
    """Identity and one-time keys.

    :param store: the :class:`~fedserver.storage.sqlite.SQLiteStore`.
    :param local_lists: the :class:`~fedserver.handlers.e2ee.devices.LocalDeviceLists`
        (a new device's keys are announced in the transaction that stores them).
    :param remote_lists: the :class:`~fedserver.handlers.e2ee.device_lists.RemoteDeviceLists`.
    :param federation_client: ``post_json(destination, path, body, timeout=)``.
    """

    def __init__(
        self,
        store: Any,
        local_lists: LocalDeviceLists,
        remote_lists: RemoteDeviceLists,
        federation_client: Any,
        *,
        max_one_time_keys: int = MAX_ONE_TIME_KEYS,
    ) -> None:
        self._store = store
        self._local = local_lists
        self._remote = remote_lists
        self._client = federation_client
        self.server_name = local_lists.server_name
        self._max_otks = max_one_time_keys

    def is_mine(self, user_id: str) -> bool:
        return server_of(user_id) == self.server_name

    # -- /keys/upload ---------------------------------------------------------------------

    async def upload(self, requester: Requester, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /keys/upload``: the device's identity keys, one-time keys and fallback
        keys, each checked (HOSTILE row 34: keys signed by another device, or malformed,
        get 400 and nothing is stored).

        :returns: ``{"one_time_key_counts": {algorithm: count}}``.
        :raises MatrixError: 400 ``M_BAD_JSON`` / ``M_INVALID_PARAM`` /
            ``M_INVALID_SIGNATURE``; 400 ``M_UNKNOWN`` for an access token without a
            device; 404 if the device was deleted meanwhile.
        """
        user_id, device_id = requester.user_id, requester.device_id
        if not device_id:
            raise MatrixError(400, "M_UNKNOWN", "This access token has no device to upload keys for")
        devices = self._store.devices
        try:
            device_keys = None
            if body.get("device_keys") is not None:
                device_keys = check_device_keys(body["device_keys"], user_id, device_id)
            ed25519 = device_keys.ed25519 if device_keys is not None else None
            if ed25519 is None and (body.get("one_time_keys") or body.get("fallback_keys")):
                stored = await devices.get_device_keys(user_id, device_id)
                ed25519 = (stored or {}).get("keys", {}).get(f"ed25519:{device_id}")
            one_time = []
            if body.get("one_time_keys") is not None:
                one_time = check_one_time_keys(body["one_time_keys"], user_id, device_id, ed25519, limit=MAX_KEYS_PER_UPLOAD)
            fallback = []
            fallback_json = body.get("fallback_keys")
            if fallback_json is None:
                fallback_json = body.get("org.matrix.msc2732.fallback_keys")  # the name before v1.2
            if fallback_json is not None:
                fallback = check_one_time_keys(fallback_json, user_id, device_id, ed25519, fallback=True)
        except InvalidKeyError as e:
            raise key_error(e) from None

        def txn_func(txn: Txn) -> dict[str, int]:
            if not devices.device_exists_txn(txn, user_id, device_id):
                raise MatrixError(404, "M_NOT_FOUND", "Unknown device")
            if one_time:
                counts = devices.count_one_time_keys_txn(txn, user_id, device_id)
                for alg in {k.algorithm for k in one_time}:
                    new = sum(1 for k in one_time if k.algorithm == alg)
                    if counts.get(alg, 0) + new > self._max_otks:
                        raise invalid_param("one_time_keys", f"a device may hold at most {self._max_otks} one-time keys")
                devices.add_one_time_keys_txn(txn, user_id, device_id, [(k.algorithm, k.key_id, k.json) for k in one_time])
            if fallback:
                devices.set_fallback_keys_txn(txn, user_id, device_id, [(k.algorithm, k.key_id, k.json) for k in fallback])
            if device_keys is not None and devices.set_device_keys_txn(txn, user_id, device_id, device_keys.json):
                self._local.broadcast_txn(txn, user_id, [device_id])
            return devices.count_one_time_keys_txn(txn, user_id, device_id)

        counts = await devices.run_write(txn_func)
        return {"one_time_key_counts": counts}

    # -- /keys/query ----------------------------------------------------------------------

    async def query(self, requester: Requester, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /keys/query``: identity and cross-signing keys of local and remote users;
        servers that could not be reached are listed in ``failures``."""
        queries = check_query(body.get("device_keys"))
        timeout = _timeout(body)
        viewer = requester.user_id
        local = {u: d for u, d in queries.items() if self.is_mine(u)}
        remote = {u: d for u, d in queries.items() if not self.is_mine(u)}
        result = await self.query_local(local, viewer=viewer)
        result["failures"] = {}
        if remote:
            await self._query_remote(remote, viewer, timeout, result)
        return result

    async def query_local(self, queries: Mapping[str, list[str]], *, viewer: Optional[str]) -> dict[str, Any]:
        """Keys of our users as ``viewer`` may see them (``None``: another server, which
        sees what any user may): cross-signing "Key and signature security"."""
        ids = [u for u in queries if self.is_mine(u)]

        def txn_func(txn: Txn) -> dict[str, Any]:
            devices = self._store.devices
            out: dict[str, Any] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
            for user_id in ids:
                wanted = queries[user_id] or None
                out["device_keys"][user_id] = self._local.device_keys_txn(txn, user_id, wanted)
            types = ("master", "self_signing", "user_signing")
            cross = devices.get_cross_signing_keys_txn(txn, ids, types)
            signers = [u for u in ([viewer] if viewer else [])]
            sigs = devices.get_signatures_txn(txn, ids)
            for user_id, keys in cross.items():
                if "master" in keys:
                    master = keys["master"]
                    pub = next(iter(master.get("keys", {}).values()), None)
                    visible = [s for s in sigs.get((user_id, pub), []) if s[0] == user_id or s[0] in signers]
                    out["master_keys"][user_id] = with_signatures(master, visible)
                if "self_signing" in keys:
                    out["self_signing_keys"][user_id] = keys["self_signing"]
                if "user_signing" in keys and user_id == viewer:
                    out.setdefault("user_signing_keys", {})[user_id] = keys["user_signing"]
            return out

        return await self._store.devices.run_read(txn_func)

    async def _query_remote(
        self, queries: dict[str, list[str]], viewer: str, timeout: float, result: dict[str, Any]
    ) -> None:
        cached = await self._remote.cached(queries)
        from_cache = {u: d for u, d in queries.items() if u in cached}
        if from_cache:
            self._merge(result, await self._from_cache(from_cache))
        by_server: dict[str, dict[str, list[str]]] = {}
        for user_id, devices in queries.items():
            if user_id not in cached:
                by_server.setdefault(server_of(user_id), {})[user_id] = devices
        if by_server:
            answers = await _all([self._ask_server(server, users, timeout) for server, users in by_server.items()])
            for server, (ok, value) in zip(by_server, answers):
                if not ok:
                    result["failures"][server] = _failure(value)
                    continue
                self._merge(result, value)
        # The viewer's own signatures on other users' master keys (made with their
        # user-signing key, visible to them only).
        others = [u for u in result.get("master_keys", {}) if not self.is_mine(u)]
        if others:
            sigs = await self._store.devices.run_read(
                lambda txn: self._store.devices.get_signatures_txn(txn, others, signers=[viewer])
            )
            for user_id in others:
                master = result["master_keys"][user_id]
                pub = next(iter(master.get("keys", {}).values()), None)
                extra = sigs.get((user_id, pub), [])
                if extra:
                    result["master_keys"][user_id] = with_signatures(master, extra)

    @staticmethod
    def _merge(result: dict[str, Any], part: Mapping[str, Any]) -> None:
        for section in ("device_keys", "master_keys", "self_signing_keys"):
            if part.get(section):
                result.setdefault(section, {}).update(part[section])

    async def _from_cache(self, queries: Mapping[str, list[str]]) -> dict[str, Any]:
        def txn_func(txn: Txn) -> dict[str, Any]:
            devices = self._store.devices
            cached = devices.get_remote_devices_txn(txn, list(queries))
            out: dict[str, Any] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
            for user_id, wanted in queries.items():
                entry = out["device_keys"][user_id] = {}
                for device_id, device in cached.get(user_id, {}).items():
                    if device.keys is None or (wanted and device_id not in wanted):
                        continue
                    keys = dict(device.keys)
                    unsigned = dict(keys.get("unsigned") or {})
                    if device.display_name is not None:
                        unsigned["device_display_name"] = device.display_name
                    keys["unsigned"] = unsigned
                    entry[device_id] = keys
            cross = devices.get_cross_signing_keys_txn(txn, list(queries), ("master", "self_signing"))
            for user_id, keys in cross.items():
                if "master" in keys:
                    out["master_keys"][user_id] = keys["master"]
                if "self_signing" in keys:
                    out["self_signing_keys"][user_id] = keys["self_signing"]
            return out

        return await self._store.devices.run_read(txn_func)

    async def _ask_server(self, server: str, users: dict[str, list[str]], timeout: float) -> dict[str, Any]:
        """``POST /user/keys/query`` on ``server`` for its ``users``; what it answers about
        them that checks out (each device's keys signed by the device; the self-signing
        key by the master key), cached for users we share a room with."""
        answer = await self._client.post_json(
            server, "/_matrix/federation/v1/user/keys/query", {"device_keys": users}, timeout=timeout
        )
        out: dict[str, Any] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
        if not isinstance(answer, dict):
            return out
        def section(name: str) -> dict[str, Any]:
            value = answer.get(name)
            return value if isinstance(value, dict) else {}

        device_keys, masters, ssks = section("device_keys"), section("master_keys"), section("self_signing_keys")
        for user_id, wanted in users.items():
            got = device_keys.get(user_id)
            entry = out["device_keys"][user_id] = {}
            if isinstance(got, dict):
                for device_id, keys in got.items():
                    if wanted and device_id not in wanted:
                        continue
                    checked = checked_remote_device_keys(user_id, device_id, keys)
                    if checked is not None:
                        if isinstance(keys, dict) and isinstance(keys.get("unsigned"), dict):
                            checked = dict(checked, unsigned=keys["unsigned"])
                        entry[device_id] = checked
            signing = checked_remote_signing_keys(user_id, masters.get(user_id), ssks.get(user_id))
            if "master" in signing:
                out["master_keys"][user_id] = signing["master"].json
            if "self_signing" in signing:
                out["self_signing_keys"][user_id] = signing["self_signing"].json
            if not wanted and isinstance(got, dict):
                try:
                    await self._remote.cache_query_answer(user_id, got, masters.get(user_id), ssks.get(user_id))
                except Exception as e:  # noqa: BLE001 - caching is an optimisation
                    if not is_storage_fault(e):  # the database logs its outages once
                        log.failure("Caching the devices of {user} failed", user=user_id)
        return out

    # -- /keys/claim ----------------------------------------------------------------------

    async def claim(self, requester: Requester, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /keys/claim``: one key per requested device, a one-time key while any
        is left, then the fallback key; remote devices through their servers."""
        claims = check_claims(body.get("one_time_keys"))
        timeout = _timeout(body)
        local = {u: d for u, d in claims.items() if self.is_mine(u)}
        result: dict[str, Any] = {"one_time_keys": await self.claim_local(local), "failures": {}}
        by_server: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in claims.items():
            if not self.is_mine(user_id):
                by_server.setdefault(server_of(user_id), {})[user_id] = devices
        if by_server:
            answers = await _all([self._claim_from(server, users, timeout) for server, users in by_server.items()])
            for server, (ok, value) in zip(by_server, answers):
                if ok:
                    result["one_time_keys"].update(value)
                else:
                    result["failures"][server] = _failure(value)
        return result

    async def claim_local(self, claims: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
        """Claim keys of our users' devices."""
        rows = [(u, d, alg) for u, devices in claims.items() if self.is_mine(u) for d, alg in devices.items()]
        if not rows:
            return {}
        return await self._store.devices.claim_keys(rows)

    async def _claim_from(self, server: str, users: dict[str, dict[str, str]], timeout: float) -> dict[str, Any]:
        answer = await self._client.post_json(
            server, "/_matrix/federation/v1/user/keys/claim", {"one_time_keys": users}, timeout=timeout
        )
        out: dict[str, Any] = {}
        keys = answer.get("one_time_keys") if isinstance(answer, dict) else None
        if not isinstance(keys, dict):
            return out
        for user_id, requested in users.items():
            got = keys.get(user_id)
            if not isinstance(got, dict):
                continue
            for device_id, by_key in got.items():
                if device_id in requested and isinstance(by_key, dict) and len(by_key) <= 10:
                    out.setdefault(user_id, {})[device_id] = by_key
        return out

    # -- federation ---------------------------------------------------------------------

    async def on_federation_query(self, origin: str, body: Any) -> dict[str, Any]:
        """``POST /_matrix/federation/v1/user/keys/query``: keys of our users (others'
        are left out), as any other server may see them."""
        if type(body) is not dict:
            raise bad_json("Body must be an object")
        queries = check_query(body.get("device_keys"))
        return await self.query_local({u: d for u, d in queries.items() if self.is_mine(u)}, viewer=None)

    async def on_federation_claim(self, origin: str, body: Any) -> dict[str, Any]:
        """``POST /_matrix/federation/v1/user/keys/claim``: keys of our users' devices."""
        if type(body) is not dict:
            raise bad_json("Body must be an object")
        claims = check_claims(body.get("one_time_keys"))
        return {"one_time_keys": await self.claim_local({u: d for u, d in claims.items() if self.is_mine(u)})}


__all__ = ["E2eKeysHandler", "check_claims", "check_query", "key_error"]
