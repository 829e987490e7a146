"""Tests for the pure key checks (fedserver.e2ee.keys) on plain data."""

from __future__ import annotations

import copy

from twisted.trial.unittest import SynchronousTestCase

from fedserver.e2ee.keys import (
    InvalidKeyError,
    check_cross_signing_key,
    check_device_keys,
    check_one_time_keys,
    check_signed_by_master,
    is_signed_by,
    new_signatures,
    with_signatures,
)
from tests.e2ee_support import CrossSigning, Device, curve_key

ALICE = "@alice:here.test"


class DeviceKeysTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dev = Device(ALICE, "DEV1")

    def assertRefused(self, errcode: str, func, *args, **kw) -> None:
        with self.assertRaises(InvalidKeyError) as cm:
            func(*args, **kw)
        self.assertEqual(cm.exception.errcode, errcode, str(cm.exception))

    def test_valid_device_keys(self) -> None:
        """Device keys signed by the device itself pass, and the device's ed25519 key
        comes back."""
        checked = check_device_keys(self.dev.device_keys(), ALICE, "DEV1")
        self.assertEqual(checked.ed25519, self.dev.ed25519)

    def test_signed_by_another_device(self) -> None:
        """HOSTILE row 34: keys naming DEV1's ed25519 key but signed by another device's
        key are refused with M_INVALID_SIGNATURE."""
        other = Device(ALICE, "DEV1")  # same id, another key
        keys = self.dev.device_keys()
        forged = other.device_keys()
        forged["keys"] = keys["keys"]
        self.assertRefused("M_INVALID_SIGNATURE", check_device_keys, forged, ALICE, "DEV1")

    def test_tampered_after_signing(self) -> None:
        """A field changed after signing breaks the signature."""
        keys = self.dev.device_keys()
        keys["algorithms"] = ["m.olm.v1.curve25519-aes-sha2"]
        self.assertRefused("M_INVALID_SIGNATURE", check_device_keys, keys, ALICE, "DEV1")

    def test_unsigned_is_not_covered(self) -> None:
        """``unsigned`` may be added after signing (spec: not covered by signatures)."""
        keys = self.dev.device_keys()
        keys["unsigned"] = {"device_display_name": "phone"}
        check_device_keys(keys, ALICE, "DEV1")

    def test_other_user_or_device(self) -> None:
        """Keys naming another user or device than the uploader's are M_INVALID_PARAM."""
        self.assertRefused("M_INVALID_PARAM", check_device_keys, self.dev.device_keys(), "@bob:here.test", "DEV1")
        self.assertRefused("M_INVALID_PARAM", check_device_keys, self.dev.device_keys(), ALICE, "DEV2")

    def test_malformed(self) -> None:
        """Malformed objects are refused, each with a 400 errcode: not an object, no
        algorithms, keys that are not strings, no ed25519 key, a short key, floats."""
        good = self.dev.device_keys()
        cases = []
        cases.append(("M_BAD_JSON", []))
        for mutate, errcode in (
            (lambda k: k.pop("algorithms"), "M_BAD_JSON"),
            (lambda k: k.update(algorithms="x"), "M_BAD_JSON"),
            (lambda k: k.update(keys={"ed25519:DEV1": 5}), "M_BAD_JSON"),
            (lambda k: k.update(keys={"curve25519:DEV1": curve_key()}), "M_INVALID_PARAM"),
            (lambda k: k["keys"].update({"ed25519:DEV1": "short"}), "M_INVALID_PARAM"),
            (lambda k: k.update(extra=1.5), "M_BAD_JSON"),
            (lambda k: k.update(signatures="x"), "M_BAD_JSON"),
            (lambda k: k.pop("signatures"), "M_BAD_JSON"),
            (lambda k: k["keys"].update({"nocolon": "x"}), "M_BAD_JSON"),
        ):
            keys = copy.deepcopy(good)
            mutate(keys)
            cases.append((errcode, keys))
        for errcode, keys in cases:
            self.assertRefused(errcode, check_device_keys, keys, ALICE, "DEV1")


class OneTimeKeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dev = Device(ALICE, "DEV1")

    def test_signed_keys(self) -> None:
        """Signed one-time keys verify against the device's ed25519 key."""
        keys = check_one_time_keys(self.dev.one_time_keys(3), ALICE, "DEV1", self.dev.ed25519)
        self.assertEqual([k.algorithm for k in keys], ["signed_curve25519"] * 3)
        self.assertEqual(len({k.key_id for k in keys}), 3)

    def test_signed_by_another_device(self) -> None:
        """HOSTILE row 34: a one-time key signed by another device is refused."""
        other = Device(ALICE, "DEV1")
        with self.assertRaises(InvalidKeyError) as cm:
            check_one_time_keys(other.one_time_keys(1), ALICE, "DEV1", self.dev.ed25519)
        self.assertEqual(cm.exception.errcode, "M_INVALID_SIGNATURE")

    def test_signed_keys_need_a_device_key(self) -> None:
        """Signed keys cannot be checked before the device has identity keys: refused."""
        with self.assertRaises(InvalidKeyError):
            check_one_time_keys(self.dev.one_time_keys(1), ALICE, "DEV1", None)

    def test_unsigned_and_malformed(self) -> None:
        """An unsigned curve25519 string key is accepted; bad names and values are not."""
        keys = check_one_time_keys({"curve25519:AAAB": curve_key()}, ALICE, "DEV1", None)
        self.assertEqual(keys[0].key_id, "AAAB")
        for bad in ({"nocolon": curve_key()}, {"curve25519:": curve_key()}, {"curve25519:A": 5}, {"signed_curve25519:A": {"key": "x"}}, []):
            with self.assertRaises(InvalidKeyError):
                check_one_time_keys(bad, ALICE, "DEV1", self.dev.ed25519)

    def test_fallback_one_per_algorithm(self) -> None:
        """Fallback keys hold at most one key per algorithm."""
        two = self.dev.one_time_keys(2, fallback=True)
        with self.assertRaises(InvalidKeyError):
            check_one_time_keys(two, ALICE, "DEV1", self.dev.ed25519, fallback=True)
        one = self.dev.one_time_keys(1, fallback=True)
        self.assertEqual(len(check_one_time_keys(one, ALICE, "DEV1", self.dev.ed25519, fallback=True)), 1)

    def test_limit(self) -> None:
        """More keys than the limit in one upload are refused."""
        with self.assertRaises(InvalidKeyError):
            check_one_time_keys({f"curve25519:K{i}": curve_key() for i in range(11)}, ALICE, "DEV1", None, limit=10)


class CrossSigningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cs = CrossSigning(ALICE)

    def test_keys_and_master_signatures(self) -> None:
        """The self-signing key signed by the master key passes; signed by the
        user-signing key it is M_INVALID_SIGNATURE."""
        master = check_cross_signing_key(self.cs.key_json("master"), ALICE, "master")
        ssk = check_cross_signing_key(self.cs.key_json("self_signing"), ALICE, "self_signing")
        check_signed_by_master(ssk, ALICE, master)
        bad = check_cross_signing_key(self.cs.key_json("self_signing", signed_by="user_signing"), ALICE, "self_signing")
        with self.assertRaises(InvalidKeyError) as cm:
            check_signed_by_master(bad, ALICE, master)
        self.assertEqual(cm.exception.errcode, "M_INVALID_SIGNATURE")

    def test_malformed(self) -> None:
        """Wrong user, usage, two keys, a key id not matching its value: refused."""
        good = self.cs.key_json("master")
        for mutate in (
            lambda k: k.update(user_id="@bob:here.test"),
            lambda k: k.update(usage=["self_signing"]),
            lambda k: k.update(usage="master"),
            lambda k: k["keys"].update({"ed25519:" + curve_key(): "x"}),
            lambda k: k.update(keys={"ed25519:abc": "abc"}),
            lambda k: k.update(keys={"curve25519:" + self.cs.public("master"): self.cs.public("master")}),
        ):
            key = copy.deepcopy(good)
            mutate(key)
            with self.assertRaises(InvalidKeyError):
                check_cross_signing_key(key, ALICE, "master")


class SignatureUploadTests(SynchronousTestCase):
    def test_new_signatures_must_match_the_stored_key(self) -> None:
        """A signed copy of a stored key yields the signer's signatures, which verify;
        a copy with another field changed is refused."""
        dev = Device(ALICE, "DEV1")
        cs = CrossSigning(ALICE)
        stored = dev.device_keys()
        signed = cs.sign(copy.deepcopy(stored), "self_signing")
        sigs = new_signatures(signed, stored, ALICE)
        key_id = "ed25519:" + cs.public("self_signing")
        self.assertIn(key_id, sigs)
        self.assertTrue(is_signed_by(signed, ALICE, key_id, cs.public("self_signing")))
        merged = with_signatures(stored, [(ALICE, key_id, sigs[key_id])])
        self.assertTrue(is_signed_by(merged, ALICE, key_id, cs.public("self_signing")))
        changed = copy.deepcopy(signed)
        changed["algorithms"] = []
        with self.assertRaises(InvalidKeyError):
            new_signatures(changed, stored, ALICE)

    def test_is_signed_by_never_raises(self) -> None:
        """Garbage in gives False, not an exception."""
        self.assertFalse(is_signed_by({"signatures": {ALICE: {"ed25519:X": "!!"}}}, ALICE, "ed25519:X", "short"))
        self.assertFalse(is_signed_by({}, ALICE, "curve25519:X", curve_key()))
