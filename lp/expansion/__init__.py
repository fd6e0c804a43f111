"""Block expansion: pure torch + transformers, no Lightning, no Hydra."""

from lp.expansion.arch import ARCHS, ArchFacts, arch_facts
from lp.expansion.inplace import decoder_layers, expand_model
from lp.expansion.plan import INITS, POSITIONS, SOURCES, ExpansionPlan, make_plan

__all__ = [
    "ARCHS",
    "INITS",
    "POSITIONS",
    "SOURCES",
    "ArchFacts",
    "ExpansionPlan",
    "arch_facts",
    "decoder_layers",
    "expand_model",
    "make_plan",
]
