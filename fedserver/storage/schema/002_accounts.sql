-- fedserver schema version 2: local accounts, access tokens, devices, profiles, account
-- data and filters. Same conventions as 001 (portable SQL, INTEGER 0/1 booleans,
-- millisecond timestamps, ids allocated from `sequences`).

-- One row per local user. password_hash is a self-describing KDF string
-- ("$scrypt$ln=..,r=..,p=..$salt$hash"), or NULL for an account with no password.
CREATE TABLE users (
    user_id TEXT NOT NULL PRIMARY KEY,
    password_hash TEXT,
    created_ts INTEGER NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    deactivated INTEGER NOT NULL DEFAULT 0,
    is_guest INTEGER NOT NULL DEFAULT 0,
    user_type TEXT
);

-- Local users' profiles (remote profiles are asked for over federation, never stored).
CREATE TABLE profiles (
    user_id TEXT NOT NULL PRIMARY KEY REFERENCES users (user_id),
    displayname TEXT,
    avatar_url TEXT
);

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES users (user_id),
    device_id TEXT NOT NULL,
    display_name TEXT,
    created_ts INTEGER NOT NULL,
    last_seen_ts INTEGER,
    last_seen_ip TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Access tokens are never stored: token_hash is the hex SHA-256 of the token.
-- token_id (from the sequence "access_token") identifies a token without revealing it.
CREATE TABLE access_tokens (
    token_id INTEGER NOT NULL PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users (user_id),
    device_id TEXT,
    created_ts INTEGER NOT NULL,
    last_used_ts INTEGER
);
CREATE INDEX access_tokens_user_device ON access_tokens (user_id, device_id);

-- Global (room_id = '') and per-room account data. stream_id (sequence "account_data")
-- grows with every write, so /sync can ask for what changed since a position.
CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content BLOB NOT NULL,
    stream_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_id);

-- Filters uploaded with POST /user/{userId}/filter; filter_id counts per user from 0.
CREATE TABLE user_filters (
    user_id TEXT NOT NULL,
    filter_id INTEGER NOT NULL,
    filter_json BLOB NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);
