-- Schema 012: rooms joined with partial state (server-server spec, send_join v2
-- `omit_members`; MSC3706 / MSC3902), until their full state is resynchronised.

-- One row per room whose state we hold without its membership events. join_event_id is
-- our join (the state before it is what the resync fetches); resident is the server that
-- answered the send_join (asked first).
CREATE TABLE partial_state_rooms (
    room_id TEXT NOT NULL PRIMARY KEY,
    join_event_id TEXT NOT NULL,
    resident TEXT NOT NULL,
    joined_ts INTEGER NOT NULL
);

-- The resident's `servers_in_room`: where our events go while we cannot tell the room's
-- members ourselves, and who else may be asked for the state.
CREATE TABLE partial_state_servers (
    room_id TEXT NOT NULL,
    server_name TEXT NOT NULL,
    PRIMARY KEY (room_id, server_name)
);

-- Events taken into a partial-state room (the join and what came after it): their state
-- was computed on partial state; the resync computes it again and re-checks them.
CREATE TABLE partial_state_events (
    event_nid INTEGER NOT NULL PRIMARY KEY REFERENCES events (event_nid),
    room_id TEXT NOT NULL
);
CREATE INDEX partial_state_events_room ON partial_state_events (room_id, event_nid);

-- When each room got its full state, as a stream (stream_id from the sequence
-- 'partial_state_completion'): /sync sends such a room whole to a client whose token is
-- older (the room was left out of /sync while it was partial).
CREATE TABLE partial_state_completions (
    stream_id INTEGER NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL
);
