"""laplace-torch's `laplace.curvature.curvlinops` names (curvature-type selectors)."""

from . import CurvlinopsEF, CurvlinopsGGN, CurvlinopsHessian, CurvlinopsInterface

__all__ = ["CurvlinopsEF", "CurvlinopsGGN", "CurvlinopsHessian", "CurvlinopsInterface"]
