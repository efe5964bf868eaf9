"""laplace-torch's `laplace.curvature.curvlinops` names (curvature-type selectors)."""

from . import CurvlinopsEF, CurvlinopsGGN, CurvlinopsHessian

__all__ = ["CurvlinopsEF", "CurvlinopsGGN", "CurvlinopsHessian"]
