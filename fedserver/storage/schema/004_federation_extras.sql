-- Schema 004: the failures mechanism between servers, and memberships of our users in
-- rooms this server is not in.

-- Failures (seed 000): what we told other servers about events of theirs we refused, and
-- what they told us. direction is 'sent' or 'received'; server_name is the peer.
CREATE TABLE federation_failures (
    failure_id INTEGER NOT NULL PRIMARY KEY,
    direction TEXT NOT NULL,
    server_name TEXT NOT NULL,
    severity TEXT NOT NULL,
    code INTEGER NOT NULL,
    reason TEXT NOT NULL,
    room_id TEXT,
    affected TEXT,
    source TEXT,
    ts INTEGER NOT NULL
);
CREATE INDEX federation_failures_list ON federation_failures (direction, failure_id);
CREATE UNIQUE INDEX federation_failures_once ON federation_failures
    (direction, server_name, code, COALESCE(affected, ''), COALESCE(source, ''));

-- Invites, knocks and their withdrawal for our users in rooms this server is not in: the
-- client sees them through /sync before any join. event_id is the membership event (an
-- outlier); stream is its event_nid, the sync position.
CREATE TABLE remote_memberships (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    stripped_state BLOB NOT NULL,
    stream INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
CREATE INDEX remote_memberships_stream ON remote_memberships (user_id, stream);
