"""The standard error of a validation loss, with eval rows as the units.

The tokens of one row are not independent draws (they share a document and a
context), so a standard error over tokens would be far too small. The rows are
the units: each row's mean next-token loss is one observation, and the standard
error of their mean says how far the loss could move on another eval set of the
same size. It is what ``data.eval_tokens`` should be chosen by.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric


class RowStats(Metric):
    """Mean and standard error of the mean of per-row values, ``std(ddof=1) / sqrt(n)``;
    ``compute()`` returns ``tensor([mean, stderr])`` (float64).

    Hand-written: torchmetrics aggregates means, not their standard errors. Its
    states (count, sum, sum of squares, in float64) are summed over ranks by
    torchmetrics' own sync, so a run on any number of devices gives the value one
    device would give for the same rows. Fewer than two rows: the error is NaN."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("n", "total", "squares"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        v = values.detach().to(self.total.device, torch.float64).flatten()
        self.n += v.numel()
        self.total += v.sum()
        self.squares += (v * v).sum()

    def compute(self) -> torch.Tensor:
        mean = self.total / self.n.clamp(min=1)
        if self.n < 2:
            return torch.stack([mean, torch.tensor(float("nan"), dtype=torch.float64, device=mean.device)])
        variance = (self.squares - self.total**2 / self.n) / (self.n - 1)
        return torch.stack([mean, (variance.clamp(min=0) / self.n).sqrt()])


class RowStdErr(RowStats):
    """The standard error alone (``val/<domain>/loss_se``)."""

    def compute(self) -> torch.Tensor:
        return super().compute()[1]


def row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's mean next-token loss (float32), as transformers' causal-LM loss
    computes it for a whole batch (labels shifted by one, -100 ignored).

    One row at a time, so at most one row's logits are held in float32 beside
    the model's own."""
    out = []
    for row, target in zip(logits, labels[:, 1:], strict=True):
        loss = F.cross_entropy(row[:-1].float(), target, ignore_index=-100, reduction="sum")
        out.append(loss / (target != -100).sum().clamp(min=1))
    return torch.stack(out)
