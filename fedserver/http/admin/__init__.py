"""Operator endpoints on the client (local) listener: shared-secret registration, why an
event was refused, failures sent and received."""
