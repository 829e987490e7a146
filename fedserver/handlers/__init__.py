"""What the server does, with no HTTP and no SQL, grouped by concern.

- :mod:`fedserver.handlers.rooms`: the room pipeline (the one path into a room's DAG, which
  also queues our events for the other servers in the transaction that stores them), our
  users' events and memberships, local rooms, the directory, serving events to clients.
- :mod:`fedserver.handlers.federation`: other servers: PDUs and transactions on receipt,
  gaps, the membership handshakes in both roles, history served to peers, the failures
  mechanism.
- :mod:`fedserver.handlers.client`: what clients see beyond rooms: accounts, profiles,
  ``/sync`` and the notifier that wakes it.
- :mod:`fedserver.handlers.admin`: what server administrators do: users, rooms (block,
  purge, delete), destinations.

Errors are raised from :mod:`fedserver.errors`.
"""
