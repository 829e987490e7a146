"""Cross-signing: /keys/device_signing/upload (User-Interactive Authentication where the spec asks) and /keys/signatures/upload."""

# Client-Server "Cross-signing" and POST /keys/device_signing/upload: the self-signing and
# user-signing keys "Must be signed by the accompanying master signing key, or by the
# user's most recently uploaded master signing key"; 400 M_INVALID_SIGNATURE otherwise,
# 400 M_MISSING_PARAM when no master key is available, 403 M_FORBIDDEN when "The public
# key of one of the keys is the same as one of the user's device IDs". UIA "MUST be
# performed ... except in these cases: there is no existing master signing key uploaded
# to the homeserver, OR there is an existing master signing key and it exactly matches
# the master signing key provided in the request body" (and any other key provided
# matches too).
# POST /keys/signatures/upload: "The signed JSON object must match the key previously
# uploaded or retrieved for the given key ID, with the exception of the signatures
# property"; failures per key, M_INVALID_SIGNATURE for a bad signature.
# Which signatures are stored is bounded by who may sign what: a user's self-signing key
# signs their devices, their devices sign their master key, their user-signing key signs
# other users' master keys.

from __future__ import annotations

from typing import Any, Mapping, Optional

from twisted.logger import Logger

from fedserver.e2ee.keys import (
    CrossSigningKey,
    InvalidKeyError,
    M_INVALID_SIGNATURE,
    check_cross_signing_key,
    check_signed_by_master,
    is_signed_by,
    new_signatures,
    with_signatures,
)
from fedserver.errors import MatrixError, bad_json, forbidden
from fedserver.handlers.e2ee.devices import LocalDeviceLists, server_of
from fedserver.handlers.e2ee.e2e_keys import E2eKeysHandler, key_error
from fedserver.storage.database import Txn
from fedserver.handlers.requester import Requester

log = Logger()

#: Most signed objects in one /keys/signatures/upload.
MAX_SIGNED_OBJECTS = 1_000


