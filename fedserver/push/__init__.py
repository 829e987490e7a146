"""Push rules, pure (no I/O): what a user's rules say about an event.

- :mod:`fedserver.push.glob`: the spec's glob matching (appendix "Glob-style matching"),
  in time linear in the text for any pattern (HOSTILE row 37), and the word-boundary form
  used for ``content.body``.
- :mod:`fedserver.push.rules`: the spec's server-default rules, the user's ruleset (their
  own rules merged with the defaults in priority order) and validation of a rule a client
  sends.
- :mod:`fedserver.push.evaluator`: the conditions (``event_match``, ``event_property_is``,
  ``event_property_contains``, ``contains_display_name``, ``room_member_count``,
  ``sender_notification_permission``) and the first matching rule's actions.

The handlers in :mod:`fedserver.handlers.push` load rules and rooms and store what these
functions decide.
"""
