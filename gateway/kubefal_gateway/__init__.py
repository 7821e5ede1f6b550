"""kubefal's queue gateway: fal's queue, sync, stream and realtime API in front of runner pods.

`python -m kubefal_gateway --help` lists the settings. The pieces: `http_api` (raw ASGI routes),
`core` (components and lifespan), `dispatch` and `queue_worker` (who runs what where),
`upstream` (the runner client), `runners`/`apps`/`discovery` (what exists), `auth`, `signals`
(scaling), `metrics`; the durable queue is `queueing` with its SQLite and Redis stores.
"""
