"""Storage of what belongs to users: accounts, devices and keys, to-device messages, push, presence, receipts, the user directory."""
