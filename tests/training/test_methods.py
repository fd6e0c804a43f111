"""The baselines: what trains, that they start as the base model, and that exports merge."""

import pytest
import torch
from transformers import LlamaForCausalLM

from lp.core.errors import LpError
from lp.expansion import decoder_layers, make_plan
from lp.training.callbacks import FreezeCallback
from lp.training.methods import METHODS, get_method, prepare
from lp.training.methods.moe import MixedDownProj, fold
from lp.training.module import CausalLMModule
from tests.conftest import tiny_llama
from tests.training.test_callbacks import fit

IDS = torch.randint(0, 99, (2, 12), generator=torch.Generator().manual_seed(3))
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}


def trained(name, steps=3):
    base, model = tiny_llama(2), tiny_llama(2)
    method = get_method(name, 0)
    model = prepare(model, method, LORA)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, base(IDS).logits), "a method must start as the base model"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = CausalLMModule(model, make_plan(2, 0), method=method, lr=1e-2)
    fit(module, [FreezeCallback()], steps=steps)
    return module, before


@pytest.mark.parametrize("name", ["lora", "moe"])
def test_only_added_parameters_train_and_export_merges(name):
    module, before = trained(name)
    model = module.model.eval()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(("lora_" in k or ".moe_" in k) for k in changed), changed
    with torch.no_grad():
        reference = model(IDS).logits
        hf, weights = module.export_weights()
        assert type(hf).__name__ == "LlamaForCausalLM"
        assert not any("lora_" in k or "moe_" in k or "base_layer" in k for k in weights)
        plain = LlamaForCausalLM(hf.config).eval()
        plain.load_state_dict(weights, strict=True)  # exactly the base architecture's tensors
        torch.testing.assert_close(plain(IDS).logits, reference, rtol=1e-5, atol=1e-5)
        # asking for the export changed nothing: the method's model still computes the same
        assert torch.equal(model(IDS).logits, reference)


def test_moe_starts_as_an_exact_identity_and_learns_its_mixture():
    lin = torch.nn.Linear(8, 4)
    mixed = MixedDownProj(lin)
    h = torch.randn(3, 8)
    assert torch.equal(mixed(h), lin(h))
    with torch.no_grad():
        mixed.moe_logits.copy_(torch.tensor([0.3, -0.2]))
        mixed.moe_down.weight.normal_()
    folded = fold(
        {"weight": lin.weight, "bias": lin.bias},
        {"weight": mixed.moe_down.weight, "bias": mixed.moe_down.bias},
        mixed.moe_logits,
    )
    torch.testing.assert_close(torch.nn.functional.linear(h, **folded), mixed(h))


def test_full_finetune_trains_everything():
    module, before = trained("full_finetune", steps=3)  # step 1 has lr 0 (warmup)
    after = module.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if "rotary" not in k)


def test_expand_full_trains_old_and_new_blocks():
    model = tiny_llama(2)
    from lp.expansion import expand_model

    plan = make_plan(2, 1)
    expand_model(model, plan)
    fit(CausalLMModule(model, plan, method="expand_full"), [FreezeCallback()], steps=1)
    assert all(p.requires_grad for p in decoder_layers(model).parameters())


@pytest.mark.parametrize(
    "name, blocks, message",
    [
        ("in_place", 0, "method=in_place names the layers to train by expansion.blocks > 0"),
        ("moe", 2, "set expansion.blocks=0"),
        ("full_finetune", 8, "use method=block_expansion / expand_full"),
        ("block_expansion", 0, "needs expansion.blocks > 0"),
        ("adapters", 0, "method.name='adapters' is unknown"),
    ],
)
def test_method_settings_that_contradict_are_refused(name, blocks, message):
    with pytest.raises(LpError, match=message):
        get_method(name, blocks)


def test_every_method_has_a_config():
    from tests.conftest import ROOT

    assert {p.stem for p in (ROOT / "conf/method").glob("*.yaml")} == set(METHODS)


# What each method trains, written from the paper and lp's docs, not read from lp.training.methods:
# editing a method (or its config) to train something else fails here.
TRAINS = {
    "block_expansion": lambda name, plan: any(name.startswith(f"model.layers.{j}.") for j in plan.new_layers),
    "expand_full": lambda name, plan: True,
    "full_finetune": lambda name, plan: True,
    "lora": lambda name, plan: ".lora_A." in name or ".lora_B." in name,
    "moe": lambda name, plan: ".moe_down." in name or name.endswith(".moe_logits"),
    # no new blocks: the layers 8 blocks would copy, every layer of the 8-layer smoke base
    "in_place": lambda name, plan: name.startswith("model.layers."),
}


@pytest.mark.parametrize("name", sorted(TRAINS))
def test_the_real_config_trains_exactly_what_the_method_says(name, lp_cache, tmp_path, monkeypatch):
    from lp.train import run
    from tests.commands.test_train import compose_cfg

    assert set(TRAINS) == set(METHODS)
    monkeypatch.setenv("LP_CACHE", str(lp_cache))
    cfg = compose_cfg([f"method={name}", f"logger.save_dir={tmp_path}", "trainer.max_steps=1",
                       "trainer.val_check_interval=1", "export=false"])  # fmt: skip
    module = run(cfg, tmp_path).module
    params = dict(module.model.named_parameters())
    trains = {n for n, p in params.items() if p.requires_grad}
    assert trains and trains == {n for n in params if TRAINS[name](n, module.plan)}
