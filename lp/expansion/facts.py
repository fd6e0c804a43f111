"""The facts of a model's family: the ``ARCHS`` override where there is one, else what
``lp.expansion.discover`` finds on a tiny copy of the model."""

from __future__ import annotations

from typing import Any

from lp.expansion.arch import ARCHS, ArchFacts


def arch_facts(config: Any) -> ArchFacts:
    """The facts for a model's config (a ``PretrainedConfig`` or a ``config.json``
    dict): the ``ARCHS`` entry when there is one (an explicit override), else what
    ``lp.expansion.discover`` finds on a tiny copy of the model. Raises LpError
    with the reason when the family cannot be expanded safely."""
    model_type = config.get("model_type") if isinstance(config, dict) else config.model_type
    if model_type in ARCHS:
        return ARCHS[model_type]
    from lp.expansion.discover import discover  # torch and transformers: only when needed

    return discover(config)
