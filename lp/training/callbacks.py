"""Callbacks that read the expansion plan: freezing, the identity check, throughput."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from lightning.pytorch.utilities import rank_zero_info

from lp.core.config import boolean, integer, number, setting
from lp.core.errors import LpError
from lp.expansion import decoder_layers
from lp.measure.benchmarks.callback import BenchmarkConfig
from lp.training.checkpointing import CheckpointConfig
from lp.training.methods import is_added
from lp.training.strategy import is_sharded


@dataclass
class FreezeConfig:
    """``callbacks.freeze``: what trains beyond what the method trains; fixed across a resume."""

    train_norms: Any = setting(boolean, fixed=True)
    train_embeddings: Any = setting(boolean, fixed=True)
    train_lm_head: Any = setting(boolean, fixed=True)


@dataclass
class IdentityCheckConfig:
    enabled: Any = setting(boolean)


@dataclass
class ThroughputConfig:
    window: int = setting(integer(1))
    peak_tflops: float | None = setting(number(0, open_lo=True, optional=True))


@dataclass
class CallbacksConfig:
    """The ``callbacks`` group: one section per callback, each owned by its callback."""

    freeze: FreezeConfig = setting()
    identity_check: IdentityCheckConfig = setting()
    throughput: ThroughputConfig = setting()
    checkpoint: CheckpointConfig = setting()
    benchmark: BenchmarkConfig = setting()


class FreezeCallback(BaseFinetuning):
    """Choose what trains: what the module's method trains (``Method.trainable``:
    ``layers``, the module's ``train_layers``: the plan's new blocks as in the paper, or
    the layers they copy for ``in_place``; ``all``; or ``added``,
    the parameters a method added: LoRA adapters, MoE experts), plus the norms,
    the input embedding or the output head when ``train_norms``,
    ``train_embeddings`` or ``train_lm_head`` asks for them."""

    def __init__(
        self, train_norms: bool = False, train_embeddings: bool = False, train_lm_head: bool = False
    ):
        super().__init__()
        self.train_norms, self.train_embeddings = train_norms, train_embeddings
        self.train_lm_head = train_lm_head

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        model, trainable = pl_module.model, pl_module.method.trainable
        if trainable == "all":
            self.make_trainable(model)
            return
        self.freeze(model, train_bn=False)
        if trainable == "layers":
            layers = decoder_layers(model)
            self.make_trainable([layers[j] for j in pl_module.train_layers])
        if trainable == "added":
            for name, p in model.named_parameters():
                p.requires_grad = is_added(name)
        if self.train_norms:
            for m in model.modules():
                if "norm" in type(m).__name__.lower():
                    self.make_trainable(m)
        if self.train_embeddings:
            self.make_trainable(model.get_input_embeddings())
        if self.train_lm_head:
            self.make_trainable(model.get_output_embeddings())
        if self.train_embeddings != self.train_lm_head and _tied_head(model):
            rank_zero_info("lp: lm_head is tied to the input embedding (one tensor): it trains as both")
        if not any(p.requires_grad for p in model.parameters()):
            raise LpError(
                "nothing to train: no new blocks or added parameters and every freeze option is off; "
                "add blocks or choose another method"
            )

    def finetune_function(self, pl_module, epoch, optimizer) -> None:
        """No gradual unfreezing: the trainable set is fixed for the whole run."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n = sum(p.numel() for p in pl_module.model.parameters() if p.requires_grad)
        if trainer.logger is not None and trainer.global_step == 0:  # once per run, not per resume
            trainer.logger.log_metrics({"perf/trainable_params": float(n)}, step=trainer.global_step)


def _tied_head(model) -> bool:
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and embeddings is not None and head.weight is embeddings.weight


class IdentityCheck(Callback):
    """Before the first optimizer step, on the first real batch, verify that every
    new block returns its input unchanged (bit for bit; exact in float32 and in
    bf16 autocast alike, since the block adds an exact zero to the residual).
    Fails the run naming the first offending block."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.done = enabled, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if not self.enabled or self.done or pl_module.plan is None or not pl_module.plan.new_layers:
            return
        if trainer.global_step > 0:  # a resumed run: the new blocks have trained, no longer identities
            self.done = True
            return
        self.done = True
        bad = find_non_identity_blocks(pl_module, batch["input_ids"], trainer)
        if bad:
            j = bad[0]
            raise LpError(
                f"identity check failed: new block {j} (copy of base layer {pl_module.plan.layer_map[j]}) "
                f"changes its input (init={pl_module.plan.init}); fix the expansion, or disable the check "
                "explicitly with identity_check.enabled=false"
            )


def find_non_identity_blocks(pl_module, input_ids: torch.Tensor, trainer=None) -> list[int]:
    """Indices (in the expanded model) of new blocks whose output differs from their input."""
    layers = decoder_layers(pl_module.model)
    seen: dict[int, bool] = {}

    def hook(j):
        def fn(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            seen[j] = torch.equal(x, y)

        return fn

    handles = [layers[j].register_forward_hook(hook(j), with_kwargs=True) for j in pl_module.plan.new_layers]
    # a sharded model computes only through its root wrapper, which gathers the shards
    root = trainer.strategy.model if trainer is not None and is_sharded(trainer) else None
    try:
        ctx = trainer.precision_plugin.forward_context() if trainer else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            root(input_ids) if root is not None else pl_module.model(input_ids=input_ids)
    finally:
        for h in handles:
            h.remove()
    return [j for j in pl_module.plan.new_layers if not seen.get(j, False)]


class Throughput(Callback):
    """Logs ``perf/tokens_per_s`` over a sliding window of training batches and,
    where the device's peak is known or configured, ``perf/mfu``: useful FLOPs
    (``lp.measure.flops``: what the step really computes, partial backward counted)
    over peak. Written by hand because Lightning's ThroughputMonitor fixes its
    own metric names and counts FLOPs of the full backward."""

    def __init__(self, window: int = 10, peak_tflops: float | None = None):
        self.window, self.peak_tflops = window, peak_tflops
        self.marks: list[tuple[float, int]] = []  # (time, tokens so far)
        self.tokens, self.flops_per_token, self.peak = 0, None, None

    def on_train_start(self, trainer, pl_module) -> None:
        from lp.measure.flops import peak_flops, useful_flops_per_token

        seq = trainer.datamodule.seq_len if trainer.datamodule is not None else None
        if seq and pl_module.plan is not None:
            self.flops_per_token = useful_flops_per_token(pl_module.model, seq)
        self.peak = peak_flops(pl_module.device, self.peak_tflops)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.tokens += batch["input_ids"].numel() * trainer.world_size
        self.marks = [*self.marks[-self.window :], (time.perf_counter(), self.tokens)]
        if len(self.marks) > 1:
            (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
            rate = (n1 - n0) / (t1 - t0)
            pl_module.log("perf/tokens_per_s", rate, rank_zero_only=True)
            if self.flops_per_token and self.peak:
                pl_module.log("perf/mfu", rate * self.flops_per_token / self.peak, rank_zero_only=True)
