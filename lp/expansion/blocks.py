"""Insert new blocks into a loaded model, given its family's facts (``lp.expansion.arch``):
what both the training path (``lp.expansion.inplace``) and the discovery of a family's
facts (``lp.expansion.discover``) expand with."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lp.expansion.arch import ArchFacts, check_init, depth_fields, init_value
from lp.expansion.plan import ExpansionPlan


def insert_blocks(model: nn.Module, plan: ExpansionPlan, facts: ArchFacts) -> nn.Module:
    """Insert the plan's new blocks into ``model`` (in place) and return it.

    Original blocks are kept as the same module objects (their tensors are not
    copied); new blocks are deep copies of their source block, initialised per
    ``plan.init``. Attention ``layer_idx`` and per-layer config fields follow the
    new layout so generation with a KV cache works.
    """
    check_init(plan, facts)
    layers = model.get_submodule(facts.layers)
    if len(layers) != plan.base_layers:
        raise ValueError(f"plan expects {plan.base_layers} base layers, model has {len(layers)}")
    new = set(plan.new_layers)
    blocks = []
    for j, src in enumerate(plan.layer_map):
        block = copy.deepcopy(layers[src]) if j in new else layers[src]
        if j in new:
            init_new_block(block, plan.init, facts)
        blocks.append(block)
    parent, _, name = facts.layers.rpartition(".")
    setattr(model.get_submodule(parent), name, nn.ModuleList(blocks))
    renumber_layers(model, facts)
    expand_config(model.config, plan, facts)
    return model


def init_new_block(block: nn.Module, init: str, facts: ArchFacts) -> None:
    """Initialise a copied block in place; see ``init_value``."""
    with torch.no_grad():
        for name, t in block.state_dict(keep_vars=True).items():
            value = init_value(name, init, facts)
            if value is not None:
                t.fill_(value)


def renumber_layers(model: nn.Module, facts: ArchFacts) -> None:
    for j, block in enumerate(model.get_submodule(facts.layers)):
        for path, attr, offset in facts.layer_index:
            setattr(block.get_submodule(path), attr, j + offset)
        if hasattr(block, "layer_idx"):
            block.layer_idx = j


def expand_config(config, plan: ExpansionPlan, facts: ArchFacts) -> None:
    for field, value in depth_fields(lambda f: getattr(config, f, None), plan, facts).items():
        setattr(config, field, value)
