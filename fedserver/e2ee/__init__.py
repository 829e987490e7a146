"""Pure end-to-end encryption helpers (no I/O): the shape and signatures of device keys,
one-time and fallback keys, cross-signing keys and uploaded signatures, as the spec's
"End-to-End Encryption" module asks a server to check them (:mod:`fedserver.e2ee.keys`)."""
