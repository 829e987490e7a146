-- fedserver schema version 1: the full schema of a new database.
--
-- Portable SQL: INTEGER / TEXT / BLOB only, no AUTOINCREMENT, no WITHOUT ROWID, upserts
-- with ON CONFLICT ... DO UPDATE. Numeric ids are allocated by the code from the
-- `sequences` table, never by the engine. Booleans are INTEGER 0/1. Timestamps are
-- milliseconds since the epoch.

-- Id allocation: one row per kind of numeric id (event_nid, state_group, ...).
CREATE TABLE sequences (
    name TEXT NOT NULL PRIMARY KEY,
    last_value INTEGER NOT NULL
);

CREATE TABLE rooms (
    room_id TEXT NOT NULL PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT,
    is_public INTEGER NOT NULL DEFAULT 0,
    created_ts INTEGER NOT NULL
);

-- One row per PDU we hold. event_nid is the compact id every other table uses and the
-- stream ordering (allocated in persist order). json is the PDU's canonical JSON.
CREATE TABLE events (
    event_nid INTEGER NOT NULL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    membership TEXT,
    depth INTEGER NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    received_ts INTEGER NOT NULL,
    room_version TEXT NOT NULL,
    outlier INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    soft_failed INTEGER NOT NULL DEFAULT 0,
    json BLOB NOT NULL
);
CREATE INDEX events_room_depth ON events (room_id, depth);

-- Why an event was rejected or soft-failed, and which rule / plugin said so.
CREATE TABLE event_refusals (
    event_nid INTEGER NOT NULL PRIMARY KEY REFERENCES events (event_nid),
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    rule TEXT,
    plugin TEXT,
    refused_ts INTEGER NOT NULL
);

-- DAG edges. The target is an id, not a nid: prev and auth events may not be stored yet.
CREATE TABLE event_edges (
    event_nid INTEGER NOT NULL REFERENCES events (event_nid),
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_nid, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE event_auth (
    event_nid INTEGER NOT NULL REFERENCES events (event_nid),
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_nid, auth_event_id)
);

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL,
    event_nid INTEGER NOT NULL REFERENCES events (event_nid),
    PRIMARY KEY (room_id, event_nid)
);

-- (type, state_key) pairs interned as integers.
CREATE TABLE state_keys (
    type_key_nid INTEGER NOT NULL PRIMARY KEY,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    UNIQUE (type, state_key)
);

-- A state group is a delta against prev_group, or a full snapshot when prev_group is
-- NULL. chain_length counts the deltas down to the snapshot (0 for a snapshot) and is
-- bounded by the code; entry_count is the size of the full state.
CREATE TABLE state_groups (
    group_id INTEGER NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    prev_group INTEGER REFERENCES state_groups (group_id),
    chain_length INTEGER NOT NULL,
    entry_count INTEGER NOT NULL
);

-- event_nid NULL: the key is removed relative to prev_group.
CREATE TABLE state_group_entries (
    group_id INTEGER NOT NULL REFERENCES state_groups (group_id),
    type_key_nid INTEGER NOT NULL REFERENCES state_keys (type_key_nid),
    event_nid INTEGER REFERENCES events (event_nid),
    PRIMARY KEY (group_id, type_key_nid)
);

CREATE TABLE event_state (
    event_nid INTEGER NOT NULL PRIMARY KEY REFERENCES events (event_nid),
    state_group_before INTEGER REFERENCES state_groups (group_id),
    state_group_after INTEGER REFERENCES state_groups (group_id)
);

CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_nid INTEGER NOT NULL REFERENCES events (event_nid),
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
);

-- Remote signing keys, with the signed key document they came in (served as a notary).
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key TEXT NOT NULL,
    valid_until_ts INTEGER NOT NULL,
    expired_ts INTEGER,
    fetched_ts INTEGER NOT NULL,
    key_json BLOB,
    PRIMARY KEY (server_name, key_id)
);

-- Answers to inbound federation transactions, so that a replay gets the first answer.
CREATE TABLE received_transactions (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response_code INTEGER NOT NULL,
    response_json BLOB NOT NULL,
    received_ts INTEGER NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX received_transactions_ts ON received_transactions (received_ts);

-- Per destination: the outbound transaction counter and the back-off state.
-- txn_epoch (the time the row was made) prefixes transaction ids so that a wiped
-- database never reuses an id a peer has already seen.
CREATE TABLE destinations (
    destination TEXT NOT NULL PRIMARY KEY,
    txn_epoch INTEGER NOT NULL,
    last_txn_seq INTEGER NOT NULL DEFAULT 0,
    failure_ts INTEGER,
    retry_interval_ms INTEGER
);

-- Outbound PDUs/EDUs: the payload once, a queue row per destination.
CREATE TABLE outbound_payloads (
    payload_id INTEGER NOT NULL PRIMARY KEY,
    kind TEXT NOT NULL,
    json BLOB NOT NULL,
    created_ts INTEGER NOT NULL
);

CREATE TABLE outbound_queue (
    queue_id INTEGER NOT NULL PRIMARY KEY,
    destination TEXT NOT NULL,
    payload_id INTEGER NOT NULL REFERENCES outbound_payloads (payload_id)
);
CREATE INDEX outbound_queue_destination ON outbound_queue (destination, queue_id);
CREATE INDEX outbound_queue_payload ON outbound_queue (payload_id);
