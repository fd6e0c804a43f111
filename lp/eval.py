"""``python -m lp.eval``: benchmark a checkpoint through lm-evaluation-harness.

Loads the model once, runs the configured suite (conf/eval/) on it, prints a
table and writes ``eval.json`` atomically: next to a local model, or into
``out`` / the run directory. Bad input is one ``error:`` line and exit 2,
before the model loads where it can be, and leaves no eval.json behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lp.base.checkpoint_dirs import check_checkpoint
from lp.core.config import setting
from lp.core.errors import LpError, exit_on_refusal, run_cli
from lp.core.files import check_output, write_atomic
from lp.measure.benchmarks.suite import Suite, SuiteResult, load_tasks, run_suite
from lp.schemas import check

EVAL_FILE = "eval.json"


def device_setting(v) -> str | None:
    ok = v in ("auto", "cpu", "cuda") or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit())
    return None if ok else "auto, cpu, cuda or cuda:N"


@dataclass
class EvalRunSettings:
    """The settings at the top of ``conf/evaluate.yaml``."""

    out: str | None = None  # the directory eval.json goes to
    device: str = setting(device_setting)


@hydra.main(version_base=None, config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with exit_on_refusal():  # here, not only around main: Hydra would add a line of its own
            run(cfg, run_dir)
    finally:
        _remove_if_empty(run_dir)


def run(cfg: DictConfig, run_dir: Path) -> tuple[SuiteResult, Path]:
    """Evaluate ``cfg.model`` on ``cfg.eval``; returns the results and the eval.json written."""
    check(cfg, {"": EvalRunSettings})
    device = _device(cfg.device)
    suite = Suite.from_cfg(cfg.eval)
    if cfg.model.name_or_path and not cfg.model.get("gguf_file"):  # a GGUF file is checked as one
        check_checkpoint(str(cfg.model.name_or_path), tokenizer=True)
    out = _out_dir(cfg, run_dir)
    if cfg.out:  # where eval.json goes must take it, before the suite runs
        check_output(out, "into", "out")
    check_output(out / EVAL_FILE, "file", "out")
    tasks = load_tasks(suite)  # unknown names, missing data and code execution fail here, before the model
    from lp.base.models import load_model, load_tokenizer
    from lp.training.bases import resolve_base

    name = resolve_base(cfg.model, cfg.data)  # a GGUF file converts once; the tiny base builds once
    tokenizer = load_tokenizer(name)
    model = load_model(name, cfg.model.attn, cfg.model.dtype).to(device)
    result = run_suite(model, tokenizer, suite, tasks)
    out = out / EVAL_FILE
    write_atomic(out, json.dumps(result.to_json(model=name), indent=2) + "\n")
    print(result.table())
    print(f"lp: {suite.name} suite in {result.seconds:.0f}s; wrote {out}")
    return result, out


def _out_dir(cfg: DictConfig, run_dir: Path) -> Path:
    if cfg.out:
        return Path(str(cfg.out)).expanduser()
    local = Path(str(cfg.model.name_or_path or "")).expanduser()
    return local if cfg.model.name_or_path and local.is_dir() else run_dir


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise LpError(
            f"device={requested} needs a CUDA GPU, and this machine has none visible; use device=cpu or auto"
        )
    if requested.startswith("cuda:") and int(requested[5:]) >= torch.cuda.device_count():
        raise LpError(f"device={requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return requested


def _remove_if_empty(run_dir: Path) -> None:
    """No empty run directory is left behind when eval.json went elsewhere (or nowhere)."""
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


if __name__ == "__main__":
    run_cli(main)
