"""Rooms: the pipeline every event goes through, our users' events (creator, membership),
local rooms for clients, aliases and the directory, and the client event format."""
