"""Checks of end-to-end encryption key objects and their signatures (pure: plain data in, plain data or errors out)."""

# Client-Server API "End-to-End Encryption":
# - "Uploading keys": the device keys object "must include the public part of the
#   device's Ed25519 key, and must be signed by that key" (appendix "Signing JSON").
# - "One-time and fallback keys": ``signed_curve25519`` keys are "signed by the device's
#   Ed25519 key"; a fallback key carries ``fallback: true``.
# - "Cross-signing": a cross-signing key's ``keys`` "must have exactly one property"
#   ``ed25519:<unpadded base64 public key>``; the self-signing and user-signing keys "must
#   be signed by the accompanying master signing key, or by the user's most recently
#   uploaded master signing key" (POST /keys/device_signing/upload), else 400
#   ``M_INVALID_SIGNATURE``.
# - POST /keys/signatures/upload: "The signed JSON object must match the key previously
#   uploaded or retrieved for the given key ID, with the exception of the signatures
#   property".
# Everything else a client sends is opaque to the server and stored as given.

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from signedjson.key import decode_verify_key_bytes

from fedserver.events.canonical import CanonicalJSONError, check_canonical_values
from fedserver.events.signing import verify_json

M_BAD_JSON = "M_BAD_JSON"
M_INVALID_PARAM = "M_INVALID_PARAM"
M_INVALID_SIGNATURE = "M_INVALID_SIGNATURE"

#: Longest device id, key id, algorithm or user id we accept (bytes).
MAX_ID_BYTES = 255
#: Most algorithms / keys / signatures entries in one key object.
MAX_ENTRIES = 100
#: Longest key or signature string.
MAX_VALUE_BYTES = 1024
#: Cross-signing key usages (spec "CrossSigningKey").
USAGES = ("master", "self_signing", "user_signing")


class InvalidKeyError(ValueError):
    """A key object the server must refuse (answered 400 with :attr:`errcode`).

    :ivar errcode: ``M_BAD_JSON`` (wrong shape), ``M_INVALID_PARAM`` (a value that does
        not fit, e.g. another user's id) or ``M_INVALID_SIGNATURE``.
    """

    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(message)
        self.errcode = errcode


def _bad(message: str) -> InvalidKeyError:
    return InvalidKeyError(M_BAD_JSON, message)


def _param(message: str) -> InvalidKeyError:
    return InvalidKeyError(M_INVALID_PARAM, message)


