-- Schema 006: room history fetched from other servers (backfill), and event relations.
-- Same conventions as 001 (portable SQL, INTEGER 0/1 booleans).

-- history = 1: the event took its place in the room's DAG as history, behind what we
-- already held (a /backfill answer, or an outlier that such an answer placed in the DAG).
-- It is served by /messages and /context but never enters the /sync stream. Events new
-- to us that arrive as history get negative event_nids (sequence "history_nid", counting
-- down), so that no stream position ever covers them.
ALTER TABLE events ADD COLUMN history INTEGER NOT NULL DEFAULT 0;

-- Relations between events (client-server API "Forming relationships between events"):
-- one row per accepted event whose content has a well-formed m.relates_to with a
-- rel_type. relates_to is the parent's event id (which we may not hold). depth and
-- event_nid give the child's topological position (the order /relations pages in).
CREATE TABLE event_relations (
    event_nid INTEGER NOT NULL PRIMARY KEY REFERENCES events (event_nid),
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    relates_to TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    depth INTEGER NOT NULL,
    origin_server_ts INTEGER NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (relates_to, rel_type, depth, event_nid);
CREATE INDEX event_relations_room ON event_relations (room_id, rel_type, relates_to);

-- Events stored before this version are indexed once, from the newest down (see
-- fedserver/storage/relations_store.py, catch_up); a new database has none.
INSERT INTO room_indexers (name, position)
    SELECT 'relations_catchup', MAX(event_nid) FROM events HAVING COUNT(*) > 0;
