"""laplace-torch's ``RunningNLLMetric``: the mean negative log-likelihood of class labels
under predicted probabilities, accumulated over batches (torchmetrics is not a dependency: the
same ``update`` / ``compute`` / ``reset`` on plain tensors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RunningNLLMetric"]


class RunningNLLMetric:
    """Σ −log p(label) / (number of labels not ``ignore_index``) over every ``update``.

    Args:
        ignore_index: the label of positions that are not counted.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every batch."""
        self.nll_sum = torch.tensor(0.0)
        self.n_valid_labels = torch.tensor(0.0)

    def update(self, probs: Tensor, targets: Tensor) -> None:
        """Add a batch: ``probs`` ``[..., C]`` and integer ``targets`` ``[...]``."""
        flat = probs.reshape(-1, probs.shape[-1])
        labels = targets.reshape(-1)
        nll = F.nll_loss(flat.log(), labels, ignore_index=self.ignore_index, reduction="sum")
        self.nll_sum = self.nll_sum.to(nll) + nll.detach()
        self.n_valid_labels = self.n_valid_labels.to(nll) + (labels != self.ignore_index).sum()

    def compute(self) -> Tensor:
        """The mean NLL so far (NaN before any label)."""
        return self.nll_sum / self.n_valid_labels
