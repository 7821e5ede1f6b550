"""kubefal runner: serves an unmodified `fal.App` class inside an app pod.

``python -m kubefal_runner --app app.py::MyApp`` loads the class as ``fal run`` does, serves the
SDK's own ASGI app under uvicorn and adds what Kubernetes and the kubefal gateway need around it:
the ``max_multiplexing`` guard, readiness and health endpoints, the app's normalized configuration,
per-request log capture, a graceful drain on SIGTERM and an optional cached requirements install.
Configuration (flags and the environment the operator sets) is documented in `settings`.
"""
