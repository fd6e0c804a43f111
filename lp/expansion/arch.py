"""Per-architecture facts, in one table, so adding a family is a few lines.

Names are relative to one decoder block and match tensor names in a block's
``state_dict`` as well as in a checkpoint (``model.layers.<i>.<name>``): a
prefix matches the tensor of that name and every tensor below it, so
``self_attn.o_proj`` covers its weight and, where the family has one, its bias.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lp.core.errors import LpError

if TYPE_CHECKING:
    from lp.expansion.plan import ExpansionPlan


@dataclass(frozen=True)
class ArchFacts:
    # attribute path from the *ForCausalLM to the block list; "model.layers.<i>." in checkpoints
    layers: str = "model.layers"
    # what writes into the residual stream: zeroed by init=zero_out
    residual_out: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")
    # the block's norms: set to ``norm_zero`` by init=zero_norm
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    # the weight value at which a norm outputs zeros (Gemma scales by 1 + weight)
    norm_zero: float = 0.0
    # (module below the block, attribute, offset): where the block's index lives (the
    # KV-cache slot), renumbered to ``j + offset`` for expanded layer j
    layer_index: tuple[tuple[str, str, int], ...] = (("self_attn", "layer_idx", 0),)
    # config fields holding one entry per layer
    per_layer_config: tuple[str, ...] = ("layer_types",)
    # config fields listing layer indices (e.g. Qwen2-MoE's mlp_only_layers)
    layer_index_lists: tuple[str, ...] = ()
    # the block list's name in saved checkpoints, when it differs from ``layers``
    saved_layers: str | None = None

    def is_residual_out(self, name: str) -> bool:
        return _matches(name, self.residual_out)

    def is_norm(self, name: str) -> bool:
        return _matches(name, self.norms)


def depth_fields(get: Callable[[str], Any], plan: ExpansionPlan, facts: ArchFacts) -> dict[str, Any]:
    """The config fields that follow the depth, for the plan's layout: ``num_hidden_layers``
    and every per-layer list (``get(field)`` reads the base config) remapped through
    ``plan.layer_map``. One rule for the in-memory model and for ``lp.expand``."""
    out: dict[str, Any] = {"num_hidden_layers": plan.num_layers}
    for field in facts.per_layer_config:
        values = get(field)
        if isinstance(values, (list, tuple)) and len(values) == plan.base_layers:
            out[field] = [values[src] for src in plan.layer_map]
    for field in facts.layer_index_lists:  # a copy is of the same kind as its source
        values = get(field)
        if isinstance(values, (list, tuple)):
            out[field] = [j for j, src in enumerate(plan.layer_map) if src in set(values)]
    return out


def check_init(plan: ExpansionPlan, facts: ArchFacts) -> None:
    if plan.init == "zero_norm" and plan.new_layers and not facts.norms:
        raise LpError("expansion.init=zero_norm: this family has no block norm that can output zeros")


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(_pattern(p).fullmatch(name) for p in prefixes)


@functools.cache
def _pattern(prefix: str) -> re.Pattern:
    # "*" stands for one name part (an expert index); the prefix covers everything below it
    return re.compile(re.escape(prefix).replace(r"\*", r"[^.]+") + r"(\..+)?")


LLAMA = ArchFacts()
# every expert's down projection: fused 3-D in memory (transformers 5), one tensor per
# expert in checkpoints (Mixtral's w2, Qwen-MoE's down_proj)
MOE = ArchFacts(
    residual_out=(
        "self_attn.o_proj",
        "mlp.experts.down_proj",
        "block_sparse_moe.experts.*.w2",
        "mlp.experts.*.down_proj",
    )
)
GEMMA = ArchFacts(norm_zero=-1.0)
GEMMA2 = ArchFacts(
    norm_zero=-1.0,
    norms=(
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
)

ARCHS: dict[str, ArchFacts] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,  # q/k/v biases do not write into the residual stream
    "qwen3": LLAMA,  # q_norm/k_norm sit inside attention, ahead of o_proj
    "phi3": LLAMA,  # fused qkv_proj/gate_up_proj; the outputs are still o_proj/down_proj
    "gemma": GEMMA,
    "gemma2": GEMMA2,
    "mixtral": MOE,
    "qwen3_moe": MOE,
}


def init_value(name: str, init: str, facts: ArchFacts) -> float | None:
    """The constant a new block's tensor ``name`` is set to, or None to keep the copy.

    ``zero_out`` (paper): residual-output projections and their biases are zero,
    so the block adds nothing to the residual stream. ``zero_norm``: the block's
    norms output zeros, so its sublayers see zeros (the ablation the paper argues
    against: the norm's gradient vanishes). ``copy``: untouched, not an identity.
    """
    if init == "zero_out" and facts.is_residual_out(name):
        return 0.0
    if init == "zero_norm" and facts.is_norm(name):
        return facts.norm_zero
    return None
