"""Rooms: the pipeline every event goes through, our users' events (creator, membership),
local rooms for clients (rooms: create, send, state), reading the timeline (timeline:
/messages, /context, /event, /members; lazy_members), relations (/relations, /threads,
bundled aggregations), room upgrades, aliases and the directory, and the client event
format."""
