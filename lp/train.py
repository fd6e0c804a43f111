"""``python -m lp.train``: expand a base model, train it, measure forgetting, export;
with ``stage=sft``, instruction-tune a checkpoint as it is (``lp.training.stages``).

``run`` reads as the pipeline: Hydra has composed the config onto the groups' schemas
(``lp.schemas``); it is checked, the run is built (data before any model loads,
checkpoints, base, trainer, then the model), fitted after a step-0 evaluation, and
exported. What differs between stages is the stage object's, everything about resuming
is ``lp.training.checkpointing.Checkpoints``'.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lp.base.checkpoint_dirs import check_checkpoint, read_expansion, written_by_lp
from lp.base.export import export_checkpoint
from lp.base.models import declared_layers, load_model, load_tokenizer
from lp.core.config import plain
from lp.core.errors import LpError, first_line, print_error, refusal, run_cli
from lp.core.files import cache_root, check_output, write_atomic
from lp.corpus.own_text import cached_own_text
from lp.expansion import expand_model, make_plan
from lp.measure.forgetting import choose_reference
from lp.reports.record import METRIC_FAMILIES, SETTINGS, clear_failure, mark_failed, write_hparams
from lp.schemas import RunSettings, check, fixed_settings
from lp.training.bases import resolve_base
from lp.training.checkpointing import Checkpoints, base_reference
from lp.training.methods import prepare
from lp.training.module import CausalLMModule
from lp.training.stages import STAGES, stage_record
from lp.training.strategy import gathered_state
from lp.training.trainer import build_trainer
from lp.training.trainer import callbacks as run_callbacks

TRAIN = {"": RunSettings}  # the settings at the top of conf/train.yaml


@dataclass
class RunResult:
    metrics: dict[str, float]  # final val/<domain>/loss, forgetting/... and, if run, bench/...
    module: CausalLMModule  # the trained model, in memory
    export: Path | None


def run(cfg: DictConfig, run_dir: Path, accepted=None) -> RunResult:
    """The whole experiment. Every setting is checked before any model loads, and nothing
    is written into ``run_dir`` before every check has passed (then ``accepted()``)."""
    check(cfg, TRAIN)
    stage = STAGES[cfg.stage.name]
    checkpoints = Checkpoints(cfg.resume, run_dir, fixed_settings(cfg, TRAIN), cfg.callbacks.checkpoint)
    source = _checked_source(cfg, run_dir)
    recorded = read_expansion(source) if source else None  # an expanded checkpoint trains its blocks
    inserts = stage.inserts(recorded)
    plan_args = _plan_args(cfg) if inserts else None
    method = stage.method(cfg.method.name, recorded, source, plan_args["blocks"] if plan_args else 0)
    kl = _kl_reference(cfg, method, inserts)
    callbacks = run_callbacks(cfg, run_dir, stage)  # their settings (benchmark tasks) checked here
    data = instantiate(cfg.data, tokenizer=None, _convert_="all")  # sources read before any model loads
    name = resolve_base(cfg.model, cfg.data)  # builds the tiny base once when no checkpoint is given
    checkpoints.check_base(name)
    trainer = build_trainer(cfg, callbacks, checkpoints)
    checkpoints.check_world_size(trainer)
    tokenizer = data.use_tokenizer(load_tokenizer(name), name)  # chat data: with a chat template
    if accepted is not None and trainer.is_global_zero:  # every rank runs this; one records it
        accepted()
    L.seed_everything(cfg.seed, workers=True)
    model = load_model(name, cfg.model.attn, cfg.model.dtype)
    _own_text(data, model, tokenizer, checkpoints.base or name, trainer)
    module = _module(cfg, model, data, stage.plan(recorded, model.config.num_hidden_layers, plan_args),
                     inserts, method, kl)  # fmt: skip
    if not checkpoints.saved:  # the step-0 baseline (a resumed run has it in its checkpoint)
        trainer.validate(module, datamodule=data, verbose=False)
    trainer.fit(module, datamodule=data, ckpt_path=checkpoints.path)
    final = _final_metrics(cfg, trainer, module, data)
    export = _export(cfg, run_dir, trainer, module, tokenizer, name, stage, source) if cfg.export else None
    return RunResult(final, module, export)


def _checked_source(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint directory the run starts from, checked (a GGUF file is checked as
    one when converted); and the export's place, which lp replaces only if it wrote it."""
    source = None if cfg.model.get("gguf_file") else cfg.model.name_or_path
    if source:
        check_checkpoint(str(source), tokenizer=True)
    if cfg.export:  # an SFT of this run's own export would replace its input
        inputs = [source] if source else []
        check_output(run_dir / "export", "dir", "the export", inputs, replace=True, owned=written_by_lp)
    return str(source) if source else None


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


