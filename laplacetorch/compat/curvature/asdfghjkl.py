"""laplace-torch's `laplace.curvature.asdfghjkl` names (curvature-type selectors)."""

from . import AsdfghjklEF, AsdfghjklGGN, AsdfghjklHessian

__all__ = ["AsdfghjklEF", "AsdfghjklGGN", "AsdfghjklHessian"]
