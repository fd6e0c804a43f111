"""Prove an expanded checkpoint is the identity it claims to be, before it is published.

Both models are loaded in float32 (the base first cast to the output's dtype, so a
``--dtype`` conversion compares like with like) and run on one random batch; the
logits must be equal bit for bit. Otherwise the error names the first base layer
whose output differs in the expanded model, i.e. the block that broke it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lp.core.errors import LpError
from lp.expansion.plan import ExpansionPlan


def verify_expansion(src: Path, dst: Path, plan: ExpansionPlan, dtype: str | None = None) -> None:
    from transformers import AutoModelForCausalLM

    from lp.expansion.discover import no_progress_bars

    def load(path, as_dtype):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=as_dtype, attn_implementation="eager")
        return model.float().eval()

    with no_progress_bars():
        base = load(src, getattr(torch, dtype) if dtype else "auto")
        expanded = load(dst, torch.float32)
    first = first_broken_layer(base, expanded, plan)
    if first is not None:
        k, j = first
        raise LpError(
            f"the expanded model is not an identity: the output of base layer {k} (expanded layer {j}) "
            f"differs; new blocks below it: {[n for n in plan.new_layers if n < j]} (nothing was written; "
            "--no-verify skips this check)"
        )


def first_broken_layer(base, expanded, plan: ExpansionPlan, seq: int = 16) -> tuple[int, int] | None:
    """(base layer, expanded layer) of the first base layer whose output differs, or
    None when the logits are equal."""
    vocab = base.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        b = base(input_ids=ids, output_hidden_states=True, use_cache=False)
        e = expanded(input_ids=ids, output_hidden_states=True, use_cache=False)
    if torch.equal(b.logits, e.logits):
        return None
    where = plan.original_layers
    for k in range(plan.base_layers - 1):  # the last hidden state may have the final norm applied
        if not torch.equal(b.hidden_states[k + 1], e.hidden_states[where[k] + 1]):
            return k, where[k]
    return plan.base_layers - 1, where[-1]
