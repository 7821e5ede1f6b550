"""kubefal's admission webhook: checks FalApps against what only the cluster knows.

The CRD schema and its CEL rules reject what a manifest alone shows to be wrong; this webhook
adds the checks that need cluster state (machine types in the catalogue, referenced ConfigMaps
and Secrets that exist, GPU node capacity) and warns about valid but costly specs. It runs as
its own Deployment so a ``failurePolicy: Fail`` webhook never depends on the operator being up.
``validation`` holds the rules (pure), ``cluster`` reads the cluster, ``app`` is the HTTP
surface, ``settings`` the flags, ``metrics`` its Prometheus counts, and ``__main__`` serves it
over HTTPS with uvicorn (and ``/metrics`` on a plain-HTTP port of its own).
"""
