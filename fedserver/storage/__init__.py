"""Storage: the only code that knows SQL (SQLite through twisted.enterprise.adbapi)."""

from fedserver.storage.interface import (
    DestinationRetry,
    Distribution,
    EventMeta,
    InvalidDataError,
    OutboundItem,
    PersistedEvent,
    PersistEntry,
    ReceivedTxn,
    Refusal,
    RefusedEvent,
    RoomInfo,
    SchemaError,
    SchemaTooNewError,
    StorageError,
    Store,
    UnknownEventsError,
    UnknownStateGroupError,
)
from fedserver.storage.sqlite import SQLiteStore, open_store
from fedserver.state.statemap import StateMap

__all__ = [
    "DestinationRetry",
    "Distribution",
    "EventMeta",
    "InvalidDataError",
    "OutboundItem",
    "PersistedEvent",
    "PersistEntry",
    "ReceivedTxn",
    "Refusal",
    "RefusedEvent",
    "RoomInfo",
    "SchemaError",
    "SchemaTooNewError",
    "SQLiteStore",
    "StateMap",
    "StorageError",
    "Store",
    "UnknownEventsError",
    "UnknownStateGroupError",
    "open_store",
]
