"""What the server does: membership, ingest, transactions, directory, profiles. No HTTP, no SQL."""
