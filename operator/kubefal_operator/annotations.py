"""Annotation keys only the operator writes and reads (the shared ones are in
``kubefal_api.naming``); a leaf module so ``render`` and ``status`` stay independent."""

from __future__ import annotations

from typing import Final

from kubefal_api import v1alpha1

GENERATION: Final = f"{v1alpha1.GROUP}/generation"
"""On the Deployment: the FalApp ``metadata.generation`` it was rendered from. The status
reports it as ``observedGeneration``, so that value always names an applied spec."""
