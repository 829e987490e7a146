"""Other servers: receipt checks and ingest, transactions and EDUs, filling gaps, the
membership handshakes (serving them and making them), history for peers and history
fetched from them (backfill), server visibility and the failures mechanism (seed 000).
Our events reach other servers through the room pipeline, which queues them in the
transaction that stores them."""
