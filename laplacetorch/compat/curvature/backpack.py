"""laplace-torch's `laplace.curvature.backpack` names (curvature-type selectors)."""

from . import BackPackEF, BackPackGGN, BackPackInterface

__all__ = ["BackPackEF", "BackPackGGN", "BackPackInterface"]
