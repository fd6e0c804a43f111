"""The standard error of a validation loss: rows as units, summed over ranks."""

import math
import statistics

import pytest
import torch

from lp.measure.rowstats import RowStdErr, row_losses
from tests.conftest import tiny_llama


def test_standard_error_of_row_means():
    values = torch.tensor([2.0, 2.5, 3.5, 1.0, 2.25])
    m = RowStdErr()
    m.update(values[:2])
    m.update(values[2:])
    expected = statistics.stdev(values.tolist()) / math.sqrt(len(values))
    assert m.compute().item() == pytest.approx(expected, rel=1e-12)


def test_one_row_has_no_standard_error():
    m = RowStdErr()
    m.update(torch.tensor([1.5]))
    assert math.isnan(m.compute().item())


def test_ranks_sum_to_the_value_of_one_device():
    """Two ranks' states merged as torchmetrics' sync merges them (its dist_reduce_fx)
    give what one device gives for all the rows."""
    rows = torch.rand(13, generator=torch.Generator().manual_seed(0)) * 4
    whole, a, b = RowStdErr(), RowStdErr(), RowStdErr()
    whole.update(rows)
    a.update(rows[:6])
    b.update(rows[6:])
    a.merge_state(b)
    assert a.compute().item() == pytest.approx(whole.compute().item(), rel=1e-12)


def test_row_losses_average_to_the_models_own_loss():
    model = tiny_llama()
    ids = torch.randint(0, 99, (3, 16), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[1, :5] = -100  # rows with fewer targets count their own targets only
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        rows = row_losses(out.logits, labels)
        for i in range(3):
            one = model(input_ids=ids[i : i + 1], labels=labels[i : i + 1]).loss
            assert rows[i].item() == pytest.approx(one.item(), rel=1e-5)
    counts = (labels[:, 1:] != -100).sum(1)
    assert (rows * counts).sum() / counts.sum() == pytest.approx(out.loss.item(), rel=1e-5)
