"""Every setting of ``lp.train`` checked before any work, each refusal one line.

Hydra composes the config and catches unknown keys and groups; this checks the
values: each numeric setting against its range, each enumerated one against
its allowed values, stated in the message. The allowed values come from their
owners (``lp.methods``, ``lp.speed``, ``lp.expansion.plan``, Lightning), so
they cannot drift apart. The expansion layout and the data sources are checked
by their own builders (``make_plan``, ``build_source``), which run before any
model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from lp.errors import LpError

Check = Callable[[Any], str | None]  # None: fine; else what is allowed


def integer(lo: int | None = None, hi: int | None = None, optional: bool = False) -> Check:
    def check(v):
        if v is None and optional:
            return None
        if (
            isinstance(v, bool)
            or not isinstance(v, int)
            or (lo is not None and v < lo)
            or (hi is not None and v > hi)
        ):
            text = "an integer" + _range(lo, hi, ">=", "<=")
            return f"{text}, or null" if optional else text
        return None

    return check


def number(lo: float | None = None, hi: float | None = None, open_lo: bool = False, open_hi: bool = False,
           optional: bool = False) -> Check:  # fmt: skip
    def check(v):
        if v is None and optional:
            return None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok and lo is not None:
            ok = v > lo if open_lo else v >= lo
        if ok and hi is not None:
            ok = v < hi if open_hi else v <= hi
        if ok:
            return None
        text = "a number" + _range(lo, hi, ">" if open_lo else ">=", "<" if open_hi else "<=")
        return f"{text}, or null" if optional else text

    return check


def choice(*allowed) -> Check:
    def check(v):
        if v in allowed and type(v) in {type(a) for a in allowed}:
            return None
        return ", ".join(dict.fromkeys(map(_show, allowed)))

    return check


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def pair(inner: Check) -> Check:
    def check(v):
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(inner(x) is None for x in v):
            return None
        return f"two values, each {inner(float('nan'))}"

    return check


def devices(v) -> str | None:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= -1 and v != 0):
        return None
    if isinstance(v, (list, tuple)) and v and all(isinstance(i, int) and i >= 0 for i in v):
        return None
    return "a positive integer, -1 (all), auto, or a list of device indices"


def device(v) -> str | None:
    ok = v in ("auto", "cpu", "cuda") or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit())
    return None if ok else "auto, cpu, cuda or cuda:N"


def resume(v) -> str | None:
    # whether the file exists is checked with the run directory (lp.resume.find_checkpoint)
    ok = v is None or (isinstance(v, str) and v.strip() != "")
    return None if ok else "auto, null or the path of a checkpoint file"


def _range(lo, hi, lo_op: str, hi_op: str) -> str:
    parts = [f"{lo_op} {lo}" if lo is not None else "", f"{hi_op} {hi}" if hi is not None else ""]
    return (" " + " and ".join(p for p in parts if p)) if any(parts) else ""


def strings(v) -> str | None:
    ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
    return None if ok else "a list of strings ([] for none)"


def _show(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def rules() -> dict[str, Check]:
    """Setting -> check, for every numeric and enumerated setting of every group."""
    from lp.data.chatpack import OVERLONG
    from lp.forgetting import REFERENCES
    from lp.methods import METHODS
    from lp.speed import CHOICES
    from lp.strategy import SHARDING, STRATEGIES

    tiny = {
        "num_layers": integer(1), "hidden_size": integer(1), "num_heads": integer(1),
        "intermediate_size": integer(1), "vocab_size": integer(260), "tokenizer_chars": integer(1),
        "seq_len": integer(2), "batch_size": integer(1), "steps": integer(1), "lr": number(0, open_lo=True),
        "eval_tokens": integer(1), "seed": integer(0),
    }  # fmt: skip
    return {
        "seed": integer(0),
        "export": boolean,
        "model.attn": choice("auto", "sdpa", "eager", "flash_attention_2"),
        "model.dtype": choice("float32", "bfloat16", "float16"),
        **{f"model.tiny.{k}": c for k, c in tiny.items()},
        "method.name": choice(*METHODS),
        "method.r": integer(1),
        "method.alpha": number(0, open_lo=True),
        "method.dropout": number(0, 1, open_hi=True),
        "data.seq_len": integer(2),
        "data.batch_size": integer(1),
        "data.eval_batch_size": integer(1),
        "data.eval_tokens": integer(1),
        "data.eval_fraction": number(0, 1, open_lo=True, open_hi=True),
        "data.seed": integer(0),
        "data.train_seed": integer(0),
        "data.num_workers": integer(0),
        "data.reset_position_ids": boolean,
        "data.replay": number(0, 1, open_hi=True),
        "data.self_tokens": integer(0),
        "forgetting.kl": boolean,
        "forgetting.reference": choice(*REFERENCES),
        "forgetting.topk": integer(1, optional=True),
        "data.packing": boolean,
        "data.overlong": choice(*OVERLONG),
        "data.default_template": boolean,
        "stage.samples.max_new_tokens": integer(1),
        "stage.samples.prompts": strings,
        "optim.lr": number(0, open_lo=True),
        "optim.weight_decay": number(0),
        "optim.betas": pair(number(0, 1, open_hi=True)),
        "optim.warmup_ratio": number(0, 1),
        "callbacks.freeze.train_norms": boolean,
        "callbacks.freeze.train_embeddings": boolean,
        "callbacks.freeze.train_lm_head": boolean,
        "callbacks.identity_check.enabled": boolean,
        "callbacks.throughput.window": integer(1),
        "callbacks.throughput.peak_tflops": number(0, open_lo=True, optional=True),
        "callbacks.checkpoint.enabled": boolean,
        "callbacks.checkpoint.every_n_steps": integer(1),
        "callbacks.checkpoint.keep": integer(1, optional=True),
        "resume": resume,
        "callbacks.benchmark.enabled": boolean,
        "callbacks.benchmark.every_n_steps": integer(1, optional=True),
        "eval.limit": integer(1, optional=True),
        "eval.batch_size": integer(1),
        "eval.seed": integer(0),
        "eval.bootstrap_iters": integer(0),
        "eval.allow_code_execution": boolean,
        "eval.code_timeout_s": number(0, open_lo=True),
        "eval.code_memory_mb": integer(1),
        "device": device,  # python -m lp.eval
        "logger.default_hp_metric": boolean,
        "trainer.inference_mode": boolean,
        "trainer.enable_model_summary": boolean,
        **{f"speed.{k}": choice(*allowed) for k, allowed in CHOICES.items()},
        "trainer.max_steps": integer(1),
        "trainer.val_check_interval": integer(1),
        "trainer.log_every_n_steps": integer(1),
        "trainer.num_sanity_val_steps": integer(-1),
        "trainer.gradient_clip_val": number(0, optional=True),
        "trainer.accumulate_grad_batches": integer(1),
        "trainer.precision": choice("auto", *lightning_precisions()),
        "trainer.accelerator": choice("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
        "trainer.devices": devices,
        "trainer.num_nodes": integer(1),
        "trainer.use_distributed_sampler": choice(False),  # lp.data shards for the ranks itself
        "strategy.name": choice(*STRATEGIES),
        "strategy.find_unused_parameters": boolean,
        "strategy.sharding_strategy": choice(*SHARDING),
        "strategy.cpu_offload": boolean,
        "strategy.stage": choice(2, 3),
        "strategy.offload_optimizer": boolean,
        "strategy.offload_parameters": boolean,
        "inspect.batches": integer(1),  # python -m lp.data
    }


def lightning_precisions() -> tuple:
    """The precision values Lightning's Trainer accepts, from Lightning's own type."""
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

    def flat(t):
        args = get_args(t)
        return [x for a in args for x in flat(a)] if args else [t]

    return tuple(dict.fromkeys(flat(_PRECISION_INPUT)))


# settings that are no longer settings, and what decides instead
RETIRED = {
    "trainer.strategy": "the strategy is chosen with strategy=single, ddp, fsdp, deepspeed_zero2 or "
    "deepspeed_zero3 (lp.strategy configures Lightning's for expanded models)",
    "callbacks.freeze.trainable": "which parameters train is the method's choice: method=block_expansion "
    "(new blocks), expand_full or full_finetune (all), lora or moe (the parameters they add)",
}


def validate(cfg: Mapping) -> None:
    """Raise ``LpError`` for the first setting outside its allowed values; a setting
    a config does not have (a group that lacks it) is not checked."""
    from omegaconf import OmegaConf

    for key, why in RETIRED.items():
        if OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
            raise LpError(f"{key} is not a setting: {why}")

    for key, check in rules().items():
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            continue
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        allowed = check(value)
        if allowed is not None:
            raise LpError(f"{key}={_show_value(value)} is not allowed; allowed: {allowed}")
    if OmegaConf.select(cfg, "strategy.name", default=None) is not None:
        from lp.strategy import check as check_strategy

        check_strategy(cfg)  # across settings: devices, accelerator, installed engines


_ABSENT = object()


def plain(cfg) -> dict:
    """A plain dict from a config node (OmegaConf or already plain), interpolations resolved."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def _show_value(v) -> str:
    return _show(v) if not isinstance(v, str) else repr(v)
