"""laplace-torch's ``laplace.utils.matrix``: ``KronDecomposed`` is the class of a compat
``KronLaplace``'s ``H`` and ``posterior_precision`` (its ``to_matrix``, ``diag``,
``eigenvalues`` and ``eigenvectors``), so ``isinstance`` checks hold."""

from __future__ import annotations

from ..classes import KronPosterior as KronDecomposed

__all__ = ["KronDecomposed"]
