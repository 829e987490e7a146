-- Schema 011: the ids of federation_failures come from the `sequences` table, like every
-- other id, instead of SQLite's rowid (which PostgreSQL does not have). The sequence
-- starts after the ids already used. (The WHERE of the SELECT is what SQLite's parser
-- needs to tell the upsert clause from a join's ON.)
INSERT INTO sequences (name, last_value)
    SELECT 'federation_failure', COALESCE(MAX(failure_id), 0) FROM federation_failures WHERE 1 = 1
    ON CONFLICT (name) DO UPDATE SET last_value = excluded.last_value
    WHERE excluded.last_value > sequences.last_value;
