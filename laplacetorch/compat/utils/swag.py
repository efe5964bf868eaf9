"""laplace-torch's ``laplace.utils.swag`` names."""

from ...subnet_masks import fit_diagonal_swag_var

__all__ = ["fit_diagonal_swag_var"]
