"""The LightningModule (lp.training.module): one step for every method, AdamW over what
trains with no decay on norms and biases, the schedule's warmup, the validation loss
weighted by predicted tokens."""

import math

import pytest
import torch

from lp.expansion import expand_model, make_plan
from lp.training.callbacks import FreezeCallback
from lp.training.module import CausalLMModule
from tests.conftest import tiny_llama
from tests.training.test_callbacks import fit


def expanded_module(**optim):
    model, plan = tiny_llama(4), make_plan(4, 2)
    expand_model(model, plan)
    return CausalLMModule(model, plan, **optim)


def test_adamw_holds_what_trains_and_decays_only_matrices():
    module = expanded_module(lr=1e-3, weight_decay=0.1, warmup_ratio=0.25)
    trainer = fit(module, [FreezeCallback()], steps=4)
    opt = trainer.optimizers[0]
    groups = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    trainable = [p for p in module.model.parameters() if p.requires_grad]
    assert sum(len(ps) for ps in groups.values()) == len(trainable)
    assert all(p.ndim >= 2 for p in groups[0.1]) and all(p.ndim < 2 for p in groups[0.0])
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.get_last_lr()[0] < 1e-3  # warmed up, then decaying along the cosine


def test_the_forward_builds_no_kv_cache():
    module = expanded_module()
    out = module(torch.arange(8).view(1, 8))
    assert getattr(out, "past_key_values", None) is None and getattr(out, "cache", None) is None


def test_validation_loss_weights_rows_by_predicted_tokens():
    module = expanded_module()
    module.trainer = None
    ids = torch.randint(0, 99, (2, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[1, 5:] = -100  # the second row predicts 4 tokens, the first 9
    with torch.no_grad():
        out = module.model(input_ids=ids, labels=labels)
        per_row = [module.model(input_ids=ids[i : i + 1], labels=labels[i : i + 1]).loss for i in range(2)]
    weighted = (per_row[0] * 9 + per_row[1] * 4) / 13
    assert out.loss.item() == pytest.approx(weighted.item(), rel=1e-5)
    assert not math.isclose(out.loss.item(), (per_row[0] + per_row[1]).item() / 2, rel_tol=1e-4)
