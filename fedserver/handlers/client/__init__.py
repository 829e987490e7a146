"""What clients see beyond room events: accounts and devices, profiles, ``/sync`` and the
notifier that wakes its long-polls.

- ``accounts``: registration, login, tokens, devices, password changes, User-Interactive
  Authentication.
- ``deactivate``: account deactivation, shared by ``POST /account/deactivate`` and the
  admin API (shut the account in one transaction, then leave every room; resumed at start).
- ``ignored_users``: ``m.ignored_user_list``, cached per user; what it hides is filtered
  where events are served (``handlers.rooms.client_events``).
- ``account_data``, ``profile``, ``tags``, ``user_directory``: per-user data.
- ``sync``, ``sync_sections``, ``notifier``: ``/sync`` and its long-polls.
"""
