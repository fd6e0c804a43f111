"""``python -m lp.train``: expand a base model, train it, measure forgetting, export;
with ``stage=sft``, instruction-tune a checkpoint as it is (``lp.sft``).

The Hydra entry point; the only module that knows about the config tree.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lp.callbacks import FreezeCallback, IdentityCheck, Throughput
from lp.atomic import check_output, write_atomic
from lp.checkpoints import check_checkpoint, read_expansion, written_by_lp
from lp.errors import LpError, first_line, print_error, refusal, run_cli
from lp.expansion import expand_model, make_plan
from lp.export import export_checkpoint
from lp.forgetting import choose_reference
from lp.methods import get_method, prepare
from lp.models import declared_layers, load_model, load_tokenizer, resolve_base
from lp.module import CausalLMModule
from lp.record import METRIC_FAMILIES, SETTINGS, clear_failure, mark_failed, write_hparams
from lp.resume import (
    FIXED,
    AtomicCheckpointIO,
    Resumable,
    StepCheckpoint,
    base_reference,
    check_base,
    check_no_newer,
    check_resume,
    check_world_size,
    checkpoint_dir,
    find_checkpoint,
    fixed_settings,
    read_saved,
    resumed_note,
)
from lp.settings import plain, validate
from lp.sft import ChatSamples, ChatStats, sft_method, sft_plan, stage_record
from lp.speed import SpeedUp
from lp.strategy import KeepFrozenOriginals, gathered_state, speed_options
from lp.strategy import build as build_strategy


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        run(cfg, run_dir, accepted=lambda: _record_run(cfg, run_dir))
    except Exception as e:
        refused = refusal(e)
        if refused is not None:
            print_error(refused)
        if refused is not None and hydra_cfg.mode == RunMode.RUN:
            _remove_if_unused(run_dir)
            sys.exit(2)
        # in a sweep the other runs go on; lp.report lists this one as skipped, with the
        # reason, and the multirun exits non-zero once all its runs are done
        why = first_line(refused) if refused is not None else f"crashed: {type(e).__name__}: {first_line(e)}"
        mark_failed(run_dir, list(hydra_cfg.overrides.task), why)
        raise


@dataclass
class RunResult:
    metrics: dict[str, float]  # final val/<domain>/loss, forgetting/general and, if run, bench/...
    module: CausalLMModule  # the trained model, in memory
    export: Path | None


def _record_run(cfg: DictConfig, run_dir: Path) -> None:
    """Once the run is accepted: its composed config, Hydra's and the overrides in
    ``<run dir>/.hydra`` (what Hydra itself would write before the run starts, which would
    rewrite a resumed run's record even when the resume is then refused:
    ``hydra.output_subdir`` is null), and no failure marker of an earlier attempt."""
    hydra_cfg = HydraConfig.get()
    files = {"config.yaml": cfg, "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
             "overrides.yaml": OmegaConf.create(list(hydra_cfg.overrides.task))}  # fmt: skip
    for name, node in files.items():
        write_atomic(run_dir / ".hydra" / name, OmegaConf.to_yaml(node))
    clear_failure(run_dir)  # a rerun into the same directory: an old marker no longer applies


def run(cfg: DictConfig, run_dir: Path, accepted=None) -> RunResult:
    """The whole experiment. Every setting is checked before any model loads, and nothing
    is written into ``run_dir`` before every check has passed (then ``accepted()``)."""
    validate(cfg)
    # what to continue, and whether it may be continued, before anything loads or is written
    resume_from = find_checkpoint(cfg.get("resume"), run_dir)
    settings = fixed_settings(_flat(cfg, FIXED))
    saved = read_saved(resume_from) if resume_from else None
    if saved:
        check_resume(saved, settings, resume_from)
        check_no_newer(saved, run_dir, resume_from)
    checkpoint = None if cfg.model.get("gguf_file") else cfg.model.name_or_path  # a GGUF is checked as one
    if checkpoint:
        check_checkpoint(str(checkpoint), tokenizer=True)
    if cfg.export:  # replaced at the end only if lp wrote it (or it is empty)
        check_output(run_dir / "export", "dir", "the export", replace=True, owned=written_by_lp)
    # an already expanded checkpoint (lp.expand, an lp export) trains its recorded new blocks
    recorded = read_expansion(str(checkpoint)) if checkpoint else None
    sft = cfg.stage.name == "sft"  # trains the checkpoint as it is: never expands
    plan_args = None if recorded or sft else _plan_args(cfg)
    if sft:
        method = sft_method(cfg.method.name, recorded, checkpoint)
    else:
        method = get_method(cfg.method.name, recorded.blocks if recorded else plan_args["blocks"])
    if recorded and not method.inserts:
        raise LpError(f"method={method.name} trains base layers in place; {checkpoint} is already expanded")
    expands = not (recorded or sft)  # this run inserts the new blocks itself
    kl = _kl_reference(cfg, method, expands)
    callbacks = _callbacks(cfg, run_dir)  # validates their settings before anything expensive
    # the sources are read before any model loads, so bad data settings fail first
    data = instantiate(cfg.data, tokenizer=None, _convert_="all")
    name = resolve_base(cfg.model, cfg.data)  # builds the tiny base once when no checkpoint is given
    base = base_reference(name) if saved or cfg.callbacks.checkpoint.enabled else None
    if saved:
        check_base(saved, base, resume_from)
    ckpt = cfg.callbacks.checkpoint
    if ckpt.enabled:
        callbacks.append(StepCheckpoint(checkpoint_dir(run_dir), ckpt.every_n_steps, ckpt.keep))
        callbacks.append(Resumable(settings, base))
    logger = _logger(cfg, saved["global_step"] if saved else 0)
    trainer = instantiate(
        cfg.trainer,
        strategy=build_strategy(cfg.strategy, cfg.speed.activation_checkpointing),
        precision=_precision(cfg.trainer.precision),
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=ckpt.enabled,
        plugins=[AtomicCheckpointIO()],
    )
    if saved:  # the Trainer knows the world size before any model loads
        check_world_size(saved, trainer.num_nodes * trainer.num_devices, resume_from)
        resumed_note(resume_from, saved["global_step"])
    tokenizer = data.use_tokenizer(load_tokenizer(name), name)  # chat data: with a chat template
    if accepted is not None:
        accepted()
    L.seed_everything(cfg.seed, workers=True)
    model = load_model(name, cfg.model.attn, cfg.model.dtype)
    if getattr(data, "self_tokens", 0):  # sampled from the base before anything changes it
        _own_text(data, model, tokenizer, base or base_reference(name), trainer)
    if sft:
        plan = sft_plan(recorded, model.config.num_hidden_layers)
    else:
        plan = recorded or make_plan(model.config.num_hidden_layers, **plan_args)
    train_layers = method.train_layers(plan)
    if expands and method.inserts:
        expand_model(model, plan)
    elif expands:  # in_place: the plan only named the layers; the model keeps its depth
        plan = make_plan(model.config.num_hidden_layers, 0)
    # LoRA in a run that inserts blocks adapts those only; on a given checkpoint, every block
    model = prepare(model, method, cfg.method, plan.new_layers if expands else ())
    module = CausalLMModule(model, plan, tuple(data.domains), method, **cfg.optim, kl_reference=kl,
                            kl_topk=cfg.forgetting.topk, train_layers=train_layers)  # fmt: skip
    if not saved:  # the pre-training baseline, at step 0 (a resumed run has it in the checkpoint)
        trainer.validate(module, datamodule=data, verbose=False)
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    final = _final_metrics(trainer)
    if not final or trainer.global_step % int(cfg.trainer.val_check_interval) != 0:
        trainer.validate(module, datamodule=data, verbose=False)
        final |= _final_metrics(trainer)  # validate() clears what fit logged (benchmarks): keep both
    if trainer.is_global_zero:
        write_hparams(logger.log_dir, _hparams(cfg, plan), sorted(final))
    out = None
    # every rank takes part in gathering a sharded model; rank 0 writes the one export
    state = gathered_state(trainer, module) if cfg.export else None
    if cfg.export and trainer.is_global_zero:
        record = stage_record(cfg.stage.name, checkpoint, plain(cfg.data), trainer.global_step, method.name)
        out = export_checkpoint(module, tokenizer, plan, name, run_dir / "export", state, record)
        print(f"lp: exported {out}\nlp: tensorboard --logdir {run_dir}")
    return RunResult(final, module, out)


def _kl_reference(cfg: DictConfig, method, expands: bool) -> str | None:
    """How ``forgetting/kl`` gets the base's distributions (``lp.forgetting``): skipping the
    new blocks gives the base only where this run inserted them as identities and trains
    nothing else of the base."""
    exp = cfg.get("expansion", {})
    identity = exp.get("init") != "copy" and exp.get("blocks", 0) > 0
    bypassable = expands and method.inserts and method.keeps_base() and identity
    why = f"method={method.name} changes the base's own weights"
    if method.keeps_base():
        why = "this run inserts no identity blocks (an expanded checkpoint, stage=sft or init=copy)"
    if cfg.forgetting.kl and cfg.data.get("general") is None:
        raise LpError(
            "forgetting.kl=true needs the general eval set; give data.general or set forgetting.kl=false"
        )
    return choose_reference(cfg.forgetting.reference, cfg.forgetting.kl, bypassable, why)


def _own_text(data, model, tokenizer, base: dict, trainer) -> None:
    """The ``self`` eval set: text sampled once from the base (``lp.data.own_text``)."""
    from lp.data.own_text import cached_own_text
    from lp.gguf import default_cache

    rows = -(-int(data.self_tokens) // data.seq_len)
    device = trainer.strategy.root_device
    data.use_own_text(cached_own_text(model, tokenizer, base, rows, data.seq_len, data.seed,
                                      default_cache(), device))  # fmt: skip


def _logger(cfg: DictConfig, step: int):
    """TensorBoard continues a resumed run's curves: events at ``step`` and later, from
    the run that was cut off, are dropped when read (``purge_step``). A fresh start
    purges only over the events of an attempt cut off before its first checkpoint
    (else their step 0 would be doubled): a purge is a marker in the new event file, and
    TensorBoard reads a run's files in name order, which is not always the order they
    were written in (several runs of one sweep in one process, within one second)."""
    if not str(cfg.logger.get("_target_", "")).endswith("TensorBoardLogger"):
        return instantiate(cfg.logger)
    if step == 0:
        probe = instantiate(cfg.logger)
        earlier = any(Path(probe.log_dir).glob("events.out.tfevents.*"))
        return instantiate(cfg.logger, purge_step=0) if earlier else probe
    return instantiate(cfg.logger, purge_step=step)


def _flat(cfg: DictConfig, keys) -> dict:
    """``{dotted.leaf: value}`` for the config subtrees ``keys`` (absent ones: None)."""
    out: dict = {}

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(f"{prefix}.{k}", sub)
        else:
            out[prefix] = v

    for key in keys:
        v = OmegaConf.select(cfg, key, default=None)
        walk(key, OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v)
    return out


def _plan_args(cfg: DictConfig) -> dict:
    """Expansion settings, validated against the base's layer count before any
    expensive work (for a hub id the count is only known after loading)."""
    exp = cfg.expansion
    position = exp.position if isinstance(exp.position, str) else list(exp.position)
    args = dict(blocks=exp.blocks, position=position, source=exp.source, init=exp.init)
    layers = declared_layers(cfg.model)  # a GGUF file is validated here, before anything is written
    if layers is not None:
        make_plan(layers, **args)
    return args


def _final_metrics(trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(METRIC_FAMILIES)}


def _precision(value: str) -> str:
    if value == "auto":  # bf16 autocast where the hardware has it, exact float32 elsewhere
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return value


def _callbacks(cfg: DictConfig, run_dir: Path) -> list:
    c = cfg.callbacks
    callbacks = [
        FreezeCallback(**c.freeze),  # trains what the module's method trains, plus these options
        IdentityCheck(**c.identity_check),
        Throughput(**c.throughput),
        # after the freeze callback: it reads which parameters train; what the strategy owns steps aside
        SpeedUp(**speed_options(cfg.strategy.name, cfg.speed)),
    ]
    if cfg.strategy.name.startswith("deepspeed"):
        callbacks.append(KeepFrozenOriginals())  # the engine casts frozen weights too
    if cfg.stage.name == "sft":
        callbacks += [ChatSamples(**cfg.stage.samples), ChatStats()]
    if c.benchmark.enabled:  # the eval/ suite at step 0 and after the last step (lp.eval)
        from lp.eval.callback import BenchmarkCallback

        callbacks.append(
            BenchmarkCallback(cfg.eval, out_dir=run_dir, every_n_steps=c.benchmark.every_n_steps)
        )
    return callbacks


def _hparams(cfg: DictConfig, plan) -> dict:
    flat = {k: OmegaConf.select(cfg, k) for k in SETTINGS}
    flat["model"] = str(cfg.model.get("gguf_file") or cfg.model.name_or_path or "tiny")
    flat["new_layers"] = ",".join(map(str, plan.new_layers))
    return flat


def _remove_if_unused(run_dir: Path) -> None:
    """A run refused for bad input leaves no directory that looks like a run."""
    if run_dir.is_dir():
        if all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    run_cli(main)
