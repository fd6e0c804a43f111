"""Writing a trained model as an ordinary Hugging Face checkpoint, atomically."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from lp.checkpoints import EXPANSION_FILE, publish_dir
from lp.expansion import ExpansionPlan


def export_checkpoint(model, tokenizer, plan: ExpansionPlan, base_model: str, out: Path) -> Path:
    """safetensors weights + config + tokenizer + ``lp_expansion.json`` in ``out``.

    Built in a temporary sibling directory and renamed at the end, so ``out``
    either holds a complete checkpoint or does not exist.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / EXPANSION_FILE).write_text(plan.to_json(base_model=base_model) + "\n")
        publish_dir(tmp, out, replace=True)  # an older export goes only once this one is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
