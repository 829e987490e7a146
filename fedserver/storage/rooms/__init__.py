"""Storage of rooms: events and their state, relations, history, partial state, the outbound queue."""
