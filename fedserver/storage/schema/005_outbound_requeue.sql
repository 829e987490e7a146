-- Schema 005: events are queued for other servers in the transaction that stores them
-- (fedserver/storage/distribution_store.py). Before this version the queue rows were
-- written in a second transaction, so a crash in between could lose an event for every
-- other server. The rooms listed here get their forward extremities made by this server
-- queued once more at the next start (then the list is emptied); receivers drop
-- duplicates and fetch anything older through /get_missing_events.
CREATE TABLE outbound_requeue (
    room_id TEXT NOT NULL PRIMARY KEY
);
INSERT INTO outbound_requeue (room_id) SELECT room_id FROM rooms;
