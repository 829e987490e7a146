"""What server administrators do (the admin API and ``fedserver-admin``), with no HTTP and no SQL.

- :mod:`fedserver.handlers.admin.users`: list, show, create and modify local users,
  deactivate them (they leave their rooms, their tokens go), reset passwords, devices.
- :mod:`fedserver.handlers.admin.rooms`: list rooms with members and state, block rooms
  (:class:`~fedserver.handlers.admin.rooms.RoomBlocks`, consulted by the membership
  handlers), purge history before a point, delete rooms.
- :mod:`fedserver.handlers.admin.destinations`: other servers we send to, their backoff,
  and resetting it.
"""
