"""The federation listener's resources: transport (``/_matrix/federation/v1``), history and
membership routes, server keys and the notary, X-Matrix authentication."""