def _short_str(value: Any, what: str, limit: int = MAX_ID_BYTES) -> str:
    if type(value) is not str or not value:
        raise _bad(f"{what} must be a non-empty string")
    if len(value.encode("utf-8", "surrogatepass")) > limit or "\x00" in value:
        raise _param(f"{what} is too long or holds NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _param(f"{what} is not valid UTF-8") from None
    return value


def decode_key(value: Any, what: str = "key") -> bytes:
    """The 32 bytes of an unpadded standard base64 public key (ed25519 or curve25519).

    :raises InvalidKeyError: ``M_INVALID_PARAM`` if it is not one.
    """
    if type(value) is not str or len(value) != 43 or not value.isascii():
        raise _param(f"{what} is not an unpadded base64 32-byte key")
    try:
        raw = base64.b64decode(value + "=", validate=True)
    except (binascii.Error, ValueError):
        raise _param(f"{what} is not an unpadded base64 32-byte key") from None
    if len(raw) != 32:
        raise _param(f"{what} is not an unpadded base64 32-byte key")
    return raw


def _check_json(obj: Any, what: str) -> None:
    try:
        check_canonical_values(obj)
    except CanonicalJSONError as e:
        raise _bad(f"{what}: {e}") from None


def _check_signatures_shape(sigs: Any, what: str) -> dict[str, dict[str, str]]:
    if type(sigs) is not dict:
        raise _bad(f"{what}.signatures must be an object")
    if len(sigs) > MAX_ENTRIES:
        raise _param(f"{what}.signatures has too many entries")
    for user, by_key in sigs.items():
        _short_str(user, f"{what}.signatures user")
        if type(by_key) is not dict or len(by_key) > MAX_ENTRIES:
            raise _bad(f"{what}.signatures[{user[:50]!r}] must be an object of key id to signature")
        for key_id, sig in by_key.items():
            _short_str(key_id, f"{what}.signatures key id")
            _short_str(sig, f"{what}.signatures value", MAX_VALUE_BYTES)
    return sigs


def is_signed_by(obj: Mapping[str, Any], user_id: str, key_id: str, public_key: str) -> bool:
    """Whether ``obj`` carries a valid signature of ``user_id`` under ``key_id``
    (``ed25519:<id>``) by the ed25519 ``public_key`` (unpadded base64). Never raises."""
    if not key_id.startswith("ed25519:"):
        return False
    try:
        raw = decode_key(public_key)
    except InvalidKeyError:
        return False
    verify_key = decode_verify_key_bytes(key_id, raw)
    return verify_json(dict(obj), user_id, verify_key)


# -- device keys --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceKeys:
    """Checked device keys.

    :ivar json: the object as uploaded (to store and serve).
    :ivar ed25519: the device's Ed25519 public key (unpadded base64).
    """

    json: dict[str, Any]
    ed25519: str


def check_device_keys(obj: Any, user_id: str, device_id: str) -> DeviceKeys:
    """Check a ``device_keys`` object uploaded by ``device_id`` of ``user_id`` (spec
    "DeviceKeys" and "Uploading keys"): the fields' shapes, ``user_id`` / ``device_id``
    those of the uploader, an ``ed25519:<device_id>`` key, and the object signed by
    that key.

    :raises InvalidKeyError: ``M_BAD_JSON`` for a wrong shape, ``M_INVALID_PARAM`` for
        another user's or device's keys, ``M_INVALID_SIGNATURE`` when the device's own
        signature is missing or wrong (e.g. signed by another device).
    """
    if type(obj) is not dict:
        raise _bad("device_keys must be an object")
    _check_json(obj, "device_keys")
    if obj.get("user_id") != user_id:
        raise _param("device_keys.user_id must be the uploader's user id")
    if obj.get("device_id") != device_id:
        raise _param("device_keys.device_id must be the uploader's device id")
    algorithms = obj.get("algorithms")
    if type(algorithms) is not list or len(algorithms) > MAX_ENTRIES:
        raise _bad("device_keys.algorithms must be a list of strings")
    for alg in algorithms:
        _short_str(alg, "device_keys.algorithms entry")
    keys = obj.get("keys")
    if type(keys) is not dict or not keys or len(keys) > MAX_ENTRIES:
        raise _bad("device_keys.keys must be an object of key id to key")
    for key_id, value in keys.items():
        _short_str(key_id, "device_keys.keys id")
        _short_str(value, "device_keys.keys value", MAX_VALUE_BYTES)
        alg, sep, _ = key_id.partition(":")
        if not sep or not alg:
            raise _bad(f"device_keys.keys id {key_id[:60]!r} is not <algorithm>:<device id>")
        if alg in ("ed25519", "curve25519"):
            decode_key(value, f"device_keys.keys[{key_id[:60]!r}]")
    own_key_id = f"ed25519:{device_id}"
    ed25519 = keys.get(own_key_id)
    if ed25519 is None:
        raise _param(f"device_keys.keys must hold {own_key_id}")
    _check_signatures_shape(obj.get("signatures"), "device_keys")
    if not is_signed_by(obj, user_id, own_key_id, ed25519):
        raise InvalidKeyError(M_INVALID_SIGNATURE, f"device_keys are not signed by {own_key_id}")
    unsigned = obj.get("unsigned")
    if unsigned is not None and type(unsigned) is not dict:
        raise _bad("device_keys.unsigned must be an object")
    return DeviceKeys(obj, ed25519)


# -- one-time and fallback keys -----------------------------------------------------------


@dataclass(frozen=True)
class OneTimeKey:
    """One checked one-time or fallback key: ``<algorithm>:<key_id>`` -> ``json``."""

    algorithm: str
    key_id: str
    json: Any


def check_one_time_keys(
    keys: Any, user_id: str, device_id: str, ed25519: Optional[str], *, fallback: bool = False, limit: int = 1000
) -> list[OneTimeKey]:
    """Check the ``one_time_keys`` (or, with ``fallback``, ``fallback_keys``) of an upload.

    Names are ``<algorithm>:<key_id>``. A key is a string (an unsigned key) or a
    ``KeyObject`` (``key``, ``signatures``, optional ``fallback``); a ``KeyObject`` must
    be signed by the device's Ed25519 key ``ed25519`` (spec "One-time and fallback keys").
    Fallback keys hold at most one key per algorithm.

    :param ed25519: the device's Ed25519 key (from this upload or stored); ``None`` if the
        device has none yet, in which case signed keys cannot be checked and are refused.
    :param limit: most keys in one upload.
    :raises InvalidKeyError: as :func:`check_device_keys`.
    """
    what = "fallback_keys" if fallback else "one_time_keys"
    if type(keys) is not dict:
        raise _bad(f"{what} must be an object")
    if len(keys) > limit:
        raise _param(f"{what} holds more than {limit} keys")
    out: list[OneTimeKey] = []
    algorithms: set[str] = set()
    for name, value in keys.items():
        _short_str(name, f"{what} key name")
        algorithm, sep, key_id = name.partition(":")
        if not sep or not algorithm or not key_id:
            raise _bad(f"{what} name {name[:60]!r} is not <algorithm>:<key id>")
        if fallback and algorithm in algorithms:
            raise _param(f"{what} may hold one key per algorithm")
        algorithms.add(algorithm)
        if type(value) is str:
            _short_str(value, f"{what}[{name[:60]!r}]", MAX_VALUE_BYTES)
        elif type(value) is dict:
            _check_json(value, f"{what}[{name[:60]!r}]")
            _short_str(value.get("key"), f"{what}[{name[:60]!r}].key", MAX_VALUE_BYTES)
            if "curve25519" in algorithm:
                decode_key(value["key"], f"{what}[{name[:60]!r}].key")
            flag = value.get("fallback", False)
            if type(flag) is not bool:
                raise _bad(f"{what}[{name[:60]!r}].fallback must be a boolean")
            _check_signatures_shape(value.get("signatures"), f"{what}[{name[:60]!r}]")
            own = f"ed25519:{device_id}"
            if ed25519 is None:
                raise _param(f"{what}: upload the device keys before signed keys")
            if not is_signed_by(value, user_id, own, ed25519):
                raise InvalidKeyError(M_INVALID_SIGNATURE, f"{what}[{name[:60]!r}] is not signed by {own}")
        else:
            raise _bad(f"{what}[{name[:60]!r}] must be a string or a key object")
        out.append(OneTimeKey(algorithm, key_id, value))
    return out


# -- cross-signing keys -------------------------------------------------------------------


@dataclass(frozen=True)
class CrossSigningKey:
    """A checked cross-signing key.

    :ivar usage: ``master``, ``self_signing`` or ``user_signing``.
    :ivar public_key: its ed25519 public key (unpadded base64).
    :ivar json: the object as uploaded.
    """

    usage: str
    public_key: str
    json: dict[str, Any]

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.public_key}"


