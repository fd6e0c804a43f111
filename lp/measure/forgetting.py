"""What the model keeps of the base, measured at every evaluation.

- **Per-row forgetting** on the retained domains (``RETAINED``: ``general``, held-out
  prose; ``self``, text sampled from the base itself, ``lp.corpus.own_text``): each eval
  row's loss minus the same row's loss at step 0. Its standard error
  (``forgetting/<domain>_se``, rows as units) is that of the *difference*, which is far
  smaller than the error of the loss level (``val/<domain>/loss_se``): what the rows
  share cancels.
- **``forgetting/kl``**: the mean per-token KL(base ‖ model) of the next-token
  distributions on the general rows, teacher-forced, with its standard error
  (``forgetting/kl_se``, rows as units). Exactly 0 before the first step, never
  negative. The base's distributions (``Reference``) come from

  - ``bypass``: the model itself with its new blocks skipped. Exact and free of memory,
    valid only while the original weights stay as loaded and the new blocks start as
    identities (block expansion, LoRA on the new blocks, in a run that expands);
  - ``cache``: the step-0 distributions kept in memory (and in checkpoints): whole, or
    each token's ``topk`` most likely base tokens plus the tail's total mass. The top-k
    form is the KL between the two distributions coarsened to k+1 outcomes: a lower
    bound of the full KL, exact where the tail carries no mass.

Every rank measures its share of the rows; the step-0 values are gathered so that each
rank (and rank 0's checkpoint) holds them all, by global row index.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lp.core.config import boolean, choice, integer, setting
from lp.core.errors import LpError
from lp.measure.rowstats import RowStats

RETAINED = ("general", "self")  # the base's own domains: what forgetting is measured on
KL_DOMAIN = "general"
REFERENCES = ("auto", "bypass", "cache")
STATE_KEY = "lp_forgetting"  # the checkpoint entry that holds the step-0 values


@dataclass
class ForgettingConfig:
    """The ``forgetting`` group: the KL to the base and how the base's distributions are had;
    fixed across a resume (a cache of step-0 distributions is in the checkpoint)."""

    kl: Any = setting(boolean, fixed=True)
    reference: str = setting(choice(*REFERENCES), fixed=True)
    topk: int | None = setting(integer(1, optional=True), fixed=True)


def choose_reference(requested: str, kl: bool, bypassable: bool, why_not: str) -> str | None:
    """The reference a run uses: ``None`` without KL; ``auto`` is ``bypass`` where it is
    valid (``bypassable``), else ``cache``. An explicit ``bypass`` where it is not valid
    is refused in one line, with ``why_not``."""
    if requested not in REFERENCES:
        raise LpError(f"forgetting.reference={requested!r} is unknown; allowed: {', '.join(REFERENCES)}")
    if not kl:
        return None
    if requested == "auto":
        return "bypass" if bypassable else "cache"
    if requested == "bypass" and not bypassable:
        raise LpError(f"forgetting.reference=bypass cannot give the base's distributions here: {why_not}; "
                      "use forgetting.reference=cache (or auto)")  # fmt: skip
    return requested


class Forgetting(torch.nn.Module):
    """The step-0 row losses of the retained domains, the KL reference, and the
    per-evaluation statistics (torchmetrics states, summed over ranks)."""

    def __init__(self, domains: Sequence[str], reference: str | None = None, topk: int | None = None,
                 new_layers: Sequence[int] = ()):  # fmt: skip
        super().__init__()
        self.domains = [d for d in domains if d in RETAINED]
        if reference is not None and KL_DOMAIN not in self.domains:
            raise LpError("forgetting.kl needs the general eval set (data.general); "
                          "set forgetting.kl=false or give data.general")  # fmt: skip
        self.reference, self.topk, self.new_layers = reference, topk, tuple(new_layers)
        self.diffs = torch.nn.ModuleDict({d: RowStats() for d in self.domains})
        self.kl = RowStats()
        self.baseline: dict[str, dict[int, float]] = {}  # domain -> global row -> step-0 loss
        self.cache: dict[int, tuple[torch.Tensor, ...]] = {}  # global row -> step-0 distribution
        self._recording = False

    # -- one evaluation -------------------------------------------------------------------

    def start(self) -> None:
        """An evaluation begins: the first one records the step-0 values."""
        self._recording = not self.baseline

    def update(self, module, domain: str, rows: torch.Tensor, losses: torch.Tensor, ids: torch.Tensor,
               logits: torch.Tensor, labels: torch.Tensor, position_ids=None) -> None:  # fmt: skip
        """One eval batch of ``domain``: its rows' global indices and losses, the inputs and
        the model's logits (``module``: the LightningModule, for the bypassed forward)."""
        if domain not in self.domains:
            return
        keys = [int(r) for r in rows]
        losses = losses.detach().double().cpu()
        if self._recording:
            self.baseline.setdefault(domain, {}).update(zip(keys, losses.tolist(), strict=True))
        base = torch.tensor([self.baseline[domain][k] for k in keys], dtype=torch.float64)
        self.diffs[domain].update(losses - base)
        if domain == KL_DOMAIN and self.reference is not None:
            self.kl.update(self.kl_rows(module, keys, ids, logits, labels, position_ids))

    def finish(self) -> dict[str, torch.Tensor]:
        """``forgetting/<domain>_se`` and ``forgetting/kl`` (+ ``_se``); resets for the next."""
        if self._recording:
            self.baseline = _gathered(self.baseline)
            if self.reference == "cache":
                self.cache = _gathered_cache(self.cache)
            self._recording = False
        out = {}
        for d, m in self.diffs.items():
            if m.update_called:
                out[f"forgetting/{d}_se"] = m.compute()[1]
        if self.kl.update_called:
            mean, se = self.kl.compute()
            out["forgetting/kl"], out["forgetting/kl_se"] = mean, se
        for m in [*self.diffs.values(), self.kl]:
            m.reset()
        return out

    def reset(self) -> None:
        for m in [*self.diffs.values(), self.kl]:
            m.reset()

    # -- KL(base || model) ------------------------------------------------------------------

    def kl_rows(self, module, keys: list[int], ids, logits, labels, position_ids=None) -> torch.Tensor:
        """Per-row mean KL(base ‖ model) over the predicted tokens of a general batch."""
        if self.reference == "bypass":
            with bypassed(module.model, self.new_layers), torch.no_grad():
                base = module(ids, None, position_ids).logits
            refs = [full_reference(b) for b in base]
        else:
            if self._recording:
                for k, row in zip(keys, logits, strict=True):
                    self.cache[k] = _to_cpu(self.compress(row))
            refs = [tuple(t.to(logits.device) for t in self.cache[k]) for k in keys]
        return torch.stack([_row_kl(ref, row, target) for ref, row, target in
                            zip(refs, logits, labels[:, 1:], strict=True)])  # fmt: skip

    def compress(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A row's base distribution as it is kept: whole log-probabilities, or the top-k
        log-probabilities, their token ids and the log of the tail's mass."""
        if self.topk is None:
            return full_reference(logits)
        logp = F.log_softmax(logits[:-1].float(), -1)
        values, ids = logp.topk(min(self.topk, logp.shape[-1]), dim=-1)
        return values, ids.int(), _log_tail(logp, ids)

    # -- checkpoints ------------------------------------------------------------------------

    def state(self) -> dict:
        return {"baseline": self.baseline, "cache": self.cache}

    def load(self, state: dict) -> None:
        self.baseline = {d: dict(v) for d, v in state.get("baseline", {}).items()}
        self.cache = dict(state.get("cache", {}))


def full_reference(logits: torch.Tensor) -> tuple[torch.Tensor]:
    return (F.log_softmax(logits[:-1].float(), -1),)


def _row_kl(ref: tuple[torch.Tensor, ...], logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the row's predicted positions of KL(base ‖ model), float64."""
    logq = F.log_softmax(logits[:-1].float(), -1)
    if len(ref) == 1:  # the whole distribution
        (logp,) = ref
        per_token = (logp.exp() * (logp - logq)).sum(-1)
    else:  # top-k + tail: the KL of the distributions coarsened to k+1 outcomes
        values, ids, tail = ref
        head = (values.exp() * (values - logq.gather(-1, ids.long()))).sum(-1)
        q_tail = _log_tail(logq, ids.long())
        p_tail = tail.exp()
        per_token = head + torch.where(p_tail > 0, p_tail * (tail - q_tail), torch.zeros_like(p_tail))
    # per token a KL is >= 0; float rounding of nearly equal distributions may dip below it
    per_token = per_token.clamp(min=0).double()
    keep = target != -100
    return per_token[keep].sum() / keep.sum().clamp(min=1)


def _log_tail(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside ``ids`` at every position (exact: a log-sum-exp
    over the other tokens, not 1 minus the head)."""
    return logp.scatter(-1, ids, float("-inf")).logsumexp(-1)


@contextlib.contextmanager
def bypassed(model: torch.nn.Module, layers: Sequence[int]) -> Iterator[None]:
    """The model with decoder layers ``layers`` skipped: each returns its input."""
    from lp.expansion import decoder_layers

    blocks = decoder_layers(model)

    def skip(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        return (x, *output[1:]) if isinstance(output, tuple) else x

    handles = [blocks[j].register_forward_hook(skip, with_kwargs=True) for j in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _to_cpu(ts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach().cpu() for t in ts)


def _gathered(baseline: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    """Every rank's step-0 row losses, on every rank."""
    parts = _all_gather(baseline)
    out: dict[str, dict[int, float]] = {}
    for part in parts:
        for d, rows in part.items():
            out.setdefault(d, {}).update(rows)
    return out


def _gathered_cache(cache: dict) -> dict:
    out: dict = {}
    for part in _all_gather(cache):
        out.update(part)
    return out


def _all_gather(obj) -> list:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def cache_bytes(rows: int, positions: int, vocab: int, topk: int | None) -> int:
    """Memory the ``cache`` reference holds: float32 log-probabilities of every token, or
    k float32 values + k int32 ids + one float32 tail per position."""
    per_position = vocab * 4 if topk is None else topk * 8 + 4
    return rows * positions * per_position
