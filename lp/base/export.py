"""Writing a trained model as an ordinary Hugging Face checkpoint, atomically."""

from __future__ import annotations

from pathlib import Path

from lp.base.checkpoint_dirs import written_by_lp
from lp.core.files import staged_dir
from lp.expansion import ExpansionPlan


def export_checkpoint(
    module,
    tokenizer,
    plan: ExpansionPlan,
    base_model: str,
    out: Path,
    state: dict | None = None,
    record: dict | None = None,
) -> Path:
    """``module``'s model as an ordinary Hugging Face checkpoint (``export_weights``):
    safetensors weights + config + tokenizer (with its chat template, if it has one) +
    ``lp_expansion.json`` in ``out``: the plan, ``base_model`` and ``record`` (the stages).

    Built in a temporary sibling directory and renamed at the end, so ``out``
    either holds a complete checkpoint or does not exist; an older export goes
    only once this one is complete. ``state``: the full state dict a sharded
    strategy gathered (``lp.training.strategy.gathered_state``).
    """
    with staged_dir(out, replace=True, owned=written_by_lp) as tmp:
        model, weights = module.export_weights(state)
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        plan.write(tmp, **{"base_model": base_model, **(record or {})})
    return Path(out)
