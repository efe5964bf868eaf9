"""laplace-torch's `laplace.curvature.asdl` names (curvature-type selectors)."""

from . import AsdlEF, AsdlGGN, AsdlHessian

__all__ = ["AsdlEF", "AsdlGGN", "AsdlHessian"]
