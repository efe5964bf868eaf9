"""The data pass's reduction over a torch.distributed process group.

When torch.distributed is initialised, every accumulated quantity of a data pass (curvature
sums, factor numerators, losses, counts, GGN-vector products) is summed over the ranks, so
each rank ends with the result of one process on all the data. The group is chosen per call:
``Laplace(..., process_group=...)`` scopes it around its own passes (:func:`over`); the
default is the default group when torch.distributed is initialised, and no communication
otherwise.

Ranks must agree before they sum. A fit's scope first compares what identifies the fit on
every rank (:class:`FitIdentity`: θ*'s fingerprint, the parameter subset, the likelihood, the
structure; the output width C at each exchange), so ranks fitting different things stop
together before any pass. Before any tensor is reduced the ranks exchange what they computed
and whether they failed, so a rank whose data fails validation, or which is interrupted,
stops every rank with its error instead of leaving the others waiting in a collective; a
failing rank also posts its error in the process group's store, which the others read
between batches (:class:`PeerWatch`), so they stop within seconds rather than at the end of
their pass. Each rank announces its arrival at an exchange in the store, so a rank that died
is named by the survivors. A rank with an empty shard joins with zeros.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .agreement import FitIdentity, weights_fingerprint
from .exchange import POLL_S, PeerStopped, PeerWatch, agree
from .reduce import gather_rows, reduce_sums
from .scope import _SCOPE, RANK_SEED_STRIDE, _Scope, active_group, rank_seed

__all__ = [
    "POLL_S",
    "RANK_SEED_STRIDE",
    "FitIdentity",
    "PeerStopped",
    "PeerWatch",
    "active_group",
    "gather_rows",
    "over",
    "rank_seed",
    "reduce_sums",
    "weights_fingerprint",
]


@contextmanager
def over(group: Any, fit: FitIdentity | None = None) -> Iterator[None]:
    """Reduce the data passes inside over ``group`` (``None``: the default group when
    torch.distributed is initialised; ``False``: no communication).

    With ``fit``, the ranks first compare what identifies it (one small exchange): they must
    fit the same weights θ*, parameter subset, likelihood and structure, and see the same
    output width C at every exchange inside.

    Raises:
        ValueError: on every rank, naming what differs and on which ranks.
    """
    token = _SCOPE.set(_Scope(group, fit))
    try:
        if fit is not None and (active := active_group()) is not None:
            agree(active, fit)
        yield
    finally:
        _SCOPE.reset(token)
