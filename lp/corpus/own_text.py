"""The base's own text: an eval domain (``self``) sampled once from the base model.

Its step-0 loss is the base's own cross-entropy on its samples (an estimate of its
entropy), and its rise measures forgetting of what the base itself models, free of
any repair: a held-out corpus the base models imperfectly (Gutenberg prose through a
Q4-dequantised model) can *fall* under any update of the original weights, which
reads as negative forgetting; text the base generated sits at the base's own optimum,
so no change of the model can lower its expected loss below the base's entropy.

Rows are drawn by ancestral sampling at temperature 1 (no top-k, no top-p, nothing
suppressed), each starting from the document-start token (BOS, else EOS) and running
on through any EOS, as packed training rows do. Seeded, cached by the base's weights
(SHA-256), rows, row length and seed beside the other offline data
(``$LP_CACHE/own_text``), never trained on.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
from pathlib import Path

import torch

from lp.core.files import write_atomic

VERSION = 1  # bump when the sampling changes: old caches are then not reused


def own_text(model, tokenizer, rows: int, seq_len: int, seed: int, device: str | torch.device = "cpu"):
    """``rows`` x ``seq_len`` token ids sampled from ``model`` (``torch.long``, CPU)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    g = torch.Generator().manual_seed(seed)
    was_training, home = model.training, next(model.parameters()).device
    model.eval().to(device)
    ids = torch.full((rows, 1), start, dtype=torch.long)
    # the KV cache's name: ``cache`` in transformers 5.2x, ``past_key_values`` before
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out, past = [ids], None
    try:
        with torch.no_grad():
            for _ in range(seq_len - 1):
                step = model(input_ids=ids.to(device), use_cache=True, **{key: past})
                past = getattr(step, key)
                probs = torch.softmax(step.logits[:, -1].float(), -1).cpu()
                ids = torch.multinomial(probs, 1, generator=g)
                out.append(ids)
    finally:
        model.to(home).train(was_training)
    return torch.cat(out, dim=1)


def cached_own_text(model, tokenizer, base: dict, rows: int, seq_len: int, seed: int, cache_dir: str,
                    device: str | torch.device = "cpu") -> torch.Tensor:  # fmt: skip
    """``own_text``, sampled once per base, rows, row length and seed, then read from
    ``cache_dir/own_text`` (written atomically). ``base``: ``lp.training.checkpointing.base_reference``."""
    key = json.dumps({"v": VERSION, "base": base.get("sha256") or base["path"], "rows": rows,
                      "seq_len": seq_len, "seed": seed}, sort_keys=True)  # fmt: skip
    f = Path(cache_dir).expanduser() / "own_text" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"
    if f.is_file():
        return torch.load(f, weights_only=True)
    text = own_text(model, tokenizer, rows, seq_len, seed, device)
    buf = io.BytesIO()
    torch.save(text, buf)
    write_atomic(f, buf.getvalue())
    return text
