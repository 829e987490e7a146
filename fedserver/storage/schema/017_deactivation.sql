-- Schema 017: account deactivation (POST /account/deactivate, and the admin API's).
-- A user is listed here, in the transaction that deactivates them, until they have left
-- (or rejected) every room; a server that stops before then resumes at its next start.
CREATE TABLE users_pending_deactivation (
    user_id TEXT NOT NULL PRIMARY KEY,
    erase INTEGER NOT NULL
);
