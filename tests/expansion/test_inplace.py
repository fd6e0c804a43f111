import pytest
import torch
from transformers import AutoConfig, LlamaForCausalLM

from lp.core.errors import LpError
from lp.expansion import decoder_layers, expand_model, make_plan
from tests.conftest import tiny_llama

IDS = torch.randint(0, 99, (2, 17), generator=torch.Generator().manual_seed(1))


def base_and_expanded(*plan_args, layers=4):
    base, model = tiny_llama(layers), tiny_llama(layers)
    plan = make_plan(layers, *plan_args)
    return base, expand_model(model, plan), plan


@pytest.mark.parametrize("position", ["interleave", "top", "bottom", [0, 2]])
@pytest.mark.parametrize("init", ["zero_out", "zero_norm"])
def test_expanded_logits_equal_base_exactly(position, init):
    base, model, plan = base_and_expanded(2, position, "group_top", init)
    assert model.config.num_hidden_layers == 6
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, base(IDS).logits)


def test_copy_init_is_not_an_identity():
    base, model, _ = base_and_expanded(2, "interleave", "group_top", "copy")
    with torch.no_grad():
        assert not torch.allclose(model(IDS).logits, base(IDS).logits)


def test_new_blocks_are_copies_with_residual_outputs_zeroed():
    _, model, plan = base_and_expanded(2)
    layers = decoder_layers(model)
    base_layers = decoder_layers(tiny_llama(4))
    for j, src in enumerate(plan.layer_map):
        sd, ref = layers[j].state_dict(), base_layers[src].state_dict()
        for name, t in sd.items():
            zeroed = j in plan.new_layers and ("o_proj" in name or "down_proj" in name)
            assert torch.equal(t, torch.zeros_like(t) if zeroed else ref[name]), (j, name)
        assert layers[j].self_attn.layer_idx == j


def test_original_blocks_are_kept_not_copied():
    model = tiny_llama(4)
    before = list(decoder_layers(model))
    plan = make_plan(4, 2)
    expand_model(model, plan)
    after = decoder_layers(model)
    assert all(after[j] is before[plan.layer_map[j]] for j in plan.original_layers)
    assert all(after[j] is not before[plan.layer_map[j]] for j in plan.new_layers)


def test_generation_with_kv_cache_equals_without():
    _, model, _ = base_and_expanded(2)
    # break the identity so a wrong layer_idx (cache slot) would change the output
    with torch.no_grad():
        for layer in decoder_layers(model):
            layer.self_attn.o_proj.weight.add_(0.05)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = model.generate(IDS[:, :5], use_cache=True, **kw)
    without = model.generate(IDS[:, :5], use_cache=False, **kw)
    assert torch.equal(with_cache, without)


def test_config_round_trips_through_autoconfig(tmp_path):
    layer_types = ["full_attention"] * 4
    model = tiny_llama(4)
    model.config.layer_types = layer_types
    expand_model(model, make_plan(4, 2, "top"))
    model.config.save_pretrained(tmp_path)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert cfg.num_hidden_layers == 6
    assert cfg.layer_types == ["full_attention"] * 6
    reloaded = LlamaForCausalLM(cfg)
    assert len(decoder_layers(reloaded)) == 6


def test_a_family_that_is_no_identity_is_refused_with_the_reason():
    from lp.expansion.discover import build, tiny_config

    model = build(tiny_config("bert"))  # post-LayerNorm: the norm sits after the residual add
    with pytest.raises(LpError, match="'bert' cannot be expanded: a block is no identity even with all"):
        expand_model(model, make_plan(4, 1))
