"""Every supported family: exact identity in float32, KV-cache generation, config round trip."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lp.expansion import ARCHS, decoder_layers, expand_model, make_plan
from lp.expansion.discover import build, tiny_config

LAYERS = 5  # odd, so two interleaved blocks make uneven groups (3, 2)
# model_type -> the hard property it covers; built tiny from transformers' own config class
FAMILIES = {
    "llama": "the reference pre-norm block, untied head",
    "mistral": "sliding window",
    "qwen2": "q/k/v biases (not in the residual stream)",
    "qwen3": "q_norm/k_norm inside attention",
    "gemma": "norms scaled by 1 + weight, tied head",
    "gemma2": "post-sub-layer norms, sliding/full layer types",
    "phi3": "fused qkv_proj and gate_up_proj",
    "mixtral": "MoE without shared expert (w1/w2/w3 in checkpoints)",
    "qwen3_moe": "MoE, fused experts in memory",
    "gpt2": "biased Conv1D output projections, tied head, transformer.h",
    "gpt_neox": "fused QKV, parallel attention+MLP, biased dense outputs",
    "starcoder2": "biased o_proj and c_proj",
    "phi": "parallel attention+MLP with one shared norm, biased outputs",
    "falcon": "fused QKV, parallel attention, transformer.h",
    "olmo2": "post-norm blocks (norm after each sub-layer output)",
    "exaone4": "post-norm blocks with per-layer attention types",
    "gemma3_text": "per-layer sliding/full attention pattern",
    "cohere2": "per-layer attention types, parallel block",
    "qwen2_moe": "MoE with a gated shared expert, mlp_only_layers",
    "olmoe": "MoE without shared expert",
    "smollm3": "per-layer no_rope_layers",
}
IDS = torch.randint(3, 99, (2, 12), generator=torch.Generator().manual_seed(0))


def family_config(model_type: str):
    return tiny_config(model_type, layers=LAYERS)


def family_model(model_type: str, seed: int = 0):
    """A tiny random model of the family, every tensor (norms, biases) non-trivial."""
    return build(family_config(model_type), seed)


def test_every_family_in_the_table_is_tested():
    assert set(ARCHS) <= set(FAMILIES) and len(FAMILIES) >= len(ARCHS) + 10


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("position", ["interleave", "top", "bottom"])
def test_expanded_logits_equal_base_exactly(model_type, position):
    base, model = family_model(model_type), family_model(model_type)
    plan = make_plan(LAYERS, 2, position)
    expand_model(model, plan)
    assert len(decoder_layers(model)) == LAYERS + 2
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, base(IDS).logits)


@pytest.mark.parametrize("model_type", sorted(set(ARCHS) - {"qwen2"}))  # no biases ahead of o_proj
def test_zero_norm_is_an_identity_without_attention_biases(model_type):
    base, model = family_model(model_type), family_model(model_type)
    expand_model(model, make_plan(LAYERS, 2, init="zero_norm"))
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, base(IDS).logits)


def test_zero_norm_is_not_an_identity_with_qkv_biases():
    # Qwen2's v bias reaches o_proj even when the block's input is zeroed: the identity
    # check exists to catch exactly this
    base, model = family_model("qwen2"), family_model("qwen2")
    expand_model(model, make_plan(LAYERS, 2, init="zero_norm"))
    with torch.no_grad():
        assert not torch.equal(model(IDS).logits, base(IDS).logits)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_generation_with_cache_equals_without(model_type):
    model = family_model(model_type)
    expand_model(model, make_plan(LAYERS, 2, init="copy"))  # copies are not identities: cache slots matter
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(
        model.generate(IDS[:, :4], use_cache=True, **kw), model.generate(IDS[:, :4], use_cache=False, **kw)
    )


@pytest.mark.parametrize("model_type", FAMILIES)
def test_config_round_trips_through_autoconfig(model_type, tmp_path):
    model = family_model(model_type)
    before = model.config.to_dict().get("layer_types")
    plan = make_plan(LAYERS, 2, "top")
    expand_model(model, plan)
    model.save_pretrained(tmp_path)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert cfg.num_hidden_layers == LAYERS + 2
    if before is not None:
        assert cfg.layer_types == [before[i] for i in plan.layer_map]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model(IDS).logits)
