"""Shared models of kubefal: the FalApp API, the machine catalogue and the names that tie them.

Every component imports this package and nothing of each other. It depends only on pydantic,
PyYAML and the standard library, so the slim runner image can carry it.

Modules: :mod:`kubefal_api.v1alpha1` (the FalApp resource), :mod:`kubefal_api.conditions`
(condition reasons), :mod:`kubefal_api.machines` (machine catalogue), :mod:`kubefal_api.naming`
(labels, annotations, child names), :mod:`kubefal_api.crds` (the CRD generator behind
``make manifests``), :mod:`kubefal_api.apikeys` (API key format and hashing).
"""
