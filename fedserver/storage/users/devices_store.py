"""Storage for end-to-end encryption keys and device lists: device, one-time, fallback and cross-signing keys, signatures, the device-list stream, other servers' device lists, and who shares a room with whom."""

# Writes come in ``_txn`` form so that a handler can commit a change, the device-list
# stream row it causes and the EDUs that tell other servers (``enqueue_outbound_txn``) in
# one transaction (DESIGN "Durability": device list updates persist until delivered).
# Reads are Deferreds, each one read transaction.

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred

from fedserver.storage.database import Database, Txn, check_int, check_text, encode_stored_json, lookup_ids, lookup_text

#: The sequences this store allocates from.
DEVICE_LIST_SEQUENCE = "device_list"
DEVICE_LIST_UPDATE_SEQUENCE = "device_list_update"
ONE_TIME_KEY_SEQUENCE = "e2e_one_time_keys"


def encode_json(value: Any) -> bytes:
    """Canonical-ish JSON bytes for storage (sorted keys, compact, UTF-8)."""
    return encode_stored_json(value)


def decode_json(data: Any) -> Any:
    return json.loads(bytes(data).decode("utf-8"))


@dataclass(frozen=True, slots=True)
class LocalDevice:
    """One of our users' devices with its uploaded keys (``None`` before any upload)."""

    user_id: str
    device_id: str
    display_name: Optional[str]
    keys: Optional[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RemoteDevice:
    """A cached device of another server's user."""

    user_id: str
    device_id: str
    display_name: Optional[str]
    keys: Optional[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RemoteListState:
    """What we know of another server's user's device list.

    :ivar stream_id: the last update applied (``None``: unknown).
    :ivar stale: the cache must be resynced before it is trusted.
    """

    user_id: str
    stream_id: Optional[int]
    stale: bool


@dataclass(frozen=True, slots=True)
class MemberChange:
    """A membership event in a room, for the device-list changes of /sync."""

    room_id: str
    user_id: str
    membership: str
    event_nid: int


class DevicesStore:
    """SQL for keys and device lists (schema 009).

    :param db: the database.
    :param clock_ms: the current time in milliseconds.
    """

    def __init__(self, db: Database, clock_ms: Callable[[], int]) -> None:
        self._db = db
        self._clock_ms = clock_ms

    def run_write(self, func: Callable[..., Any], *args: Any) -> Deferred:
        """Run ``func(txn, *args)`` in one write transaction."""
        return self._db.run_write(func, *args)

    def run_read(self, func: Callable[..., Any], *args: Any) -> Deferred:
        """Run ``func(txn, *args)`` in one read transaction."""
        return self._db.run_read(func, *args)

    # -- our devices and their keys ----------------------------------------------------

    def device_exists_txn(self, txn: Txn, user_id: str, device_id: str) -> bool:
        """Whether our user has this device (a logged-in device, from the accounts tables)."""
        if not (lookup_text(user_id, "user_id") and lookup_text(device_id, "device_id")):
            return False
        return txn.execute(
            "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        ).fetchone() is not None

    def get_device_keys_txn(self, txn: Txn, user_id: str, device_id: str) -> Optional[dict[str, Any]]:
        """The device keys stored for one device, or ``None``."""
        if not (lookup_text(user_id, "user_id") and lookup_text(device_id, "device_id")):
            return None
        row = txn.execute(
            "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        ).fetchone()
        return None if row is None else decode_json(row[0])

    def get_device_keys(self, user_id: str, device_id: str) -> "Deferred[Optional[dict[str, Any]]]":
        """:meth:`get_device_keys_txn` in its own read."""
        return self._db.run_read(self.get_device_keys_txn, user_id, device_id)

    def set_device_keys_txn(self, txn: Txn, user_id: str, device_id: str, keys: Mapping[str, Any]) -> bool:
        """Store a device's identity keys.

        :returns: whether they are new or differ from the stored ones (a device-list change).
        """
        check_text(user_id, "user_id")
        check_text(device_id, "device_id")
        encoded = encode_json(keys)
        row = txn.execute(
            "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        ).fetchone()
        if row is not None and bytes(row[0]) == encoded:
            return False
        txn.execute(
            "INSERT INTO e2e_device_keys (user_id, device_id, key_json, ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json, ts = excluded.ts",
            (user_id, device_id, encoded, self._clock_ms()),
        )
        return True

    def get_local_devices_txn(
        self, txn: Txn, queries: Mapping[str, Optional[Sequence[str]]], *, with_keys_only: bool = True
    ) -> dict[str, dict[str, LocalDevice]]:
        """Our users' devices: ``{user_id: [device ids] or None (all)}`` to
        ``{user_id: {device_id: LocalDevice}}`` (only devices with keys unless told)."""
        out: dict[str, dict[str, LocalDevice]] = {}
        for user_id, device_ids in queries.items():
            if not lookup_text(user_id, "user_id"):
                continue
            join = "JOIN" if with_keys_only else "LEFT JOIN"
            sql = (
                "SELECT d.device_id, d.display_name, k.key_json FROM devices d"
                f" {join} e2e_device_keys k ON k.user_id = d.user_id AND k.device_id = d.device_id"
                " WHERE d.user_id = ?"
            )
            if device_ids:
                rows = txn.select_in(sql + " AND d.device_id IN ({})", lookup_ids(device_ids), (user_id,))
            else:
                rows = txn.execute(sql, (user_id,)).fetchall()
            found = out.setdefault(user_id, {})
            for device_id, name, key_json in rows:
                found[device_id] = LocalDevice(user_id, device_id, name, None if key_json is None else decode_json(key_json))
        return out

    def get_local_devices(
        self, queries: Mapping[str, Optional[Sequence[str]]], *, with_keys_only: bool = True
    ) -> "Deferred[dict[str, dict[str, LocalDevice]]]":
        """:meth:`get_local_devices_txn` in its own read."""
        return self._db.run_read(lambda txn: self.get_local_devices_txn(txn, queries, with_keys_only=with_keys_only))

    def delete_device_e2e_txn(self, txn: Txn, user_id: str, device_ids: Sequence[str]) -> list[str]:
        """Forget everything end-to-end of deleted devices: keys, one-time and fallback
        keys, signatures on them, waiting to-device messages.

        :returns: the devices that had identity keys (their deletion is a device-list
            change other users must hear of).
        """
        had_keys = []
        for device_id in device_ids:
            if not (lookup_text(user_id, "user_id") and lookup_text(device_id, "device_id")):
                continue
            params = (user_id, device_id)
            if txn.execute("DELETE FROM e2e_device_keys WHERE user_id = ? AND device_id = ?", params).rowcount:
                had_keys.append(device_id)
            txn.execute("DELETE FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?", params)
            txn.execute("DELETE FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ?", params)
            txn.execute("DELETE FROM e2e_signatures WHERE target_user_id = ? AND target_key_id = ?", params)
            txn.execute("DELETE FROM device_inbox WHERE user_id = ? AND device_id = ?", params)
            txn.execute("DELETE FROM device_inbox_acks WHERE user_id = ? AND device_id = ?", params)
        return had_keys

    def get_orphaned_device_keys_txn(self, txn: Txn) -> list[tuple[str, str]]:
        """``(user_id, device_id)`` of stored keys whose device no longer exists."""
        return [
            (r[0], r[1])
            for r in txn.execute(
                "SELECT k.user_id, k.device_id FROM e2e_device_keys k LEFT JOIN devices d"
                " ON d.user_id = k.user_id AND d.device_id = k.device_id WHERE d.device_id IS NULL"
            ).fetchall()
        ]

    # -- one-time and fallback keys ------------------------------------------------------

    def add_one_time_keys_txn(
        self, txn: Txn, user_id: str, device_id: str, keys: Iterable[tuple[str, str, Any]]
    ) -> int:
        """Add ``(algorithm, key_id, key)`` one-time keys (a key id already stored keeps
        its first value, as the spec's "each one-time key is only claimed once" wants).

        :returns: how many were new.
        """
        check_text(user_id, "user_id")
        check_text(device_id, "device_id")
        rows = list(keys)
        if not rows:
            return 0
        seq = txn.allocate_ids(ONE_TIME_KEY_SEQUENCE, 1)
        added = 0
        for algorithm, key_id, value in rows:
            check_text(algorithm, "algorithm")
            check_text(key_id, "key_id")
            added += txn.execute(
                "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json, upload_seq)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING",
                (user_id, device_id, algorithm, key_id, encode_json(value), seq),
            ).rowcount
        return added

    def count_one_time_keys_txn(self, txn: Txn, user_id: str, device_id: str) -> dict[str, int]:
        """``{algorithm: unclaimed count}`` of a device."""
        if not (lookup_text(user_id, "user_id") and lookup_text(device_id, "device_id")):
            return {}
        return {
            alg: n
            for alg, n in txn.execute(
                "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? GROUP BY algorithm",
                (user_id, device_id),
            )
        }

    def count_one_time_keys(self, user_id: str, device_id: str) -> "Deferred[dict[str, int]]":
        """:meth:`count_one_time_keys_txn` in its own read."""
        return self._db.run_read(self.count_one_time_keys_txn, user_id, device_id)

    def set_fallback_keys_txn(self, txn: Txn, user_id: str, device_id: str, keys: Iterable[tuple[str, str, Any]]) -> None:
        """Replace the device's fallback key of each algorithm (marked unused)."""
        check_text(user_id, "user_id")
        check_text(device_id, "device_id")
        for algorithm, key_id, value in keys:
            check_text(algorithm, "algorithm")
            check_text(key_id, "key_id")
            txn.execute(
                "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)"
                " VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET"
                " key_id = excluded.key_id, key_json = excluded.key_json, used = 0",
                (user_id, device_id, algorithm, key_id, encode_json(value)),
            )

    def unused_fallback_key_types_txn(self, txn: Txn, user_id: str, device_id: str) -> list[str]:
        """The algorithms of the device's fallback keys not given out yet."""
        if not (lookup_text(user_id, "user_id") and lookup_text(device_id, "device_id")):
            return []
        return [
            r[0]
            for r in txn.execute(
                "SELECT algorithm FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ? AND used = 0 ORDER BY algorithm",
                (user_id, device_id),
            )
        ]

    def claim_keys_txn(
        self, txn: Txn, claims: Iterable[tuple[str, str, str]]
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """Claim one key per ``(user_id, device_id, algorithm)``: the oldest one-time key
        (deleted as it is given out), else the fallback key (marked used, kept).

        :returns: ``{user_id: {device_id: {"<algorithm>:<key_id>": key}}}``.
        """
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for user_id, device_id, algorithm in claims:
            if not (
                lookup_text(user_id, "user_id") and lookup_text(device_id, "device_id") and lookup_text(algorithm, "algorithm")
            ):
                continue
            row = txn.execute(
                "SELECT key_id, key_json FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                " ORDER BY upload_seq, key_id LIMIT 1",
                (user_id, device_id, algorithm),
            ).fetchone()
            if row is not None:
                txn.execute(
                    "DELETE FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ? AND key_id = ?",
                    (user_id, device_id, algorithm, row[0]),
                )
            else:
                row = txn.execute(
                    "SELECT key_id, key_json FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?",
                    (user_id, device_id, algorithm),
                ).fetchone()
                if row is None:
                    continue
                txn.execute(
                    "UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = ? AND device_id = ? AND algorithm = ?",
                    (user_id, device_id, algorithm),
                )
            out.setdefault(user_id, {}).setdefault(device_id, {})[f"{algorithm}:{row[0]}"] = decode_json(row[1])
        return out

    def claim_keys(self, claims: Iterable[tuple[str, str, str]]) -> "Deferred[dict[str, dict[str, dict[str, Any]]]]":
        """:meth:`claim_keys_txn` in its own write transaction."""
        return self._db.run_write(self.claim_keys_txn, list(claims))

    # -- cross-signing keys and signatures ------------------------------------------------

    def get_cross_signing_keys_txn(
        self, txn: Txn, user_ids: Iterable[str], types: Sequence[str] = ("master", "self_signing", "user_signing")
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """``{user_id: {key_type: key json}}`` of the given users."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        ids = lookup_ids(user_ids)
        if not ids or not types:
            return out
        marks = ", ".join("?" * len(types))
        for user_id, key_type, key_json in txn.select_in(
            f"SELECT user_id, key_type, key_json FROM e2e_cross_signing_keys WHERE key_type IN ({marks})"
            " AND user_id IN ({})",
            ids,
            tuple(types),
        ):
            out.setdefault(user_id, {})[key_type] = decode_json(key_json)
        return out

    def get_cross_signing_keys(
        self, user_ids: Iterable[str], types: Sequence[str] = ("master", "self_signing", "user_signing")
    ) -> "Deferred[dict[str, dict[str, dict[str, Any]]]]":
        """:meth:`get_cross_signing_keys_txn` in its own read."""
        return self._db.run_read(self.get_cross_signing_keys_txn, list(user_ids), tuple(types))

    def set_cross_signing_key_txn(self, txn: Txn, user_id: str, key_type: str, public_key: str, key: Mapping[str, Any]) -> bool:
        """Store (replace) one cross-signing key.

        :returns: whether it changed.
        """
        check_text(user_id, "user_id")
        check_text(key_type, "key_type")
        check_text(public_key, "public_key")
        encoded = encode_json(key)
        row = txn.execute(
            "SELECT key_json FROM e2e_cross_signing_keys WHERE user_id = ? AND key_type = ?", (user_id, key_type)
        ).fetchone()
        if row is not None and bytes(row[0]) == encoded:
            return False
        txn.execute(
            "INSERT INTO e2e_cross_signing_keys (user_id, key_type, public_key, key_json, ts) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, key_type) DO UPDATE SET public_key = excluded.public_key,"
            " key_json = excluded.key_json, ts = excluded.ts",
            (user_id, key_type, public_key, encoded, self._clock_ms()),
        )
        return True

    def delete_cross_signing_keys_txn(self, txn: Txn, user_id: str) -> None:
        """Forget a user's cross-signing keys (another server's user we stopped tracking)."""
        if lookup_text(user_id, "user_id"):
            txn.execute("DELETE FROM e2e_cross_signing_keys WHERE user_id = ?", (user_id,))

    def add_signature_txn(
        self, txn: Txn, target_user_id: str, target_key_id: str, signer_user_id: str, signer_key_id: str, signature: str
    ) -> bool:
        """Record one uploaded signature.

        :returns: whether it is new (or replaces a different one).
        """
        for value, what in ((target_user_id, "target_user_id"), (target_key_id, "target_key_id"),
                            (signer_user_id, "signer_user_id"), (signer_key_id, "signer_key_id"), (signature, "signature")):
            check_text(value, what)
        row = txn.execute(
            "SELECT signature FROM e2e_signatures WHERE target_user_id = ? AND target_key_id = ?"
            " AND signer_user_id = ? AND signer_key_id = ?",
            (target_user_id, target_key_id, signer_user_id, signer_key_id),
        ).fetchone()
        if row is not None and row[0] == signature:
            return False
        txn.execute(
            "INSERT INTO e2e_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)"
            " DO UPDATE SET signature = excluded.signature",
            (target_user_id, target_key_id, signer_user_id, signer_key_id, signature),
        )
        return True

    def get_signatures_txn(
        self, txn: Txn, target_user_ids: Iterable[str], signers: Optional[Iterable[str]] = None
    ) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
        """Uploaded signatures on the keys of ``target_user_ids``, made by ``signers``
        (``None``: by anyone): ``{(user, key id): [(signer, signer key id, signature)]}``."""
        out: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        ids = lookup_ids(target_user_ids)
        if not ids:
            return out
        signer_ids = None if signers is None else lookup_ids(signers)
        rows = txn.select_in(
            "SELECT target_user_id, target_key_id, signer_user_id, signer_key_id, signature FROM e2e_signatures"
            " WHERE target_user_id IN ({})",
            ids,
        )
        for user, key_id, signer, signer_key, sig in rows:
            if signer_ids is not None and signer not in signer_ids:
                continue
            out.setdefault((user, key_id), []).append((signer, signer_key, sig))
        return out

    # -- the device-list stream ----------------------------------------------------------

    def record_change_txn(self, txn: Txn, user_ids: Iterable[str]) -> int:
        """A device list or cross-signing key changed for each of ``user_ids``: move them
        to a new position of the device-list stream.

        :returns: the new position.
        """
        ids = sorted(set(user_ids))
        for user_id in ids:
            check_text(user_id, "user_id")
        if not ids:
            return self.get_position_txn(txn)
        pos = txn.allocate_ids(DEVICE_LIST_SEQUENCE, 1)
        for user_id in ids:
            txn.execute(
                "INSERT INTO device_list_changes (user_id, stream_id) VALUES (?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id",
                (user_id, pos),
            )
        return pos

    def get_position_txn(self, txn: Txn) -> int:
        row = txn.execute("SELECT last_value FROM sequences WHERE name = ?", (DEVICE_LIST_SEQUENCE,)).fetchone()
        return 0 if row is None else row[0]

    def get_position(self) -> "Deferred[int]":
        """The newest position of the device-list stream (0 before any change)."""
        return self._db.run_read(self.get_position_txn)

    def get_changed_users_txn(self, txn: Txn, from_pos: int, to_pos: int) -> set[str]:
        """Users whose latest change is in ``(from_pos, to_pos]``."""
        check_int(from_pos, "from_pos")
        check_int(to_pos, "to_pos")
        return {
            r[0]
            for r in txn.execute(
                "SELECT user_id FROM device_list_changes WHERE stream_id > ? AND stream_id <= ?", (from_pos, to_pos)
            )
        }

    def next_update_id_txn(self, txn: Txn, user_id: str) -> tuple[int, list[int]]:
        """The ``stream_id`` of our user's next ``m.device_list_update`` and its
        ``prev_id`` (the previous one, if any), recorded as sent."""
        check_text(user_id, "user_id")
        row = txn.execute("SELECT stream_id FROM device_list_updates_sent WHERE user_id = ?", (user_id,)).fetchone()
        stream_id = txn.allocate_ids(DEVICE_LIST_UPDATE_SEQUENCE, 1)
        txn.execute(
            "INSERT INTO device_list_updates_sent (user_id, stream_id) VALUES (?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id",
            (user_id, stream_id),
        )
        return stream_id, ([] if row is None else [row[0]])

    def get_update_id_txn(self, txn: Txn, user_id: str) -> int:
        """The ``stream_id`` of our user's last ``m.device_list_update`` (0 if none): the
        version of the list ``/user/devices`` returns."""
        if not lookup_text(user_id, "user_id"):
            return 0
        row = txn.execute("SELECT stream_id FROM device_list_updates_sent WHERE user_id = ?", (user_id,)).fetchone()
        return 0 if row is None else row[0]

    # -- who shares rooms with whom -------------------------------------------------------

    def get_users_sharing_room_txn(self, txn: Txn, user_id: str) -> set[str]:
        """Every user joined to a room ``user_id`` is joined to (``user_id`` included when
        it is joined anywhere)."""
        if not lookup_text(user_id, "user_id"):
            return set()
        return {
            r[0]
            for r in txn.execute(
                "SELECT DISTINCT o.state_key FROM current_state m JOIN current_state o"
                " ON o.room_id = m.room_id AND o.type = 'm.room.member' AND o.membership = 'join'"
                " WHERE m.type = 'm.room.member' AND m.state_key = ? AND m.membership = 'join'",
                (user_id,),
            )
        }

    def get_users_sharing_room(self, user_id: str) -> "Deferred[set[str]]":
        """:meth:`get_users_sharing_room_txn` in its own read."""
        return self._db.run_read(self.get_users_sharing_room_txn, user_id)

    def filter_users_sharing_room_txn(self, txn: Txn, user_id: str, candidates: Iterable[str]) -> set[str]:
        """Those of ``candidates`` joined to a room ``user_id`` is joined to."""
        ids = lookup_ids(candidates)
        if not ids or not lookup_text(user_id, "user_id"):
            return set()
        return {
            r[0]
            for r in txn.select_in(
                "SELECT DISTINCT o.state_key FROM current_state m JOIN current_state o"
                " ON o.room_id = m.room_id AND o.type = 'm.room.member' AND o.membership = 'join'"
                " WHERE m.type = 'm.room.member' AND m.state_key = ? AND m.membership = 'join'"
                " AND o.state_key IN ({})",
                ids,
                (user_id,),
            )
        }

    def filter_users_sharing_room(self, user_id: str, candidates: Iterable[str]) -> "Deferred[set[str]]":
        """:meth:`filter_users_sharing_room_txn` in its own read."""
        return self._db.run_read(self.filter_users_sharing_room_txn, user_id, list(candidates))

    def get_member_changes_txn(
        self, txn: Txn, room_ids: Iterable[str], from_nid: int, to_nid: int, *, user_id: Optional[str] = None
    ) -> list[MemberChange]:
        """Accepted membership events in ``(from_nid, to_nid]`` of the stream: in
        ``room_ids``, or (``user_id``) about that user in any room."""
        check_int(from_nid, "from_nid")
        check_int(to_nid, "to_nid")
        base = (
            "SELECT room_id, state_key, membership, event_nid FROM events WHERE type = 'm.room.member'"
            " AND event_nid > ? AND event_nid <= ? AND outlier = 0 AND rejected = 0 AND soft_failed = 0"
        )
        if user_id is not None:
            if not lookup_text(user_id, "user_id"):
                return []
            rows = txn.execute(base + " AND state_key = ? ORDER BY event_nid", (from_nid, to_nid, user_id)).fetchall()
        else:
            ids = lookup_ids(room_ids)
            rows = txn.select_in(base + " AND room_id IN ({})", ids, (from_nid, to_nid)) if ids else []
            rows.sort(key=lambda r: r[3])
        return [MemberChange(r[0], r[1], r[2] or "", r[3]) for r in rows if r[1] is not None]

    def get_joined_rooms_txn(self, txn: Txn, user_id: str) -> list[str]:
        if not lookup_text(user_id, "user_id"):
            return []
        return [
            r[0]
            for r in txn.execute(
                "SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = ? AND membership = 'join'",
                (user_id,),
            )
        ]

    def get_joined_members_txn(self, txn: Txn, room_ids: Iterable[str]) -> set[str]:
        ids = lookup_ids(room_ids)
        if not ids:
            return set()
        return {
            r[0]
            for r in txn.select_in(
                "SELECT state_key FROM current_state WHERE type = 'm.room.member' AND membership = 'join'"
                " AND room_id IN ({})",
                ids,
            )
        }

    # -- other servers' users ---------------------------------------------------------

    def get_remote_list_txn(self, txn: Txn, user_id: str) -> Optional[RemoteListState]:
        """What we cache of another server's user's device list, or ``None``."""
        if not lookup_text(user_id, "user_id"):
            return None
        row = txn.execute(
            "SELECT stream_id, stale FROM remote_device_lists WHERE user_id = ?", (user_id,)
        ).fetchone()
        return None if row is None else RemoteListState(user_id, row[0], bool(row[1]))

    def get_remote_lists(self, user_ids: Iterable[str]) -> "Deferred[dict[str, RemoteListState]]":
        """:meth:`get_remote_list_txn` for many users."""
        ids = list(user_ids)

        def txn_func(txn: Txn) -> dict[str, RemoteListState]:
            out = {}
            for user_id in ids:
                state = self.get_remote_list_txn(txn, user_id)
                if state is not None:
                    out[user_id] = state
            return out

        return self._db.run_read(txn_func)

    def get_remote_devices_txn(self, txn: Txn, user_ids: Iterable[str]) -> dict[str, dict[str, RemoteDevice]]:
        """``{user_id: {device_id: RemoteDevice}}`` of cached users."""
        out: dict[str, dict[str, RemoteDevice]] = {}
        ids = lookup_ids(user_ids)
        for user_id, device_id, name, key_json in (
            txn.select_in(
                "SELECT user_id, device_id, display_name, key_json FROM remote_devices WHERE user_id IN ({})", ids
            ) if ids else []
        ):
            out.setdefault(user_id, {})[device_id] = RemoteDevice(
                user_id, device_id, name, None if key_json is None else decode_json(key_json)
            )
        return out

    def replace_remote_list_txn(
        self,
        txn: Txn,
        user_id: str,
        stream_id: Optional[int],
        devices: Iterable[tuple[str, Optional[str], Optional[dict[str, Any]]]],
    ) -> None:
        """Replace the cached device list of another server's user with a snapshot of
        ``(device_id, display_name, keys)``, fresh (not stale) at ``stream_id``."""
        check_text(user_id, "user_id")
        check_int(stream_id, "stream_id", nullable=True)
        txn.execute("DELETE FROM remote_devices WHERE user_id = ?", (user_id,))
        for device_id, name, keys in devices:
            check_text(device_id, "device_id")
            check_text(name, "display_name", nullable=True)
            txn.execute(
                "INSERT INTO remote_devices (user_id, device_id, display_name, key_json) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name,"
                " key_json = excluded.key_json",
                (user_id, device_id, name, None if keys is None else encode_json(keys)),
            )
        self._set_remote_state_txn(txn, user_id, stream_id, False)

    def update_remote_device_txn(
        self,
        txn: Txn,
        user_id: str,
        device_id: str,
        stream_id: int,
        *,
        deleted: bool,
        display_name: Optional[str] = None,
        keys: Optional[dict[str, Any]] = None,
    ) -> None:
        """Apply one ``m.device_list_update`` to a cached list."""
        check_text(user_id, "user_id")
        check_text(device_id, "device_id")
        check_text(display_name, "display_name", nullable=True)
        if deleted:
            txn.execute("DELETE FROM remote_devices WHERE user_id = ? AND device_id = ?", (user_id, device_id))
        else:
            txn.execute(
                "INSERT INTO remote_devices (user_id, device_id, display_name, key_json) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name,"
                " key_json = excluded.key_json",
                (user_id, device_id, display_name, None if keys is None else encode_json(keys)),
            )
        self._set_remote_state_txn(txn, user_id, stream_id, False)

    def _set_remote_state_txn(self, txn: Txn, user_id: str, stream_id: Optional[int], stale: bool) -> None:
        txn.execute(
            "INSERT INTO remote_device_lists (user_id, stream_id, stale, updated_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = excluded.stale,"
            " updated_ts = excluded.updated_ts",
            (user_id, stream_id, int(stale), self._clock_ms()),
        )

    def mark_remote_stale_txn(self, txn: Txn, user_id: str) -> bool:
        """Mark a cached list as needing a resync; ``False`` if it is not cached."""
        check_text(user_id, "user_id")
        return txn.execute("UPDATE remote_device_lists SET stale = 1 WHERE user_id = ?", (user_id,)).rowcount > 0

    def forget_remote_txn(self, txn: Txn, user_id: str) -> None:
        """Stop caching another server's user (we share no room with them any more)."""
        if not lookup_text(user_id, "user_id"):
            return
        txn.execute("DELETE FROM remote_devices WHERE user_id = ?", (user_id,))
        txn.execute("DELETE FROM remote_device_lists WHERE user_id = ?", (user_id,))
        txn.execute("DELETE FROM e2e_cross_signing_keys WHERE user_id = ?", (user_id,))


__all__ = [
    "DevicesStore",
    "LocalDevice",
    "MemberChange",
    "RemoteDevice",
    "RemoteListState",
    "decode_json",
    "encode_json",
]
