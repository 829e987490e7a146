-- Schema 008: push rules, pushers, notifications and unread counts. Same conventions as 001.

-- What a user changed in their push rules (fedserver.push.rules.UserRules as JSON): their
-- own rules and edits of server-default rules. The full ruleset is built from this and
-- the defaults. stream_id (sequence "push_rules") grows with every change (/sync sends
-- m.push_rules account data when it moved).
CREATE TABLE push_rules (
    user_id TEXT NOT NULL PRIMARY KEY,
    rules BLOB NOT NULL,
    stream_id INTEGER NOT NULL
);
CREATE INDEX push_rules_stream ON push_rules (stream_id);

-- Pushers (POST /pushers/set), unique per (user, app_id, pushkey). data is the JSON the
-- client gave (url and format for http pushers). pushkey_ts: when it was last set (ms).
CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    data BLOB NOT NULL,
    device_id TEXT,
    pushkey_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_key ON pushers (app_id, pushkey);

-- Events that notified a local user (the push rules' actions said notify): the source of
-- unread counts and of GET /notifications. thread_id is 'main' or the thread root's id.
-- highlight is 0/1; actions the rule's actions (JSON).
CREATE TABLE event_push_actions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_nid INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    highlight INTEGER NOT NULL,
    actions BLOB NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, event_nid)
);
CREATE INDEX event_push_actions_room ON event_push_actions (user_id, room_id, event_nid);
CREATE INDEX event_push_actions_ts ON event_push_actions (ts);

-- How far a local user has read in a room: the newest of their m.read and m.read.private
-- receipts and their own events (spec: by sending an event the user has read up to it),
-- per thread ('' unthreaded, 'main', or a thread root's id), as an event stream position.
CREATE TABLE read_positions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_nid INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);

-- When a user's unread counts in a room last changed (sequence "notification_counts"):
-- /sync sends the counts of rooms that changed after the client's position.
CREATE TABLE notification_count_changes (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
CREATE INDEX notification_count_changes_stream ON notification_count_changes (user_id, stream_id);
