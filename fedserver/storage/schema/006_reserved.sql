-- Schema 006: reserved for another branch (the lead allots numbers); nothing here.
-- Delete this file when the branch that owns 006 is merged.
SELECT 1;
