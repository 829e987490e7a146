"""AccountStore on real SQLite files: users, tokens and their cache, devices, profiles, account data, filters."""

from __future__ import annotations


from fedserver.storage import InvalidDataError
from fedserver.storage.users.accounts_store import TokenInfo, UnknownUserError, UserExistsError
from fedserver.testing import connect_test_database
from tests.test_storage_support import StoreTestCase

A = "@alice:s.example"
B = "@bob:s.example"


def tables(path: str) -> dict[str, int]:
    conn = connect_test_database(path)
    try:
        return {
            t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("users", "profiles", "devices", "access_tokens", "account_data", "user_filters")
        }
    finally:
        conn.close()


class UserTests(StoreTestCase):
    """Creating and reading users."""

    async def test_create_and_get(self):
        """create_user stores the row, the profile, the device and the token in one go."""
        path = self.db_path()
        store = await self.open(path)
        token_id = await store.accounts.create_user(
            A, "$scrypt$x", admin=True, displayname="Alice", device_id="D1", device_display_name="Phone", token_hash="h1", ip="10.0.0.1"
        )
        user = await store.accounts.get_user(A)
        self.assertEqual((user.user_id, user.password_hash, user.admin, user.deactivated, user.is_guest), (A, "$scrypt$x", True, False, False))
        self.assertEqual(await store.accounts.get_token("h1"), TokenInfo(A, "D1", token_id, False))
        self.assertEqual(await store.accounts.get_profile(A), {"displayname": "Alice", "avatar_url": None})
        (device,) = await store.accounts.get_devices(A)
        self.assertEqual((device.device_id, device.display_name, device.last_seen_ip), ("D1", "Phone", "10.0.0.1"))
        self.assertEqual(await store.accounts.count_users(), 1)

    async def test_duplicate_user_writes_nothing(self):
        """A second create_user for the same id fails with UserExistsError and leaves no
        device, token or profile change behind."""
        path = self.db_path()
        store = await self.open(path)
        await store.accounts.create_user(A, None, displayname="first")
        before = tables(path)
        with self.assertRaises(UserExistsError):
            await store.accounts.create_user(A, "x", displayname="second", device_id="D", token_hash="h")
        self.assertEqual(tables(path), before)
        self.assertIsNone(await store.accounts.get_token("h"))
        self.assertEqual((await store.accounts.get_profile(A))["displayname"], "first")

    async def test_unstorable_and_missing(self):
        """Lookups of unknown or unstorable ids find nothing; writing one is InvalidDataError."""
        store = await self.open()
        self.assertIsNone(await store.accounts.get_user("@\ud800:x"))
        self.assertIsNone(await store.accounts.get_user(B))
        self.assertIsNone(await store.accounts.get_profile(B))
        self.assertIsNone(await store.accounts.get_token("nope"))
        with self.assertRaises(InvalidDataError):
            await store.accounts.create_user("@\ud800:x", None)
        with self.assertRaises(UnknownUserError):
            await store.accounts.set_profile_field(B, "displayname", "x")
        with self.assertRaises(InvalidDataError):
            await store.accounts.set_profile_field(A, "password_hash", "x")
        with self.assertRaises(UnknownUserError):
            await store.accounts.set_admin(B, True)

    async def test_survives_reopen(self):
        """Users and tokens persist across closing and reopening the database."""
        path = self.db_path()
        store = await self.open(path)
        tid = await store.accounts.create_user(A, "hash", device_id="D", token_hash="h")
        store.close()
        store = await self.open(path)
        self.assertEqual(await store.accounts.get_token("h"), TokenInfo(A, "D", tid, False))
        self.assertEqual((await store.accounts.get_user(A)).password_hash, "hash")


