"""Other servers: receipt checks and ingest, transactions and EDUs, filling gaps, the
membership handshakes (serving them and making them), history for peers and history
fetched from them (backfill), distribution of our events, server visibility and the
failures mechanism (seed 000)."""
