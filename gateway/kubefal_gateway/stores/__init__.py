"""The queue store backends behind `kubefal_gateway.queueing.QueueStore`.

Why a package: the interface (`kubefal_gateway.queueing`) is pure and imports no backend; the
backends import it. `opener.open_store` picks a backend from a URL and is the only module that
knows both, so nothing below it can import it back (the layering is an import-linter contract in
``.importlinter``):

* `opener`: URL -> an open store;
* `sqlite_store`: the embedded single-replica backend;
* `redis_store`: the shared backend, on `redis_connection` (the auto-pipelined hot-path
  connection) and `redis_scripts` (the Lua scripts, one per state change);
* `codec`: the byte encodings of jobs, results and log lines both backends store.
"""
