-- Schema 008: reserved for another branch (the lead allots numbers); nothing here.
-- Delete this file when the branch that owns 008 is merged.
SELECT 1;
