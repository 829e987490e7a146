-- fedserver schema version 3: what serving rooms to clients needs: room aliases, client
-- transaction ids, redactions by target, forgotten rooms, and indexes for /sync and for
-- a user's memberships. Same conventions as 001 (portable SQL, INTEGER 0/1 booleans,
-- millisecond timestamps).

-- Local room aliases (#localpart:our.server -> room id). creator may delete it.
CREATE TABLE room_aliases (
    room_alias TEXT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT,
    created_ts INTEGER NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- Client transaction ids (PUT .../send/{eventType}/{txnId}, .../redact/{eventId}/{txnId}):
-- a retried request gets the first event back. scope is "d" + device id, or "t" + the
-- access token id for a token without a device (spec "Transaction identifiers").
CREATE TABLE client_transactions (
    user_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, scope, txn_id)
);
CREATE INDEX client_transactions_event ON client_transactions (event_id);
CREATE INDEX client_transactions_ts ON client_transactions (created_ts);

-- Accepted m.room.redaction events by the event they redact (filled from the events
-- table by an indexer that remembers how far it got in `room_indexers`).
CREATE TABLE redactions (
    redacts TEXT NOT NULL,
    redaction_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (redacts, redaction_id)
);

-- How far (event_nid) each indexer over the events table has got.
CREATE TABLE room_indexers (
    name TEXT NOT NULL PRIMARY KEY,
    position INTEGER NOT NULL
);

-- POST /rooms/{roomId}/forget: the room stays forgotten while the user's membership
-- event is still membership_nid (a new membership brings it back).
CREATE TABLE forgotten_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    membership_nid INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- A room's events in stream order (/sync timelines and state changes since a token).
CREATE INDEX events_room_nid ON events (room_id, event_nid);

-- A user's memberships in every room (rooms for /sync, /joined_rooms).
CREATE INDEX current_state_state_key ON current_state (state_key, type);
