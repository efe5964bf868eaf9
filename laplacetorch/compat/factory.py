"""laplace-torch's ``Laplace(...)`` function: the class for a subset and a structure."""

from __future__ import annotations

from typing import Any

from torch import nn

from . import classes, functional, last_layer, subnetwork
from .enums import plain

__all__ = ["CLASSES", "Laplace"]

#: (subset_of_weights, hessian_structure) -> class, laplace-torch's combinations
CLASSES = {
    ("all", "full"): classes.FullLaplace,
    ("all", "kron"): classes.KronLaplace,
    ("all", "diag"): classes.DiagLaplace,
    ("all", "lowrank"): classes.LowRankLaplace,
    ("last_layer", "full"): last_layer.FullLLLaplace,
    ("last_layer", "kron"): last_layer.KronLLLaplace,
    ("last_layer", "diag"): last_layer.DiagLLLaplace,
    ("subnetwork", "full"): subnetwork.FullSubnetLaplace,
    ("subnetwork", "diag"): subnetwork.DiagSubnetLaplace,
}


def Laplace(
    model: nn.Module,
    likelihood: Any,
    subset_of_weights: Any = "last_layer",
    hessian_structure: Any = "kron",
    *args: Any,
    **kwargs: Any,
) -> classes.BaseLaplace:
    """The laplace-torch class for ``subset_of_weights`` and ``hessian_structure``, built
    with the remaining arguments (laplace-torch's defaults: last layer, KFAC).

    Raises:
        ValueError: for a combination laplace-torch does not have.
    """
    subset, structure = plain(subset_of_weights), plain(hessian_structure)
    if subset == "subnetwork" and structure not in ("full", "diag"):
        raise ValueError("Subnetwork Laplace requires a full or diagonal Hessian approximation!")
    if structure == "gp":
        if kwargs.pop("functional_approximation", "sod") != "sod":
            raise ValueError(
                "functional_approximation: only 'sod' (FunctionalLaplace) is offered; Nyström "
                "(ELLA) and variational (VaLLA) are not"
            )
        gp = {"all": functional.FunctionalLaplace, "last_layer": functional.FunctionalLLLaplace}
        if subset not in gp:
            raise ValueError("hessian_structure='gp' takes subset_of_weights 'all' or 'last_layer'")
        return gp[subset](model, likelihood, *args, **kwargs)
    cls = CLASSES.get((subset, structure))
    if cls is None:
        raise ValueError(
            f"no Laplace for subset_of_weights={subset!r} and hessian_structure={structure!r}; "
            f"laplace-torch's combinations are {sorted(CLASSES)}"
        )
    return cls(model, likelihood, *args, **kwargs)