class CrossSigningHandler:
    """Cross-signing keys and signatures of our users.

    :param store: the :class:`~fedserver.storage.sqlite.SQLiteStore`.
    :param local_lists: announces changes (``m.signing_key_update``,
        ``m.device_list_update`` for a newly signed device).
    :param keys: the :class:`~fedserver.handlers.e2ee.e2e_keys.E2eKeysHandler` (to fetch
        another user's master key to check a signature on it).
    :param accounts: has ``check_password_uia(requester, auth)``
        (:class:`~fedserver.handlers.client.accounts.AccountHandler`).
    """

    def __init__(self, store: Any, local_lists: LocalDeviceLists, keys: E2eKeysHandler, accounts: Any) -> None:
        self._store = store
        self._local = local_lists
        self._keys = keys
        self._accounts = accounts

    # -- /keys/device_signing/upload -------------------------------------------------------

    async def upload_signing_keys(self, requester: Requester, body: Mapping[str, Any]) -> None:
        """``POST /keys/device_signing/upload``.

        :raises InteractiveAuthRequired: when replacing keys, until the password is given.
        :raises MatrixError: 400 ``M_BAD_JSON`` / ``M_INVALID_PARAM`` /
            ``M_INVALID_SIGNATURE`` / ``M_MISSING_PARAM``, 403 ``M_FORBIDDEN``.
        """
        user_id = requester.user_id
        given: dict[str, CrossSigningKey] = {}
        try:
            for field, usage in (("master_key", "master"), ("self_signing_key", "self_signing"), ("user_signing_key", "user_signing")):
                if body.get(field) is not None:
                    given[usage] = check_cross_signing_key(body[field], user_id, usage)
        except InvalidKeyError as e:
            raise key_error(e) from None
        if not given:
            raise bad_json("No keys given")
        devices = self._store.devices
        stored = (await devices.get_cross_signing_keys([user_id])).get(user_id, {})
        master = given.get("master")
        if master is None:
            if "master" not in stored:
                raise MatrixError(400, "M_MISSING_PARAM", "No master key available")
            master = check_cross_signing_key(stored["master"], user_id, "master")
        try:
            for usage in ("self_signing", "user_signing"):
                if usage in given:
                    check_signed_by_master(given[usage], user_id, master)
        except InvalidKeyError as e:
            raise key_error(e) from None
        # Spec: UIA unless there is no master key yet, or nothing new is uploaded.
        if "master" in stored and any(stored.get(u) != k.json for u, k in given.items()):
            await self._accounts.check_password_uia(requester, body.get("auth"))

        def txn_func(txn: Txn) -> None:
            mine = devices.get_local_devices_txn(txn, {user_id: None}, with_keys_only=False).get(user_id, {})
            for key in given.values():
                if key.public_key in mine:
                    raise forbidden("Key ID in use")
            changed = {}
            for usage, key in given.items():
                if devices.set_cross_signing_key_txn(txn, user_id, usage, key.public_key, key.json):
                    changed[usage] = key
            if not changed:
                return
            # Other servers hear of the public master and self-signing keys; the
            # user-signing key is only ever shown to its owner.
            public = {}
            if "master" in changed or "self_signing" in changed:
                current = devices.get_cross_signing_keys_txn(txn, [user_id], ("master", "self_signing")).get(user_id, {})
                if "master" in current:
                    public["master_key"] = current["master"]
                if "self_signing" in current:
                    public["self_signing_key"] = current["self_signing"]
            self._local.broadcast_txn(txn, user_id, signing_keys=public or None)

        await devices.run_write(txn_func)

    # -- /keys/signatures/upload -----------------------------------------------------------

    async def upload_signatures(self, requester: Requester, body: Any) -> dict[str, Any]:
        """``POST /keys/signatures/upload``.

        :returns: ``{"failures": {user_id: {key_id: error}}}``.
        """
        if type(body) is not dict:
            raise bad_json("Body must be an object")
        if sum(len(v) for v in body.values() if isinstance(v, dict)) > MAX_SIGNED_OBJECTS:
            raise MatrixError(400, "M_INVALID_PARAM", f"At most {MAX_SIGNED_OBJECTS} signed objects")
        signer = requester.user_id
        devices = self._store.devices
        own = (await devices.get_cross_signing_keys([signer])).get(signer, {})
        failures: dict[str, dict[str, Any]] = {}
        # (kind, target user, target key id, signer key id, signature); kind is "device"
        # (the signer's device, by their self-signing key), "master" (the signer's master
        # key, by one of their devices) or "other" (another user's master key, by the
        # signer's user-signing key).
        accepted: list[tuple[str, str, str, str, str]] = []

        def fail(user_id: str, key_id: str, errcode: str, error: str) -> None:
            failures.setdefault(user_id, {})[key_id] = {"errcode": errcode, "error": error}

        for user_id, objects in body.items():
            if type(objects) is not dict:
                raise bad_json("Body values must be objects of key id to signed object")
            for key_id, signed in objects.items():
                try:
                    target = await self._target(signer, own, user_id, key_id)
                    if target is None:
                        fail(user_id, key_id, "M_NOT_FOUND", "Unknown key")
                        continue
                    kind, stored, signing_keys = target
                    sigs = new_signatures(signed, stored, signer)
                    found = []
                    for signer_key_id, sig in sigs.items():
                        public = signing_keys.get(signer_key_id)
                        if public is None:
                            continue  # a signature we do not store (e.g. the device's own)
                        if not is_signed_by(signed, signer, signer_key_id, public):
                            raise InvalidKeyError(M_INVALID_SIGNATURE, "Invalid signature")
                        found.append((kind, user_id, key_id, signer_key_id, sig))
                    if not found:
                        raise InvalidKeyError(M_INVALID_SIGNATURE, "No signature by a key allowed to sign this")
                    accepted.extend(found)
                except InvalidKeyError as e:
                    fail(user_id, key_id, e.errcode, str(e))

        if accepted:
            await devices.run_write(self._store_signatures_txn, signer, accepted)
        return {"failures": failures}

    def _store_signatures_txn(self, txn: Txn, signer: str, accepted: list[tuple[str, str, str, str, str]]) -> None:
        devices = self._store.devices
        signed_devices: list[str] = []
        master_signed = False
        others: set[str] = set()
        for kind, user_id, key_id, signer_key_id, sig in accepted:
            if not devices.add_signature_txn(txn, user_id, key_id, signer, signer_key_id, sig):
                continue
            if kind == "device":
                signed_devices.append(key_id)
            elif kind == "master":
                master_signed = True
            else:
                others.add(user_id)
        if signed_devices or master_signed:
            public = None
            if master_signed:
                # Other servers get the master key with its new signatures.
                current = devices.get_cross_signing_keys_txn(txn, [signer], ("master", "self_signing")).get(signer, {})
                public = {}
                if "master" in current:
                    master = current["master"]
                    pub = next(iter(master.get("keys", {}).values()), None)
                    extra = devices.get_signatures_txn(txn, [signer], signers=[signer]).get((signer, pub), [])
                    public["master_key"] = with_signatures(master, extra)
                if "self_signing" in current:
                    public["self_signing_key"] = current["self_signing"]
            self._local.broadcast_txn(txn, signer, sorted(set(signed_devices)), signing_keys=public or None)
        if others:
            # Another user's master key signed with our user's user-signing key: only our
            # user sees the signature; their clients must query that user again.
            devices.record_change_txn(txn, others)

    async def _target(
        self, signer: str, own: Mapping[str, Any], user_id: str, key_id: str
    ) -> Optional[tuple[str, dict[str, Any], dict[str, str]]]:
        """What ``key_id`` of ``user_id`` names: its kind (see :meth:`upload_signatures`),
        the stored object, and the keys of ``signer`` allowed to sign it
        (``{"ed25519:<id>": public key}``); ``None`` if unknown."""
        if type(key_id) is not str or not key_id or len(key_id) > 255:
            raise InvalidKeyError("M_INVALID_PARAM", "Invalid key id")
        devices = self._store.devices
        if user_id == signer:
            device = await devices.get_device_keys(signer, key_id)
            if device is not None:
                # One of the signer's devices: signed by their self-signing key.
                ssk = own.get("self_signing")
                if ssk is None:
                    raise InvalidKeyError(M_INVALID_SIGNATURE, "No self-signing key uploaded")
                pub = next(iter(ssk["keys"].values()))
                return "device", device, {f"ed25519:{pub}": pub}
            master = own.get("master")
            if master is not None and next(iter(master["keys"].values())) == key_id:
                # Their own master key: signed by one of their devices.
                mine = await devices.get_local_devices({signer: None})
                allowed = {}
                for device_id, dev in mine.get(signer, {}).items():
                    ed = (dev.keys or {}).get("keys", {}).get(f"ed25519:{device_id}")
                    if ed:
                        allowed[f"ed25519:{device_id}"] = ed
                return "master", master, allowed
            return None
        # Another user's master key: signed by the signer's user-signing key.
        usk = own.get("user_signing")
        if usk is None:
            raise InvalidKeyError(M_INVALID_SIGNATURE, "No user-signing key uploaded")
        if server_of(user_id) == self._local.server_name:
            master = (await devices.get_cross_signing_keys([user_id], ("master",))).get(user_id, {}).get("master")
        else:
            # Asked on the signer's behalf (no token of theirs is involved: access_token_id 0).
            answer = await self._keys.query(Requester(signer, None, 0), {"device_keys": {user_id: []}})
            master = answer.get("master_keys", {}).get(user_id)
        if master is None or next(iter(master.get("keys", {}).values()), None) != key_id:
            return None
        pub = next(iter(usk["keys"].values()))
        return "other", master, {f"ed25519:{pub}": pub}


__all__ = ["CrossSigningHandler"]
