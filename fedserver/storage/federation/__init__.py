"""Storage of what other servers told us or we owe them: keys, transactions, failures, remote memberships."""
