"""What clients see beyond room events: accounts and devices, profiles, ``/sync`` and the
notifier that wakes its long-polls."""