def _kl_reference(cfg: DictConfig, method, inserts: bool) -> str | None:
    """How ``forgetting/kl`` gets the base's distributions (``lp.measure.forgetting``): skipping
    the new blocks gives the base only where this run inserted them as identities and
    trains nothing else of the base."""
    identity = cfg.expansion.init != "copy" and cfg.expansion.blocks > 0
    bypassable = inserts and method.inserts and method.keeps_base() and identity
    why = f"method={method.name} changes the base's own weights"
    if method.keeps_base():
        why = "this run inserts no identity blocks (an expanded checkpoint, stage=sft or init=copy)"
    if cfg.forgetting.kl and cfg.data.get("general") is None:
        raise LpError(
            "forgetting.kl=true needs the general eval set; give data.general or set forgetting.kl=false"
        )
    return choose_reference(cfg.forgetting.reference, cfg.forgetting.kl, bypassable, why)


def _own_text(data, model, tokenizer, base: dict | str, trainer) -> None:
    """The ``self`` eval set: text sampled once from the base, before anything changes it
    (``lp.corpus.own_text``; cached by the base's content hash: ``base``, or hashed now)."""
    if getattr(data, "self_tokens", 0):
        base = base_reference(base) if isinstance(base, str) else base
        rows = -(-int(data.self_tokens) // data.seq_len)
        text = cached_own_text(model, tokenizer, base, rows, data.seq_len, data.seed, str(cache_root()),
                               trainer.strategy.root_device)  # fmt: skip
        data.use_own_text(text)


def _module(cfg, model, data, plan, inserts: bool, method, kl) -> CausalLMModule:
    """The LightningModule around the model, expanded by ``plan`` (in_place: the plan only
    names the layers that train; the model keeps its depth) with the method's additions."""
    train_layers = method.train_layers(plan)
    if inserts and method.inserts:
        expand_model(model, plan)
    elif inserts:
        plan = make_plan(model.config.num_hidden_layers, 0)
    # LoRA in a run that inserts blocks adapts those only; on a given checkpoint, every block
    model = prepare(model, method, cfg.method, plan.new_layers if inserts else ())
    return CausalLMModule(model, plan, tuple(data.domains), method, **cfg.optim, kl_reference=kl,
                          kl_topk=cfg.forgetting.topk, train_layers=train_layers)  # fmt: skip


def _final_metrics(cfg, trainer, module, data) -> dict[str, float]:
    """The last evaluation's metrics (one more after fit when the last step was not one),
    registered in TensorBoard's HPARAMS tab with the run's settings."""
    final = _logged(trainer)
    if not final or trainer.global_step % int(cfg.trainer.val_check_interval) != 0:
        trainer.validate(module, datamodule=data, verbose=False)
        final |= _logged(trainer)  # validate() clears what fit logged (benchmarks): keep both
    if trainer.is_global_zero:
        write_hparams(trainer.logger.log_dir, _hparams(cfg, module.plan), sorted(final))
    return final


def _logged(trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(METRIC_FAMILIES)}


def _hparams(cfg: DictConfig, plan) -> dict:
    flat = {k: OmegaConf.select(cfg, k) for k in SETTINGS}
    flat["model"] = str(cfg.model.get("gguf_file") or cfg.model.name_or_path or "tiny")
    flat["new_layers"] = ",".join(map(str, plan.new_layers))
    return flat


def _export(cfg, run_dir, trainer, module, tokenizer, name, stage, source) -> Path | None:
    """Every rank takes part in gathering a sharded model; rank 0 writes the one export."""
    state = gathered_state(trainer, module)
    if not trainer.is_global_zero:
        return None
    record = stage_record(stage.name, source, plain(cfg.data), trainer.global_step, module.method.name)
    out = export_checkpoint(module, tokenizer, module.plan, name, run_dir / "export", state, record)
    print(f"lp: exported {out}\nlp: tensorboard --logdir {run_dir}")
    return out


# -- the command ---------------------------------------------------------------------------


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


def _record_run(cfg: DictConfig, run_dir: Path) -> None:
    """Once the run is accepted: its composed config, Hydra's and the overrides in
    ``<run dir>/.hydra`` (what Hydra itself would write before the run starts, which would
    rewrite a resumed run's record even when the resume is then refused:
    ``hydra.output_subdir`` is null), and no failure marker of an earlier attempt."""
    hydra_cfg = HydraConfig.get()
    files = {"config.yaml": cfg, "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
             "overrides.yaml": OmegaConf.create(list(hydra_cfg.overrides.task))}  # fmt: skip
    for file, node in files.items():
        write_atomic(run_dir / ".hydra" / file, OmegaConf.to_yaml(node))
    clear_failure(run_dir)  # a rerun into the same directory: an old marker no longer applies


def _remove_if_unused(run_dir: Path) -> None:
    """A run refused for bad input leaves no directory that looks like a run."""
    if run_dir.is_dir():
        if all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    run_cli(main)
