"""laplace-torch's ``laplace.utils.subnetmask`` names (the masks of
:mod:`laplacetorch.subnet_masks`)."""

from ... import subnet_masks as _subnet_masks
from ...subnet_masks import *  # noqa: F403

__all__ = [name for name in _subnet_masks.__all__ if name != "fit_diagonal_swag_var"]
