-- Schema 005: reserved for another branch (the lead allots numbers); nothing here.
-- Delete this file when the branch that owns 005 is merged.
SELECT 1;
