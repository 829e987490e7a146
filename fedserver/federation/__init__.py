"""Talking to other servers: keys, discovery, the outbound client and the sender."""
