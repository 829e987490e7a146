"""The client listener's resources under ``/_matrix/client``: routing and accounts
(:mod:`.api`), rooms and ``/sync`` (:mod:`.rooms`)."""
