-- Schema 007: receipts, presence and the user directory. Same conventions as 001
-- (portable SQL, INTEGER 0/1 booleans, millisecond timestamps, ids from `sequences`).
-- Typing notifications are not stored: they live in memory for seconds.

-- Read receipts (Client-Server "Receipts"): one per (room, type, user, thread); thread_id
-- is '' for an unthreaded receipt, 'main' or a thread root's id for a threaded one.
-- stream_id (sequence "receipts") grows with every write: /sync sends what is newer than
-- the client's position. data is the receipt's JSON ({"ts": ..., "thread_id"?: ...}).
-- event_nid is the receipted event's stream position when we hold it (for read-up-to
-- comparisons), else NULL.
CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_nid INTEGER,
    data BLOB NOT NULL,
    stream_id INTEGER NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_room_stream ON receipts (room_id, stream_id);

-- Presence of local users (set by them and by their activity) and of remote users (from
-- m.presence EDUs). last_active_ts: when the user was last active. stream_id (sequence
-- "presence") grows with every change.
CREATE TABLE presence (
    user_id TEXT NOT NULL PRIMARY KEY,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts INTEGER NOT NULL,
    currently_active INTEGER NOT NULL DEFAULT 0,
    stream_id INTEGER NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_id);

-- The user directory: one row per user joined to a room, with the display name and
-- avatar of their member event. search_text is the casefolded "user_id display_name"
-- that searches match against. Kept in step with the rooms' current state by an indexer
-- over the events table (its position in room_indexers, name 'user_directory').
CREATE TABLE user_directory (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    display_name TEXT,
    avatar_url TEXT,
    search_text TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX user_directory_user ON user_directory (user_id);

-- Member events by type, for the directory indexer (events of one type after a position).
CREATE INDEX events_type_nid ON events (type, event_nid);
