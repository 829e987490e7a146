"""End-to-end encryption (client-server "End-to-End Encryption", "Send-to-Device messaging",
"Device Management"; server-server "Device Management", "End-to-End Encryption",
"Send-to-device messaging"), locally and over federation.

- :mod:`.devices`: our users' device lists: every change (keys uploaded, device deleted
  or renamed, cross-signing keys) recorded in the device-list stream and announced to
  the servers sharing a room with the user (``m.device_list_update``,
  ``m.signing_key_update``) in the same database transaction; ``/user/devices``.
- :mod:`.device_lists`: other servers' users' device lists: the EDUs in (with ``prev_id``
  gaps resynced through ``/user/devices``), the cache, and what ``/sync``
  (``device_lists``) and ``/keys/changes`` report.
- :mod:`.e2e_keys`: ``/keys/upload``, ``/keys/query``, ``/keys/claim`` for clients, and
  ``/user/keys/query``, ``/user/keys/claim`` for other servers.
- :mod:`.cross_signing`: ``/keys/device_signing/upload`` (with User-Interactive
  Authentication where the spec asks) and ``/keys/signatures/upload``.
- :mod:`.to_device`: ``/sendToDevice``, ``m.direct_to_device`` in and out, and the
  ``to_device`` part of ``/sync`` (with one-time key counts and fallback key types).
- :mod:`.key_backup`: ``/room_keys/*``.

The key checks themselves are pure (:mod:`fedserver.e2ee.keys`); SQL lives in
:mod:`fedserver.storage.users.devices_store`, :mod:`fedserver.storage.users.to_device_store` and
:mod:`fedserver.storage.users.key_backup_store`.
"""