class TokenTests(StoreTestCase):
    """Tokens, devices and the in-memory token cache."""

    async def test_cache_invalidated_on_logout(self):
        """A cached token stops resolving as soon as its device is deleted."""
        store = await self.open()
        await store.accounts.create_user(A, None)
        tid = await store.accounts.add_access_token(A, "D1", "h1")
        self.assertIsNotNone(await store.accounts.get_token("h1"))
        self.assertIn("h1", store.accounts._token_cache)
        await store.accounts.delete_device(A, "D1", tid)
        self.assertIsNone(await store.accounts.get_token("h1"))
        self.assertEqual(await store.accounts.get_devices(A), [])

    async def test_new_token_for_device_replaces_old(self):
        """add_access_token on an existing device revokes the device's older token."""
        store = await self.open()
        await store.accounts.create_user(A, None)
        await store.accounts.add_access_token(A, "D1", "old", "Name")
        await store.accounts.get_token("old")
        await store.accounts.add_access_token(A, "D1", "new", "Ignored")
        self.assertIsNone(await store.accounts.get_token("old"))
        self.assertIsNotNone(await store.accounts.get_token("new"))
        (device,) = await store.accounts.get_devices(A)
        self.assertEqual(device.display_name, "Name")

    async def test_delete_all_except(self):
        """delete_all_tokens keeps only the excepted token and its device, and touches no
        other user."""
        store = await self.open()
        await store.accounts.create_user(A, None)
        await store.accounts.create_user(B, None, device_id="B1", token_hash="hb")
        keep = await store.accounts.add_access_token(A, "D1", "h1")
        await store.accounts.add_access_token(A, "D2", "h2")
        await store.accounts.add_access_token(A, "D3", "h3")
        self.assertEqual(await store.accounts.delete_all_tokens(A, except_token_id=keep), 2)
        self.assertEqual([d.device_id for d in await store.accounts.get_devices(A)], ["D1"])
        self.assertIsNotNone(await store.accounts.get_token("h1"))
        self.assertIsNone(await store.accounts.get_token("h2"))
        self.assertIsNotNone(await store.accounts.get_token("hb"))
        self.assertEqual(await store.accounts.delete_all_tokens(A), 1)
        self.assertEqual(await store.accounts.get_devices(A), [])

    async def test_password_change_and_deactivation(self):
        """set_password_hash with logout_devices keeps only the current token;
        set_deactivated drops every token and hides the user's tokens."""
        store = await self.open()
        await store.accounts.create_user(A, "old")
        keep = await store.accounts.add_access_token(A, "D1", "h1")
        await store.accounts.add_access_token(A, "D2", "h2")
        await store.accounts.set_password_hash(A, "new", keep_token_id=keep, logout_devices=True)
        self.assertEqual((await store.accounts.get_user(A)).password_hash, "new")
        self.assertIsNone(await store.accounts.get_token("h2"))
        self.assertIsNotNone(await store.accounts.get_token("h1"))
        await store.accounts.set_deactivated(A)
        self.assertTrue((await store.accounts.get_user(A)).deactivated)
        self.assertIsNone(await store.accounts.get_token("h1"))
        with self.assertRaises(UnknownUserError):
            await store.accounts.set_password_hash(B, "x")


class DataTests(StoreTestCase):
    """Account data and filters."""

    async def test_account_data_stream(self):
        """Each write gets a higher stream id; since-queries return only newer writes and
        the latest position even when nothing changed for the user."""
        store = await self.open()
        self.assertEqual(await store.accounts.get_max_account_data_stream_id(), 0)
        s1 = await store.accounts.set_account_data(A, None, "t1", {"v": 1})
        s2 = await store.accounts.set_account_data(A, "!r:x", "t1", {"v": 2})
        s3 = await store.accounts.set_account_data(B, None, "t1", {"v": 3})
        self.assertEqual((s1, s2, s3), (1, 2, 3))
        changes = await store.accounts.get_account_data_since(A, s1)
        self.assertEqual((changes.global_data, changes.rooms, changes.stream_id), ({}, {"!r:x": {"t1": {"v": 2}}}, 3))
        self.assertEqual(await store.accounts.get_account_data(A, "!r:x", "t1"), {"v": 2})
        self.assertIsNone(await store.accounts.get_account_data(A, "!other:x", "t1"))
        with self.assertRaises(InvalidDataError):
            await store.accounts.set_account_data(A, None, "t", [1])
        with self.assertRaises(InvalidDataError):
            await store.accounts.set_account_data(A, None, "t", {"x": float("nan")})

    async def test_filters(self):
        """Filter ids count per user from 0; identical filters share an id."""
        store = await self.open()
        self.assertEqual(await store.accounts.add_filter(A, {"a": 1}), 0)
        self.assertEqual(await store.accounts.add_filter(A, {"b": 1}), 1)
        self.assertEqual(await store.accounts.add_filter(A, {"a": 1}), 0)
        self.assertEqual(await store.accounts.add_filter(B, {"b": 1}), 0)
        self.assertEqual(await store.accounts.get_filter(A, 1), {"b": 1})
        self.assertIsNone(await store.accounts.get_filter(A, 7))
        self.assertIsNone(await store.accounts.get_filter(B, 1))
