"""fedserver tests (trial)."""
