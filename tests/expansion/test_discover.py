"""lp.expansion.discover: what it finds on tiny copies of transformers' own families."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from lp.core.errors import LpError
from lp.expansion import ARCHS, expand_model, make_plan
from lp.expansion.arch import depth_fields
from lp.expansion.discover import Refused, build, discover, find_layers, tiny_config
from tests.expansion.test_families import IDS


def block_names(model_type: str) -> list[str]:
    model = build(tiny_config(model_type))
    facts = discover(model_type)
    return list(model.get_submodule(facts.layers)[0].state_dict())


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_discovery_agrees_with_every_archs_override(model_type):
    found, listed = discover(model_type), ARCHS[model_type]
    names = block_names(model_type)
    assert [n for n in names if found.is_residual_out(n)] == [n for n in names if listed.is_residual_out(n)]
    assert found.norm_zero == listed.norm_zero and found.layers == listed.layers


@pytest.mark.parametrize(
    "model_type, zeroed",
    [
        ("gpt2", ["attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]),
        ("starcoder2", ["self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.c_proj.weight",
                        "mlp.c_proj.bias"]),
        # post-norm: the projections, not the norms after them (the paper's zero_out)
        ("olmo2", ["self_attn.o_proj.weight", "mlp.down_proj.weight"]),
        # fused qkv is restored before o_proj: what stays zero is the last write
        ("phi3", ["self_attn.o_proj.weight", "mlp.down_proj.weight"]),
        # the shared expert's gate stays: sigmoid(gate) times a zero output is zero
        ("qwen2_moe", ["self_attn.o_proj.weight", "mlp.experts.down_proj",
                       "mlp.shared_expert.down_proj.weight"]),
        ("olmoe", ["self_attn.o_proj.weight", "mlp.experts.down_proj"]),
    ],
)  # fmt: skip
def test_zeroed_tensors_are_exactly_the_residual_writers(model_type, zeroed):
    facts = discover(model_type)
    assert sorted(n for n in block_names(model_type) if facts.is_residual_out(n)) == sorted(zeroed)


def test_saved_names_per_expert_and_prefix():
    assert "block_sparse_moe.experts.*.w2.weight" in discover("mixtral").residual_out
    assert "mlp.experts.*.down_proj.weight" in discover("qwen2_moe").residual_out
    assert discover("gpt2").layers == "transformer.h" and discover("gpt2").saved_layers is None


def test_per_layer_fields_and_layer_index_are_found():
    assert discover("smollm3").per_layer_config == ("layer_types", "no_rope_layers")
    assert discover("gemma3_text").per_layer_config == ("layer_types",)
    assert discover("qwen2_moe").layer_index_lists == ("mlp_only_layers",)
    assert ("self_attn", "layer_idx", 0) in discover("llama").layer_index
    assert ("attn", "layer_idx", 0) in discover("gpt2").layer_index


def test_layer_index_lists_follow_the_layout_and_stay_exact():
    # a user's Qwen2-MoE with dense layers 0 and 3: the copy of layer 3 must be dense too
    cfg = tiny_config("qwen2_moe", layers=5)
    cfg.mlp_only_layers = [0, 3]
    plan = make_plan(5, 2)  # new blocks copy layers 2 and 4
    assert depth_fields(lambda f: getattr(cfg, f, None), plan, discover(cfg))["mlp_only_layers"] == [0, 4]
    base, model = build(cfg), build(cfg)
    expand_model(model, plan)
    rebuilt = AutoModelForCausalLM.from_config(
        type(cfg).from_dict(model.config.to_dict()), attn_implementation="eager"
    ).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, base(IDS).logits)
        assert torch.equal(rebuilt(IDS).logits, base(IDS).logits)


@pytest.mark.parametrize(
    "model_type, reason",
    [("bert", "no identity even with all its tensors zeroed"), ("gemma3", "composite (multimodal)")],
)
def test_what_cannot_be_done_safely_is_refused_in_one_line(model_type, reason):
    with pytest.raises(LpError) as e:
        discover(model_type)
    assert reason in str(e.value) and "\n" not in str(e.value) and model_type in str(e.value)


def test_shared_blocks_are_refused():
    shared = nn.Linear(2, 2)
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Sequential(shared), nn.Sequential(shared)])
    with pytest.raises(Refused, match="share parameters"):
        find_layers(model, 2)
    with pytest.raises(Refused, match="no list of num_hidden_layers=3"):
        find_layers(model, 3)


def test_results_are_cached_per_config():
    assert discover("gpt_neox") is discover("gpt_neox")
    cfg = tiny_config("qwen2_moe")
    cfg.mlp_only_layers = [1]
    assert discover(cfg) is not discover("qwen2_moe")
