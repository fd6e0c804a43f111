"""``callbacks.benchmark``: the benchmark suite before and after training.

Runs the configured suite (conf/eval/) on the model being trained
(``pl_module.model``: whatever the method built, LoRA adapters and MoE experts
included, evaluated as it computes, never merged or saved) at step 0, after the
last step and optionally every ``every_n_steps``; on rank 0 only, with the
model in eval mode and without a KV cache, both restored afterwards, and with
the random-number state of training untouched.

Logs ``bench/<group>/<task>/<metric>``, ``bench/<group>/average``,
``forgetting/bench/general`` (step-0 general average minus the current one:
positive = forgot) and ``gain/bench/<group>`` for the other groups, and writes
each evaluation's ``eval.json`` to ``<out_dir>/bench/step_<N>.json``.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from lp.core.config import boolean, integer, setting
from lp.core.errors import LpError
from lp.core.files import write_atomic
from lp.measure.benchmarks.suite import Suite, SuiteResult, bench_deltas, load_tasks, run_suite


@dataclass
class BenchmarkConfig:
    """``callbacks.benchmark``: the benchmark suite (``eval``) during training."""

    enabled: Any = setting(boolean)
    every_n_steps: int | None = setting(integer(1, optional=True))


class BenchmarkCallback(L.Callback):
    def __init__(
        self,
        suite: Mapping | Suite,
        tokenizer=None,
        out_dir: str | Path | None = None,
        every_n_steps: int | None = None,
    ):
        self.suite = suite if isinstance(suite, Suite) else Suite.from_cfg(suite)  # checked: BenchmarkConfig
        self.every = int(every_n_steps) if every_n_steps else None
        # unknown tasks, missing data and code execution while it is off fail now, before the
        # model loads; the tasks are loaded afresh for each evaluation (the harness keeps state)
        load_tasks(self.suite)
        self.tokenizer, self.out_dir = tokenizer, Path(out_dir) if out_dir else None
        self.baseline: dict[str, float] | None = None  # group averages at step 0
        self.history: list[tuple[int, SuiteResult]] = []
        self._done: set[int] = set()

    # step 0: on_train_start runs outside the validation loop's inference mode
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:  # a resumed run has its step-0 scores (state_dict)
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every and trainer.global_step % self.every == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step in self._done:
            return
        self._done.add(step)
        if trainer.is_global_zero:
            tokenizer = self.tokenizer or _tokenizer(trainer)
            with _rng_kept():
                result = run_suite(
                    pl_module.model, tokenizer, self.suite, load_tasks(self.suite), _autocast(trainer)
                )
            self._record(trainer, step, result)
        trainer.strategy.barrier("benchmark")

    def _record(self, trainer: L.Trainer, step: int, result: SuiteResult) -> None:
        if self.baseline is None:
            self.baseline = result.groups
        metrics = result.tags() | bench_deltas(self.baseline, result.groups)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        self.history.append((step, result))
        if self.out_dir is not None:
            payload = result.to_json(step=step) | {k: v for k, v in metrics.items() if "/bench/" in k}
            write_atomic(self.out_dir / "bench" / f"step_{step}.json", json.dumps(payload, indent=2) + "\n")
        print(f"lp: benchmark at step {step} ({result.seconds:.0f}s): " + _summary(result.groups), flush=True)

    # a resumed run keeps measuring against the same step-0 scores and does not redo step 0
    def state_dict(self) -> dict:
        return {"baseline": self.baseline, "done": sorted(self._done)}

    def load_state_dict(self, state: dict) -> None:
        self.baseline = state.get("baseline")
        self._done = set(state.get("done", []))


def _tokenizer(trainer: L.Trainer):
    tok = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule is not None else None
    if tok is None:
        raise LpError("callbacks.benchmark needs the tokenizer: pass it, or train with lp's data module")
    return tok


def _autocast(trainer: L.Trainer) -> str | None:
    """The harness turns autocast off unless told: under mixed precision, say which."""
    precision = str(trainer.precision)
    if "mixed" in precision:
        return "bfloat16" if precision.startswith("bf16") else "float16"
    return None


def _summary(groups: Mapping[str, float]) -> str:
    return ", ".join(f"{g} {v:.4f}" for g, v in groups.items())


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """Evaluation draws no numbers from training's generators (few-shot sampling,
    dropout-free sampling paths): a run with the callback trains like one without."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)
