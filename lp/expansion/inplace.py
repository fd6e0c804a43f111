"""Expand a loaded Hugging Face causal LM in memory (the training path)."""

from __future__ import annotations

from torch import nn

from lp.expansion.arch import ArchFacts
from lp.expansion.blocks import insert_blocks
from lp.expansion.facts import arch_facts
from lp.expansion.plan import ExpansionPlan


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    if hasattr(model, "get_base_model"):  # a peft wrapper (LoRA): the blocks are in the base
        model = model.get_base_model()
    return model.get_submodule(arch_facts(model.config).layers)


def expand_model(model: nn.Module, plan: ExpansionPlan, facts: ArchFacts | None = None) -> nn.Module:
    """Insert the plan's new blocks into ``model`` (in place) and return it
    (``lp.expansion.blocks.insert_blocks``); ``facts`` default to ``arch_facts`` of the
    model's config."""
    return insert_blocks(model, plan, facts or arch_facts(model.config))
