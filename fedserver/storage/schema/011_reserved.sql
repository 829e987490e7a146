-- Schema 011: reserved for another branch (the lead allots numbers); nothing here.
-- Delete this file when the branch that owns 011 is merged.
SELECT 1;
