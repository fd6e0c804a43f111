"""Training methods: what is built around the base and which parameters train.

All methods share one LightningModule and one training step; a method is a
``Method`` value: which parameters train (read by the freeze callback), how the
model is prepared after loading and expansion, and how it is turned back into an
ordinary Hugging Face model for export.

- ``block_expansion`` (paper): new blocks train, everything else is frozen.
- ``expand_full``: expansion, then every parameter trains (added capacity without freezing).
- ``full_finetune``: no expansion, every parameter trains.
- ``lora``: no expansion, LoRA adapters (``peft``) on the base; export merges them.
- ``moe``: the paper's MoE comparison (``lp.methods.moe``); export folds it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from lp.errors import LpError
from lp.expansion import decoder_layers


@dataclass(frozen=True)
class Method:
    name: str
    trainable: str  # "new_blocks" | "all" | "added" (parameters the method adds)
    expands: bool  # whether expansion.blocks > 0 makes sense


METHODS = {
    "block_expansion": Method("block_expansion", "new_blocks", True),
    "expand_full": Method("expand_full", "all", True),
    "full_finetune": Method("full_finetune", "all", False),
    "lora": Method("lora", "added", False),
    "moe": Method("moe", "added", False),
}


def get_method(name: str, blocks: int) -> Method:
    if name not in METHODS:
        raise LpError(f"method.name={name!r} is unknown; allowed: {', '.join(METHODS)}")
    m = METHODS[name]
    if m.expands and blocks == 0:
        raise LpError(f"method={name} needs expansion.blocks > 0; for no expansion use method=full_finetune")
    if not m.expands and blocks != 0:
        raise LpError(
            f"method={name} trains the base model without expansion, but expansion.blocks={blocks}; "
            f"set expansion.blocks=0 (method={name} does) or use method=block_expansion / expand_full"
        )
    return m


def prepare(model, method: Method, settings: dict):
    """Add what the method trains (LoRA adapters, MoE experts) to a loaded model."""
    if method.name == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
            target_modules=list(settings["target_modules"]), task_type="CAUSAL_LM",
        )  # fmt: skip
        return get_peft_model(model, cfg)
    if method.name == "moe":
        from lp.methods.moe import add_experts

        return add_experts(model, decoder_layers(model))
    return model


def for_export(model, method: Method):
    """An ordinary Hugging Face model computing the same function."""
    if method.name == "lora":
        return model.merge_and_unload()
    if method.name == "moe":
        from lp.methods.moe import merge_experts

        return merge_experts(model, decoder_layers(model))
    return model


def is_added(name: str) -> bool:
    """Parameters a method added: LoRA's ``lora_A``/``lora_B``, MoE's new experts."""
    return "lora_" in name or ".moe_" in name
