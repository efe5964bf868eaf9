"""laplace-torch's `laplace.curvature.asdl` names (curvature-type selectors)."""

from . import AsdlEF, AsdlGGN, AsdlHessian, AsdlInterface

__all__ = ["AsdlEF", "AsdlGGN", "AsdlHessian", "AsdlInterface"]
