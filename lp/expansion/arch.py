"""Per-architecture facts, in one table, so adding a family is a few lines.

For each Hugging Face ``model_type``: where the decoder blocks live, which of a
block's tensors write into the residual stream (zeroed by ``init=zero_out``),
which are its norms (zeroed by ``init=zero_norm``), and which config fields hold
one entry per layer and so grow with depth.
"""

from __future__ import annotations

from dataclasses import dataclass

from lp.errors import LpError


@dataclass(frozen=True)
class ArchFacts:
    layers: str = "model.layers"  # attribute path from the *ForCausalLM to the block list
    residual_out: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")  # modules; weight and bias zeroed
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    attention: str = "self_attn"  # module that carries ``layer_idx`` for the KV cache
    per_layer_config: tuple[str, ...] = ("layer_types",)


_LLAMA_LIKE = ArchFacts()

ARCHS: dict[str, ArchFacts] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
}


def arch_facts(model_type: str) -> ArchFacts:
    try:
        return ARCHS[model_type]
    except KeyError:
        raise LpError(
            f"model_type {model_type!r} is not supported for block expansion; supported: "
            f"{', '.join(sorted(ARCHS))} (add an entry to lp/expansion/arch.py: ARCHS)"
        ) from None
