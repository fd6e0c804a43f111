"""The LightningModule: one training step for every method.

Methods differ by which parameters train (the freeze callback decides) and by
how the model was built, never by a separate loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import GradClipAlgorithmType
from torchmetrics.aggregation import MeanMetric
from transformers import get_cosine_schedule_with_warmup

from lp.core.config import number, pair, setting
from lp.expansion import ExpansionPlan
from lp.measure.forgetting import RETAINED, STATE_KEY, Forgetting
from lp.measure.rowstats import RowStdErr, row_losses
from lp.training.checkpointing import drop_frozen, fill_frozen
from lp.training.methods import Method, export_weights, get_method


@dataclass
class OptimConfig:
    """The ``optim`` group: AdamW over the trainable parameters, cosine schedule with
    linear warmup (``CausalLMModule.configure_optimizers``); fixed across a resume."""

    lr: float = setting(number(0, open_lo=True), fixed=True)
    weight_decay: float = setting(number(0), fixed=True)
    betas: list[float] = setting(pair(number(0, 1, open_hi=True)), fixed=True)
    warmup_ratio: float = setting(number(0, 1), fixed=True)


class CausalLMModule(L.LightningModule):
    """Wraps a Hugging Face causal LM (expanded or not) and the method that trains it
    (``method.trainable`` decides what the freeze callback leaves trainable).

    Logs ``train/loss``, ``val/<domain>/loss`` for every eval domain, its standard
    error ``val/<domain>/loss_se`` (eval rows as units, ``lp.measure.rowstats``) and, for the
    base's own domains (``general``, ``self``), ``forgetting/<domain>``: the current loss
    minus the value at the first validation (run one before training, as ``lp.train``
    does), with the standard error of the per-row differences, and ``forgetting/kl``
    (``lp.measure.forgetting``: ``kl_reference`` and ``kl_topk`` say how the base's
    distributions are had; ``None``: no KL).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        plan: ExpansionPlan | None = None,
        domains: tuple[str, ...] = ("general",),
        method: Method | str = "block_expansion",
        lr: float = 2e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.06,
        kl_reference: str | None = None,
        kl_topk: int | None = None,
        train_layers: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.model, self.plan, self.domains = model, plan, list(domains)
        self.method = get_method(method) if isinstance(method, str) else method
        # full-precision tensors of frozen weights that training stores in lower precision
        # (lp.training.speed), by parameter name: the export writes these, exactly as loaded
        self.originals: dict[str, torch.Tensor] = {}
        self.model.train()  # from_pretrained returns eval mode; Lightning toggles it for evaluation
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_ratio = warmup_ratio
        self.val_loss = torch.nn.ModuleDict({d: MeanMetric() for d in self.domains})
        self.val_se = torch.nn.ModuleDict({d: RowStdErr() for d in self.domains})
        # the decoder layers that train where the method trains layers: the plan's new blocks
        # (block_expansion), or the base layers expansion would copy (in_place)
        if train_layers is None:
            train_layers = self.method.train_layers(plan) if plan is not None else ()
        self.train_layers = tuple(train_layers)
        # saved in checkpoints so a resumed run keeps measuring against the same base
        for d in RETAINED:
            if d in self.domains:
                self.register_buffer(f"baseline_{d}", torch.tensor(float("nan")))
        new = plan.new_layers if plan is not None else ()
        self.forgetting = Forgetting(self.domains, kl_reference, kl_topk, new)

    def export_weights(self, state: dict | None = None) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        """An ordinary Hugging Face model (class and config) and the weights that make it
        compute what this module's model computes now, frozen weights as loaded
        (``lp.training.methods.export_weights``). Changes nothing, so any stage may ask any time.
        ``state``: the model's full state dict where a strategy shards it (``lp.training.strategy``)."""
        return export_weights(self.model, self.method, self.originals, state)

    def forward(self, input_ids: torch.Tensor, labels=None, position_ids=None):
        # no KV cache in training or evaluation: it would be built and thrown away every step
        return self.model(input_ids=input_ids, labels=labels, position_ids=position_ids, use_cache=False)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        ids, labels = _inputs(batch)
        loss = self(ids, labels, batch.get("position_ids")).loss
        # averaged over ranks: each rank's mean over equally many tokens, so the global batch's mean
        self.log("train/loss", loss, prog_bar=True, batch_size=ids.shape[0], sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.forgetting.start()

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        ids, labels = _inputs(batch)
        positions = batch.get("position_ids") if isinstance(batch, dict) else None
        out = self(ids, labels, positions)
        predicted = (labels[:, 1:] != -100).sum()
        domain = self.domains[dataloader_idx]
        self.val_loss[domain].update(out.loss.float(), weight=predicted)
        losses = row_losses(out.logits, labels)
        self.val_se[domain].update(losses)
        if not self.trainer.sanity_checking:
            self.forgetting.update(self, domain, _rows(batch), losses, ids, out.logits, labels, positions)

    def on_validation_epoch_end(self) -> None:
        metrics = [*self.val_loss.values(), *self.val_se.values()]
        if self.trainer.sanity_checking:
            for m in metrics:
                m.reset()
            self.forgetting.reset()
            return
        losses = {d: m.compute() for d, m in self.val_loss.items() if m.update_called}
        errors = {d: self.val_se[d].compute().float() for d in losses}
        for m in metrics:
            m.reset()
        for d, v in losses.items():
            self.log(f"val/{d}/loss", v, add_dataloader_idx=False, sync_dist=False)
            self.log(f"val/{d}/loss_se", errors[d], add_dataloader_idx=False, sync_dist=False)
        for d in self.forgetting.domains:
            if d in losses:
                baseline = getattr(self, f"baseline_{d}")
                if torch.isnan(baseline):
                    baseline.fill_(losses[d].item())
                self.log(f"forgetting/{d}", losses[d] - baseline, add_dataloader_idx=False)
        for tag, value in self.forgetting.finish().items():
            self.log(tag, value.float(), add_dataloader_idx=False, sync_dist=False)

    # checkpoints hold what trains: frozen weights come back from the rebuilt base (lp.training.checkpointing)
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        drop_frozen(self, checkpoint)
        checkpoint[STATE_KEY] = self.forgetting.state()  # the step-0 rows and distributions

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        fill_frozen(self, checkpoint)
        self.forgetting.load(checkpoint.get(STATE_KEY, {}))

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                # norms and biases are not decayed (standard for LLaMA-style training)
                (no_decay if p.ndim < 2 else decay).append(p)
        groups = [
            {"params": params, "weight_decay": wd}
            for params, wd in ((decay, self.weight_decay), (no_decay, 0.0))
            if params  # an empty group (LoRA has no 1-d parameters) breaks DeepSpeed's flattening
        ]
        # fused AdamW: one kernel for all tensors (CUDA and CPU) instead of a loop over them;
        # not with fp16's gradient scaler, which must unscale before clipping, nor under DeepSpeed,
        # whose engine steps the optimizer on its own flattened partitions
        engine = isinstance(getattr(self.trainer, "strategy", None), DeepSpeedStrategy)
        fused = _grad_scaler(self.trainer) is None and not engine
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, fused=fused)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = get_cosine_schedule_with_warmup(opt, math.ceil(self.warmup_ratio * total), total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning's mixed-precision plugin refuses to clip for a fused optimizer,
        since the fused step unscales fp16 gradients itself. In bf16 there is no
        scaler and so nothing to unscale: clip the way Lightning does in fp32.
        Under FSDP the norm is over all shards: FSDP's own ``clip_grad_norm_`` on the
        root unit (Lightning's FSDP plugin refuses norm clipping for want of it)."""
        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and _grad_scaler(self.trainer) is None:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def _grad_scaler(trainer):
    plugin = getattr(trainer, "precision_plugin", None)
    return plugin.scaler if isinstance(plugin, MixedPrecision) else None


def _inputs(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        return batch["input_ids"], batch["labels"]
    ids = batch[0]  # text eval sets: packed rows, every position is a target
    return ids, ids


def _rows(batch) -> torch.Tensor:
    """The global indices of an eval batch's rows (every rank evaluates its share)."""
    return batch["row"] if isinstance(batch, dict) else batch[1]
