"""kubefal's operator: reconciles each FalApp into runner Deployments, Services, policies,
its scaler object and a truthful status, and actuates the builtin scaler.

Layers (checked by import-linter): ``handlers`` (kopf decorators only) call ``reconcile``,
which combines the pure ``render`` and ``status`` functions with ``kube`` (the only module
that talks to the API) and ``actuator`` (the subscription to the gateway's scaling signals,
decoded by the pure ``signals``). ``python -m kubefal_operator`` runs it.
"""
