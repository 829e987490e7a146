-- Schema 010: reserved for another branch (the lead allots numbers); nothing here.
-- Delete this file when the branch that owns 010 is merged.
SELECT 1;
