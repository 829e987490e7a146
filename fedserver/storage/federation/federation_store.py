"""Federation bookkeeping: remote server keys, answered transactions, the outbound queue."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from fedserver.storage.database import Txn, check_int, check_text, encode_stored_json, lookup_ids, lookup_text
from fedserver.storage.interface import DestinationRetry, InvalidDataError, OutboundItem


def encode_json(value: Any, what: str) -> bytes:
    """``value`` as compact JSON bytes; bytes pass through, str is UTF-8 encoded.

    :raises InvalidDataError: if it is not JSON-serialisable.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        check_text(value, what)
        return value.encode("utf-8")
    try:
        return encode_stored_json(value)
    except (TypeError, ValueError, UnicodeError, RecursionError) as e:
        raise InvalidDataError(f"{what} is not JSON-serialisable: {e}") from None


class FederationStore:
    """SQL for keys, received transactions and the outbound queue (no caches: every call
    is small)."""

    # -- server keys ------------------------------------------------------------------

    def store_server_keys_txn(
        self,
        txn: Txn,
        server_name: str,
        keys: list[tuple[str, str, int, Optional[int]]],
        key_json: Optional[bytes],
        fetched_ts: int,
    ) -> None:
        """Upsert keys; an older fetch never overwrites a newer one, and a missing
        ``key_json`` keeps the document already stored."""
        check_text(server_name, "server_name")
        check_int(fetched_ts, "fetched_ts")
        if key_json is not None:
            key_json = encode_json(key_json, "key_json")
        rows = []
        for key in keys:
            if not isinstance(key, (tuple, list)) or len(key) != 4:
                raise InvalidDataError(
                    "keys must be (key_id, verify_key_b64, valid_until_ts, expired_ts) tuples"
                )
            key_id, verify_key, valid_until_ts, expired_ts = key
            check_text(key_id, "key_id")
            check_text(verify_key, "verify_key")
            check_int(valid_until_ts, "valid_until_ts")
            check_int(expired_ts, "expired_ts", nullable=True)
            rows.append((server_name, key_id, verify_key, valid_until_ts, expired_ts, fetched_ts, key_json))
        txn.executemany(
            "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts, expired_ts,"
            " fetched_ts, key_json) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (server_name, key_id) DO UPDATE SET"
            " verify_key = excluded.verify_key, valid_until_ts = excluded.valid_until_ts,"
            " expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts,"
            " key_json = COALESCE(excluded.key_json, server_keys.key_json)"
            " WHERE excluded.fetched_ts >= server_keys.fetched_ts",
            rows,
        )

    def get_server_keys_txn(
        self, txn: Txn, server_name: str, key_ids: Iterable[str]
    ) -> dict[str, dict[str, Any]]:
        """``{key_id: {"verify_key", "valid_until_ts", "expired_ts"}}`` for stored keys."""
        if not lookup_text(server_name, "server_name"):
            return {}
        rows = txn.select_in(
            "SELECT key_id, verify_key, valid_until_ts, expired_ts FROM server_keys"
            " WHERE server_name = ? AND key_id IN ({})",
            lookup_ids(key_ids),
            (server_name,),
        )
        return {
            r[0]: {"verify_key": r[1], "valid_until_ts": r[2], "expired_ts": r[3]} for r in rows
        }

    def get_server_key_json_txn(self, txn: Txn, server_name: str) -> list[bytes]:
        """The distinct key documents stored for ``server_name``, most recently fetched
        first."""
        if not lookup_text(server_name, "server_name"):
            return []
        rows = txn.execute(
            "SELECT key_json FROM server_keys WHERE server_name = ? AND key_json IS NOT NULL"
            " ORDER BY fetched_ts DESC, key_id",
            (server_name,),
        ).fetchall()
        return list(dict.fromkeys(bytes(r[0]) for r in rows))

    # -- received transactions --------------------------------------------------------

    def get_received_txn_txn(self, txn: Txn, origin: str, txn_id: str) -> Optional[tuple[int, bytes]]:
        """The answer recorded for ``(origin, txn_id)``, or ``None``."""
        if not (lookup_text(origin, "origin") and lookup_text(txn_id, "txn_id")):
            return None  # not storable, so never stored
        row = txn.execute(
            "SELECT response_code, response_json FROM received_transactions"
            " WHERE origin = ? AND txn_id = ?",
            (origin, txn_id),
        ).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def store_received_txn_txn(
        self, txn: Txn, origin: str, txn_id: str, code: int, body: Any, ts: int
    ) -> tuple[int, bytes]:
        """Record the answer to a transaction unless one is already recorded.

        :returns: the answer now on record (the first one, if this was a replay).
        """
        check_text(origin, "origin")
        check_text(txn_id, "txn_id")
        check_int(code, "code")
        check_int(ts, "ts")
        encoded = encode_json(body, "response body")
        txn.execute(
            "INSERT INTO received_transactions (origin, txn_id, response_code, response_json,"
            " received_ts) VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin, txn_id) DO NOTHING",
            (origin, txn_id, code, encoded, ts),
        )
        answer = self.get_received_txn_txn(txn, origin, txn_id)
        assert answer is not None
        return answer

    def prune_received_txns_txn(self, txn: Txn, before_ts: int) -> int:
        """Forget answers recorded before ``before_ts``; returns how many."""
        check_int(before_ts, "before_ts")
        return txn.execute(
            "DELETE FROM received_transactions WHERE received_ts < ?", (before_ts,)
        ).rowcount

    # -- outbound queue ---------------------------------------------------------------

    def enqueue_outbound_txn(
        self,
        txn: Txn,
        destinations: Iterable[str],
        pdus: Iterable[Any],
        edus: Iterable[Any],
        now: int,
    ) -> int:
        """Queue every PDU, then every EDU, for every destination (each payload is stored
        once). Returns the number of queue rows added."""
        if isinstance(destinations, str):
            raise InvalidDataError("destinations must be a collection of server names")
        dests = list(dict.fromkeys(destinations))
        for d in dests:
            check_text(d, "destination")
        payloads = [("pdu", encode_json(p, "PDU")) for p in pdus]
        payloads += [("edu", encode_json(e, "EDU")) for e in edus]
        if not dests or not payloads:
            return 0
        first_payload = txn.allocate_ids("outbound_payload", len(payloads))
        txn.executemany(
            "INSERT INTO outbound_payloads (payload_id, kind, json, created_ts) VALUES (?, ?, ?, ?)",
            [(first_payload + i, kind, data, now) for i, (kind, data) in enumerate(payloads)],
        )
        count = len(payloads) * len(dests)
        first_queue = txn.allocate_ids("outbound_queue", count)
        txn.executemany(
            "INSERT INTO outbound_queue (queue_id, destination, payload_id) VALUES (?, ?, ?)",
            (
                (first_queue + i * len(dests) + j, dest, first_payload + i)
                for i in range(len(payloads))
                for j, dest in enumerate(dests)
            ),
        )
        return count

    def get_outbound_batch_txn(
        self, txn: Txn, destination: str, max_pdus: int, max_edus: int
    ) -> list[OutboundItem]:
        """The oldest items queued for ``destination``: a prefix of the queue holding at
        most ``max_pdus`` PDUs and ``max_edus`` EDUs (a prefix, so that acknowledging up
        to its last queue id acknowledges exactly what was sent)."""
        check_int(max_pdus, "max_pdus")
        check_int(max_edus, "max_edus")
        if not lookup_text(destination, "destination"):
            return []
        limits = {"pdu": max(0, max_pdus), "edu": max(0, max_edus)}
        rows = txn.execute(
            "SELECT q.queue_id, p.kind, p.json FROM outbound_queue q"
            " JOIN outbound_payloads p ON p.payload_id = q.payload_id"
            " WHERE q.destination = ? ORDER BY q.queue_id LIMIT ?",
            (destination, limits["pdu"] + limits["edu"]),
        ).fetchall()
        counts = {"pdu": 0, "edu": 0}
        batch: list[OutboundItem] = []
        for queue_id, kind, data in rows:
            if counts.get(kind, 0) >= limits.get(kind, 0):
                break
            counts[kind] += 1
            batch.append(OutboundItem(queue_id, kind, bytes(data)))
        return batch

    def ack_outbound_txn(self, txn: Txn, destination: str, up_to_queue_id: int) -> int:
        """Drop the items queued for ``destination`` up to and including
        ``up_to_queue_id``, and the payloads no destination still waits for. Returns how
        many queue rows went."""
        check_text(destination, "destination")
        check_int(up_to_queue_id, "up_to_queue_id")
        payload_ids = [
            r[0]
            for r in txn.execute(
                "SELECT DISTINCT payload_id FROM outbound_queue"
                " WHERE destination = ? AND queue_id <= ?",
                (destination, up_to_queue_id),
            ).fetchall()
        ]
        gone = txn.execute(
            "DELETE FROM outbound_queue WHERE destination = ? AND queue_id <= ?",
            (destination, up_to_queue_id),
        ).rowcount
        txn.select_in(
            "DELETE FROM outbound_payloads WHERE payload_id IN ({}) AND NOT EXISTS"
            " (SELECT 1 FROM outbound_queue q WHERE q.payload_id = outbound_payloads.payload_id)",
            payload_ids,
        )
        return gone

    def destinations_with_pending_txn(self, txn: Txn) -> list[str]:
        """Every destination with something queued."""
        return [
            r[0]
            for r in txn.execute(
                "SELECT DISTINCT destination FROM outbound_queue ORDER BY destination"
            ).fetchall()
        ]

    # -- destinations -----------------------------------------------------------------

    def next_txn_id_txn(self, txn: Txn, destination: str, now: int) -> str:
        """A transaction id for ``destination`` never handed out before: the time the
        destination was first seen by this database, then a persisted counter."""
        check_text(destination, "destination")
        txn.execute(
            "INSERT INTO destinations (destination, txn_epoch, last_txn_seq) VALUES (?, ?, 1)"
            " ON CONFLICT (destination) DO UPDATE SET last_txn_seq = destinations.last_txn_seq + 1",
            (destination, now),
        )
        epoch, seq = txn.execute(
            "SELECT txn_epoch, last_txn_seq FROM destinations WHERE destination = ?", (destination,)
        ).fetchone()
        return f"{epoch}_{seq}"

    def get_destination_retry_txn(self, txn: Txn, destination: str) -> Optional[DestinationRetry]:
        """The back-off state, or ``None`` if the destination is not backing off."""
        if not lookup_text(destination, "destination"):
            return None
        row = txn.execute(
            "SELECT failure_ts, retry_interval_ms FROM destinations"
            " WHERE destination = ? AND failure_ts IS NOT NULL",
            (destination,),
        ).fetchone()
        return None if row is None else DestinationRetry(row[0], row[1])

    def set_destination_retry_txn(
        self, txn: Txn, destination: str, failure_ts: int, retry_interval_ms: int, now: int
    ) -> None:
        """Record that sending failed at ``failure_ts`` and when to retry."""
        check_text(destination, "destination")
        check_int(failure_ts, "failure_ts")
        check_int(retry_interval_ms, "retry_interval_ms")
        txn.execute(
            "INSERT INTO destinations (destination, txn_epoch, failure_ts, retry_interval_ms)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (destination) DO UPDATE SET"
            " failure_ts = excluded.failure_ts, retry_interval_ms = excluded.retry_interval_ms",
            (destination, now, failure_ts, retry_interval_ms),
        )

    def clear_destination_retry_txn(self, txn: Txn, destination: str) -> None:
        """The destination answered: stop backing off."""
        check_text(destination, "destination")
        txn.execute(
            "UPDATE destinations SET failure_ts = NULL, retry_interval_ms = NULL"
            " WHERE destination = ?",
            (destination,),
        )
