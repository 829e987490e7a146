"""Pure event code: the Event model, canonical JSON, hashes, ids, redaction, signing,
validation and building. No I/O."""

from fedserver.events.model import Event

__all__ = ["Event"]
