"""laplace-torch's `laplace.curvature.backpack` names (curvature-type selectors)."""

from . import BackPackEF, BackPackGGN

__all__ = ["BackPackEF", "BackPackGGN"]
