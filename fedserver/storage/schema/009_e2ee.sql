-- Schema 009: end-to-end encryption (client-server "End-to-End Encryption", "Send-to-Device
-- messaging"; server-server "Device Management", "End-to-End Encryption",
-- "Send-to-device messaging"). Same conventions as 001: portable SQL, INTEGER 0/1
-- booleans, millisecond timestamps, ids from `sequences`. Key objects are stored as the
-- client signed them (canonical JSON), since signatures cover them byte for byte.

-- Identity keys of our users' devices (POST /keys/upload "device_keys").
CREATE TABLE e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json BLOB NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Unclaimed one-time keys. upload_seq (sequence "e2e_one_time_keys") orders claims: keys
-- are given out in upload order, oldest upload first.
CREATE TABLE e2e_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json BLOB NOT NULL,
    upload_seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);
CREATE INDEX e2e_one_time_keys_claim ON e2e_one_time_keys (user_id, device_id, algorithm, upload_seq);

-- One fallback key per device and algorithm; used = 1 once given out by a claim.
CREATE TABLE e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json BLOB NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys: our users' (as uploaded) and other servers' users' (as their server
-- sent them, signatures included). key_type is master, self_signing or user_signing.
CREATE TABLE e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_json BLOB NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded through POST /keys/signatures/upload on our users' device keys and
-- master keys (and by our users on other users' master keys). target_key_id is a device
-- id or a cross-signing public key; signer_key_id is "ed25519:<id>".
CREATE TABLE e2e_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- The device-list stream /sync (device_lists.changed) and /keys/changes read: one row
-- per user (ours or another server's) whose devices or cross-signing keys changed, with
-- the position (sequence "device_list") of the latest change. Bounded by the number of
-- users: a later change moves the row.
CREATE TABLE device_list_changes (
    user_id TEXT NOT NULL PRIMARY KEY,
    stream_id INTEGER NOT NULL
);
CREATE INDEX device_list_changes_stream ON device_list_changes (stream_id);

-- Our users' m.device_list_update sequences: the stream_id (sequence
-- "device_list_update") of the last update sent, the next update's prev_id.
CREATE TABLE device_list_updates_sent (
    user_id TEXT NOT NULL PRIMARY KEY,
    stream_id INTEGER NOT NULL
);

-- Other servers' users whose device lists we cache while we share a room with them.
-- stream_id: the last m.device_list_update applied (NULL: unknown, the next update
-- resyncs); stale = 1: resync through /user/devices before trusting the cache.
CREATE TABLE remote_device_lists (
    user_id TEXT NOT NULL PRIMARY KEY,
    stream_id INTEGER,
    stale INTEGER NOT NULL DEFAULT 0,
    updated_ts INTEGER NOT NULL
);

CREATE TABLE remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    key_json BLOB,
    PRIMARY KEY (user_id, device_id)
);

-- To-device messages waiting for one of our devices, in arrival order (stream_id from the
-- sequence "to_device"). A message goes once the device syncs with a token at or after
-- it; device_inbox_acks records, for an answer that held back part of a long queue, how
-- far that answer's token acknowledges.
CREATE TABLE device_inbox (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_id INTEGER NOT NULL,
    message_json BLOB NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_id)
);

CREATE TABLE device_inbox_acks (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    token_pos INTEGER NOT NULL,
    delivered_upto INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, token_pos)
);

-- Idempotence: PUT /sendToDevice transaction ids (per user and device or token), and
-- the message_id of m.direct_to_device EDUs per origin.
CREATE TABLE to_device_txns (
    user_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, scope, txn_id)
);
CREATE INDEX to_device_txns_ts ON to_device_txns (ts);

CREATE TABLE received_to_device (
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (origin, message_id)
);
CREATE INDEX received_to_device_ts ON received_to_device (ts);

-- Server-side key backups: versions per user (numbers never reused; a deleted version
-- keeps its row with deleted = 1), and the backed-up session keys of each version.
-- etag grows with every change of a version's keys.
CREATE TABLE e2e_room_keys_versions (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data BLOB NOT NULL,
    etag INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE e2e_room_keys (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index INTEGER NOT NULL,
    forwarded_count INTEGER NOT NULL,
    is_verified INTEGER NOT NULL,
    session_data BLOB NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