def check_cross_signing_key(obj: Any, user_id: str, usage: str) -> CrossSigningKey:
    """Check the shape of a ``CrossSigningKey`` of ``user_id`` meant for ``usage``.

    :raises InvalidKeyError: ``M_BAD_JSON`` / ``M_INVALID_PARAM``.
    """
    what = f"{usage}_key" if usage != "master" else "master_key"
    if type(obj) is not dict:
        raise _bad(f"{what} must be an object")
    _check_json(obj, what)
    if obj.get("user_id") != user_id:
        raise _param(f"{what}.user_id must be {user_id}")
    usages = obj.get("usage")
    if type(usages) is not list or not usages or len(usages) > len(USAGES) or any(type(u) is not str for u in usages):
        raise _bad(f"{what}.usage must be a list of strings")
    if usage not in usages:
        raise _param(f"{what}.usage must include {usage!r}")
    keys = obj.get("keys")
    if type(keys) is not dict or len(keys) != 1:
        raise _bad(f"{what}.keys must hold exactly one key")
    (key_id, value), = keys.items()
    if type(key_id) is not str or not key_id.startswith("ed25519:") or key_id[len("ed25519:"):] != value:
        raise _param(f"{what}.keys must be {{\"ed25519:<public key>\": \"<public key>\"}}")
    decode_key(value, f"{what} public key")
    if "signatures" in obj:
        _check_signatures_shape(obj["signatures"], what)
    return CrossSigningKey(usage, value, obj)


def check_signed_by_master(key: CrossSigningKey, user_id: str, master: CrossSigningKey) -> None:
    """A self-signing or user-signing key must carry the master key's signature.

    :raises InvalidKeyError: ``M_INVALID_SIGNATURE``.
    """
    if not is_signed_by(key.json, user_id, master.key_id, master.public_key):
        raise InvalidKeyError(M_INVALID_SIGNATURE, f"the {key.usage} key is not signed by the master key")


# -- uploaded signatures ------------------------------------------------------------------


def without_signatures(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` without ``signatures`` and ``unsigned`` (what a signature covers)."""
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def new_signatures(
    uploaded: Any, stored: Mapping[str, Any], signer: str
) -> dict[str, str]:
    """The signatures of ``signer`` that an upload to ``POST /keys/signatures/upload``
    adds to a stored key object: the uploaded object must be the stored one apart from
    ``signatures`` (and ``unsigned``).

    :returns: ``{signer key id: signature}`` (unchecked: verify each with
        :func:`is_signed_by` against the signer's key).
    :raises InvalidKeyError: ``M_INVALID_PARAM`` if the object differs from the stored
        key, ``M_BAD_JSON`` for a wrong shape or no signature of ``signer``.
    """
    if type(uploaded) is not dict:
        raise _bad("a signed key must be an object")
    if without_signatures(uploaded) != without_signatures(stored):
        raise _param("the signed object does not match the stored key")
    sigs = _check_signatures_shape(uploaded.get("signatures"), "signed key")
    mine = sigs.get(signer)
    if not mine:
        raise _bad(f"no signature of {signer}")
    return dict(mine)


def with_signatures(obj: Mapping[str, Any], extra: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
    """A copy of ``obj`` with ``(signer user, signer key id, signature)`` entries merged
    into its ``signatures``."""
    out = dict(obj)
    sigs = {u: dict(v) for u, v in (obj.get("signatures") or {}).items() if type(v) is dict}
    for user, key_id, sig in extra:
        sigs.setdefault(user, {})[key_id] = sig
    if sigs:
        out["signatures"] = sigs
    return out


__all__ = [
    "CrossSigningKey",
    "DeviceKeys",
    "InvalidKeyError",
    "M_INVALID_SIGNATURE",
    "OneTimeKey",
    "USAGES",
    "check_cross_signing_key",
    "check_device_keys",
    "check_one_time_keys",
    "check_signed_by_master",
    "decode_key",
    "is_signed_by",
    "new_signatures",
    "with_signatures",
    "without_signatures",
]
