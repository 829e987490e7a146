-- fedserver schema version 15: what operators need (issue 17).
--
-- 1. Client transaction ids are scoped to the request path. Spec (client-server API,
--    "Transaction identifiers"): "The homeserver should identify a request as a
--    retransmission if the transaction ID is the same as a previous request, and the path
--    of the HTTP request is the same." The key gains `path` (e.g.
--    "/rooms/!r:hs/send/m.room.message"); the table is rebuilt because the key changes.
--    Rows from before this version get path '' (we did not record it): they still give
--    their events' unsigned.transaction_id, and are pruned like the others.
-- 2. Rooms blocked by an administrator (no joins from our users, none over federation).

CREATE TABLE client_transactions_v15 (
    user_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    path TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, scope, path, txn_id)
);

INSERT INTO client_transactions_v15 (user_id, scope, path, txn_id, room_id, event_id, created_ts)
    SELECT user_id, scope, '', txn_id, room_id, event_id, created_ts FROM client_transactions;

DROP TABLE client_transactions;

ALTER TABLE client_transactions_v15 RENAME TO client_transactions;

CREATE INDEX client_transactions_event ON client_transactions (event_id);
CREATE INDEX client_transactions_ts ON client_transactions (created_ts);

CREATE TABLE blocked_rooms (
    room_id TEXT NOT NULL PRIMARY KEY,
    blocked_by TEXT,
    blocked_ts INTEGER NOT NULL
);
