"""Pure relations logic (client-server API "Forming relationships between events"): which
relation an event's content declares, and the server-side aggregations bundled into
``unsigned.m.relations`` (edits, threads, references). No I/O: handlers load the data and
call these functions, as :mod:`fedserver.auth` and :mod:`fedserver.state` are used."""
