import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lp.core.errors import LpError
from lp.expansion import decoder_layers, expand_model, make_plan
from lp.training.callbacks import FreezeCallback, IdentityCheck, find_non_identity_blocks
from lp.training.module import CausalLMModule
from tests.conftest import tiny_llama


def batches(n=12, seq=16):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 99, (seq,), generator=g) for _ in range(n)]
    return DataLoader([{"input_ids": r, "labels": r} for r in rows], batch_size=4)


def fit(module, callbacks, steps=3):
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        accelerator="cpu",
    )
    trainer.fit(module, train_dataloaders=batches())
    return trainer


def expanded(init="zero_out", layers=4, blocks=2):
    plan = make_plan(layers, blocks, init=init)
    return expand_model(tiny_llama(layers), plan), plan


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_only_new_blocks_change():
    model, plan = expanded()
    before = snapshot(model)
    fit(CausalLMModule(model, plan, lr=1e-2), [FreezeCallback(), IdentityCheck()])
    after = model.state_dict()
    new_prefixes = tuple(f"model.layers.{j}." for j in plan.new_layers)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all(k.startswith(new_prefixes) for k in changed), sorted(changed)
    for j in plan.new_layers:  # every new block moved, including its zeroed projections
        assert f"model.layers.{j}.self_attn.o_proj.weight" in changed
        assert f"model.layers.{j}.mlp.down_proj.weight" in changed


def test_optimizer_sees_only_trainable_parameters():
    model, plan = expanded()
    module = CausalLMModule(model, plan)
    trainer = fit(module, [FreezeCallback()], steps=1)
    in_opt = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_opt == trainable
    assert trainable == {id(p) for j in plan.new_layers for p in decoder_layers(model)[j].parameters()}


def test_freeze_options_add_norms_embeddings_head():
    model, plan = expanded()
    cb = FreezeCallback(train_norms=True, train_embeddings=True, train_lm_head=True)
    cb.freeze_before_training(CausalLMModule(model, plan))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.embed_tokens.weight" in trainable and "lm_head.weight" in trainable
    assert "model.norm.weight" in trainable and "model.layers.0.input_layernorm.weight" in trainable
    assert "model.layers.0.mlp.up_proj.weight" not in trainable


@pytest.mark.parametrize("options", [{}, {"train_lm_head": True}, {"train_embeddings": True}])
def test_a_tied_head_is_one_tensor_that_trains_only_when_asked(options):
    plan = make_plan(4, 2)
    model = expand_model(tiny_llama(4, tie_word_embeddings=True), plan)
    before = snapshot(model)
    fit(CausalLMModule(model, plan, lr=1e-2), [FreezeCallback(**options)])
    head = model.get_output_embeddings().weight
    assert head is model.get_input_embeddings().weight  # still tied after training
    assert torch.equal(head, before["model.embed_tokens.weight"]) == (not options)


def test_nothing_to_train_is_refused():
    model = tiny_llama(2)
    with pytest.raises(LpError, match="nothing to train"):
        FreezeCallback().freeze_before_training(CausalLMModule(model, make_plan(2, 0)))


def test_identity_check_passes_on_identity_blocks():
    model, plan = expanded("zero_norm")
    ids = next(iter(batches()))["input_ids"]
    assert find_non_identity_blocks(CausalLMModule(model, plan), ids) == []


def test_identity_check_names_a_broken_block():
    model, plan = expanded()
    broken = plan.new_layers[1]
    with torch.no_grad():
        decoder_layers(model)[broken].mlp.down_proj.weight[0, 0] = 1e-3
    with pytest.raises(LpError, match=f"new block {broken} "):
        fit(CausalLMModule(model, plan), [FreezeCallback(), IdentityCheck()])


def test_copy_init_fails_the_check_unless_disabled():
    model, plan = expanded("copy")
    with pytest.raises(LpError, match="identity_check.enabled=false"):
        fit(CausalLMModule(model, plan), [FreezeCallback(), IdentityCheck()])
    fit(CausalLMModule(model, plan), [FreezeCallback(), IdentityCheck(enabled=False)], steps=1)
