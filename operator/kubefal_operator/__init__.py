"""kubefal's operator: reconciles each FalApp into runner Deployments, Services, policies and
a truthful status.

Layers (checked by import-linter): ``handlers`` (kopf decorators only) call ``reconcile``,
which combines the pure ``render`` and ``status`` functions with ``kube`` (the only module
that talks to the API). ``python -m kubefal_operator`` runs it.
"""
