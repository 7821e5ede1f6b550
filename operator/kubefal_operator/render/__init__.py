"""Pure renderers: a FalApp (and the machine catalogue) in, Kubernetes manifests out.

Nothing here imports kopf or talks to the API, so every manifest the operator writes is
unit-tested as a plain dict. ``render.children`` is the entry point the reconciler uses.
"""
