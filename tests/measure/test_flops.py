"""Frozen blocks cost what they must and no more: no backward below the lowest
trainable block, no weight-gradients for frozen blocks, FLOPs as lp counts them."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lp.expansion import decoder_layers, expand_model, make_plan
from lp.measure.flops import lowest_trainable_layer, useful_flops_per_token
from lp.training.callbacks import FreezeCallback
from lp.training.module import CausalLMModule
from tests.conftest import tiny_llama

IDS = torch.randint(0, 99, (2, 16), generator=torch.Generator().manual_seed(0))


def frozen_model(position, method="block_expansion"):
    model = tiny_llama(6, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    plan = make_plan(6, 2, position)
    expand_model(model, plan)
    FreezeCallback().freeze_before_training(CausalLMModule(model, plan, method=method))
    return model.train(), plan


@pytest.mark.parametrize("position, lowest", [("top", 6), ("interleave", 3), ("bottom", 0)])
def test_backward_stops_at_the_lowest_trainable_block(position, lowest):
    model, plan = frozen_model(position)
    assert lowest_trainable_layer(model) == lowest == min(plan.new_layers)
    fired = set()
    for i, layer in enumerate(decoder_layers(model)):
        layer.register_full_backward_hook(lambda m, gi, go, i=i: fired.add(i))
    model(input_ids=IDS, labels=IDS).loss.backward()
    assert fired == set(range(lowest, plan.num_layers))  # nothing below runs backward
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name  # no weight-gradients for frozen weights


def measured_flops(model):
    with FlopCounterMode(display=False) as counter:
        model(input_ids=IDS, labels=IDS).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("position", ["top", "interleave", "bottom"])
def test_flop_accounting_matches_a_flop_counter(position):
    model, _ = frozen_model(position)
    expected = useful_flops_per_token(model, IDS.shape[1]) * IDS.numel()
    assert measured_flops(model) == pytest.approx(expected, rel=0.1)


def test_frozen_step_is_far_cheaper_than_full_finetuning():
    top, _ = frozen_model("top")
    full, _ = frozen_model("top", method="expand_full")
    assert measured_flops(top) < 0.55 * measured_flops(full)
