"""The Lightning Trainer as lp builds it: its settings (the ``trainer`` and ``logger`` groups),
the callbacks of a run, TensorBoard continuing a resumed run's curves, and precision
``auto``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from lp.core.config import boolean, choice, integer, number, setting
from lp.core.errors import LpError
from lp.training.callbacks import FreezeCallback, IdentityCheck, Throughput
from lp.training.checkpointing import Checkpoints
from lp.training.speed import SpeedUp
from lp.training.strategy import KeepFrozenOriginals, speed_options
from lp.training.strategy import build as build_strategy

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def lightning_precisions() -> tuple:
    """The precision values Lightning's Trainer accepts, from Lightning's own type."""
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

    def flat(t):
        args = get_args(t)
        return [x for a in args for x in flat(a)] if args else [t]

    return tuple(dict.fromkeys(flat(_PRECISION_INPUT)))


def devices(v) -> str | None:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= -1 and v != 0):
        return None
    if isinstance(v, (list, tuple)) and v and all(isinstance(i, int) and i >= 0 for i in v):
        return None
    return "a positive integer, -1 (all), auto, or a list of device indices"


@dataclass
class TrainerConfig:
    """The ``trainer`` group: arguments of Lightning's ``Trainer`` (any other one may be
    added as ``+trainer.KEY=VALUE``; ``lightning_arguments`` checks its name). lp shards
    the data itself (``use_distributed_sampler`` stays false) and chooses the strategy
    (``strategy=``), the logger, the callbacks and the checkpoint plugin."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = setting(choice(*ACCELERATORS))
    devices: Any = setting(devices)
    num_nodes: int = setting(integer(1))
    use_distributed_sampler: Any = setting(choice(False))
    precision: Any = setting(lambda v: choice("auto", *lightning_precisions())(v))
    max_steps: int = setting(integer(1))
    val_check_interval: Any = setting(integer(1))
    check_val_every_n_epoch: int | None = None
    gradient_clip_val: float | None = setting(number(0, optional=True))
    accumulate_grad_batches: int = setting(integer(1), fixed=True)
    log_every_n_steps: int = setting(integer(1))
    num_sanity_val_steps: int = setting(integer(-1))
    inference_mode: Any = setting(boolean)
    enable_model_summary: Any = setting(boolean)


def lightning_arguments(trainer_cfg) -> None:
    """Refuse a ``+trainer.KEY`` that Lightning's ``Trainer`` does not take, in one line."""
    from lightning.pytorch import Trainer

    known = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for key in trainer_cfg:
        if key != "_target_" and key not in known:
            raise LpError(f"trainer.{key} is not an argument of Lightning's Trainer; see its documentation")


@dataclass
class LoggerConfig:
    """The ``logger`` group: TensorBoard (``tensorboard --logdir <run dir>``)."""

    _target_: str = setting()
    save_dir: str = setting()
    name: str = setting()
    version: str = setting()
    default_hp_metric: Any = setting(boolean)


def precision(value) -> str:
    if value == "auto":  # bf16 autocast where the hardware has it, exact float32 elsewhere
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return value


def logger(cfg, step: int):
    """TensorBoard continues a resumed run's curves: events at ``step`` and later, from
    the run that was cut off, are dropped when read (``purge_step``). A fresh start
    purges only over the events of an attempt cut off before its first checkpoint
    (else their step 0 would be doubled): a purge is a marker in the new event file, and
    TensorBoard reads a run's files in name order, which is not always the order they
    were written in (several runs of one sweep in one process, within one second)."""
    if not str(cfg.get("_target_", "")).endswith("TensorBoardLogger"):
        return instantiate(cfg)
    if step == 0:
        probe = instantiate(cfg)
        earlier = any(Path(probe.log_dir).glob("events.out.tfevents.*"))
        return instantiate(cfg, purge_step=0) if earlier else probe
    return instantiate(cfg, purge_step=step)


def callbacks(cfg, run_dir: Path, stage) -> list:
    """The callbacks of a run, in order: what trains, the identity check, throughput, the
    speed options (after the freeze callback: they read which parameters train), what the
    strategy and the stage add, and the benchmarks."""
    c = cfg.callbacks
    out = [
        FreezeCallback(**c.freeze),
        IdentityCheck(**c.identity_check),
        Throughput(**c.throughput),
        SpeedUp(**speed_options(cfg.strategy.name, cfg.speed)),
    ]
    if cfg.strategy.name.startswith("deepspeed"):
        out.append(KeepFrozenOriginals())  # the engine casts frozen weights too
    out += stage.callbacks(cfg.stage)
    if c.benchmark.enabled:  # the eval/ suite at step 0 and after the last step (lp.eval)
        from lp.measure.benchmarks.callback import BenchmarkCallback

        out.append(BenchmarkCallback(cfg.eval, out_dir=run_dir, every_n_steps=c.benchmark.every_n_steps))
    return out


def build_trainer(cfg, callbacks: list, checkpoints: Checkpoints):
    """Lightning's Trainer with lp's strategy, precision, logger, ``callbacks`` and checkpoints."""
    return instantiate(
        cfg.trainer,
        strategy=build_strategy(cfg.strategy, cfg.speed.activation_checkpointing),
        precision=precision(cfg.trainer.precision),
        logger=logger(cfg.logger, checkpoints.step),
        callbacks=[*callbacks, *checkpoints.callbacks()],
        enable_checkpointing=bool(cfg.callbacks.checkpoint.enabled),
        plugins=checkpoints.plugins(),
    )
