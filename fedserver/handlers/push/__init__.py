"""Push rules and notifications: what the pure :mod:`fedserver.push` decides, applied.

- :mod:`.threads`: which thread an event belongs to (for threaded receipts and counts).
- :mod:`.rules`: a user's push rules (``/pushrules`` CRUD) and ``m.push_rules`` in /sync.
- :mod:`.notifications`: the rules evaluated on every event taken into a room, the
  events that notified whom, unread counts in /sync, ``GET /notifications``.
- :mod:`.pushers`: pushers (``/pushers``, ``/pushers/set``) and delivery to push gateways.
"""
