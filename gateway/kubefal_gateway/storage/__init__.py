"""fal's file storage, realtime tokens and KV store, served by the gateway on the REST listener.

fal's clients send files to two hard-coded hosts (`rest.fal.ai` for tokens and upload
initiation, `v3.fal.media` for CDN uploads); kubefal serves the same protocol on one listener
(`--rest-port`) so that `fal_client.upload*`, `realtime()` and `fal.toolkit` uploads work
against a cluster with environment settings only. One concern per module:

* `names`: validated namespaces, object ids and path-traversal-proof file names;
* `signing`: HMAC-signed, expiring capabilities (file URLs, CDN tokens, realtime tokens);
* `blobs`: the `BlobStore` protocol every backend implements, and its errors;
* `local` / `s3`: the embedded (local disk or volume) and the S3-compatible backends;
* `core`: uploads, multipart uploads, reads and retention, knowing nothing of HTTP;
* `routes`: the raw-ASGI REST listener mapping fal's protocol onto the core;
* `forms`: one file field out of a multipart/form-data body (app-file and `/data` parts);
* `runtime`: opening the backend from the settings and the retention sweeper.

The protocol itself is recorded in docs/fal-storage.md.
"""
