"""The config groups' schemas, registered with Hydra (each dataclass lives with the code
that owns its group; ``conf/`` keeps the values), and the checks of a composed config.

``conf/train.yaml`` (and ``evaluate.yaml``) list ``schema/<group>@<group>: default``
ahead of each group, so Hydra composes every group onto its dataclass: an unknown key
or a value of the wrong type is refused while composing; ``check`` then refuses a value
outside what its field allows, a retired setting, and what the strategy cannot do here.
``fixed_settings`` gives the settings a resumed run must share with its checkpoint, from
the ``fixed`` marks on the fields (docs/configuration.md lists them; a test ties both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from lp.core.config import boolean, fixed_keys, integer, nested_schema, setting, show_value, validate
from lp.core.errors import EXPLAINERS, LpError
from lp.corpus.chat.module import ChatDataConfig
from lp.corpus.text import TextDataConfig
from lp.expansion.plan import ExpansionConfig
from lp.measure.benchmarks.suite import EvalConfig
from lp.measure.forgetting import ForgettingConfig
from lp.training.bases import ModelConfig
from lp.training.callbacks import CallbacksConfig
from lp.training.methods import MethodConfig
from lp.training.module import OptimConfig
from lp.training.speed import SpeedConfig
from lp.training.stages import StageConfig
from lp.training.strategy import StrategyConfig
from lp.training.strategy import check as check_strategy
from lp.training.trainer import LoggerConfig, TrainerConfig, lightning_arguments

GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "expansion": ExpansionConfig,
    "method": MethodConfig,
    "optim": OptimConfig,
    "callbacks": CallbacksConfig,
    "eval": EvalConfig,
    "forgetting": ForgettingConfig,
    "speed": SpeedConfig,
    "stage": StageConfig,
    "trainer": TrainerConfig,
    "strategy": StrategyConfig,
    "logger": LoggerConfig,
}
DATA = {"text": TextDataConfig, "chat": ChatDataConfig}  # the data group has one schema per format

# settings that are no longer settings, and what decides instead
RETIRED = {
    "trainer.strategy": "the strategy is chosen with strategy=single, ddp, fsdp, deepspeed_zero2 or "
    "deepspeed_zero3 (lp.training.strategy configures Lightning's for expanded models)",
    "callbacks.freeze.trainable": "which parameters train is the method's choice: method=block_expansion "
    "(new blocks), expand_full or full_finetune (all), lora or moe (the parameters they add), in_place",
}


def explain_wrong_type(cause) -> LpError | None:
    """A value OmegaConf could not convert for a checked field, said as the field's check says
    it (``data.seq_len=1.5 is not allowed; allowed: an integer >= 2``)."""
    key, value = getattr(cause, "full_key", None), getattr(cause, "value", None)
    if not key or "could not be converted" not in str(cause):
        return None
    group, _, rest = str(key).partition(".")
    for schema in (GROUPS.get(group), *(DATA.values() if group == "data" else ())):
        check = _field_check(schema, rest) if schema is not None else None
        allowed = check(value) if check is not None else None
        if allowed is not None:
            return LpError(f"{key}={show_value(value)} is not allowed; allowed: {allowed}")
    return None


def _field_check(schema: type, path: str):
    """The check of the field at ``path`` (dotted) inside a schema, if it has one."""
    import dataclasses
    import typing

    head, _, rest = path.partition(".")
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name == head:
            if rest:
                nested = nested_schema(hints[head])
                return _field_check(nested, rest) if nested is not None else None
            return f.metadata.get("check")
    return None


def register() -> None:
    """Every schema as Hydra's ``schema/<group>`` config (``default``; data: ``text``, ``chat``)."""
    store = ConfigStore.instance()
    for group, schema in GROUPS.items():
        store.store(group=f"schema/{group}", name="default", node=schema)
    for name, schema in DATA.items():
        store.store(group="schema/data", name=name, node=schema)


register()
EXPLAINERS.append(explain_wrong_type)


def resume_setting(v) -> str | None:
    # whether the file exists is checked with the run directory (lp.training.checkpointing)
    ok = v is None or (isinstance(v, str) and v.strip() != "")
    return None if ok else "auto, null or the path of a checkpoint file"


@dataclass
class RunSettings:
    """The settings at the top of ``conf/train.yaml`` (``lp.train``, ``lp.data``)."""

    seed: int = setting(integer(0), fixed=True)
    export: Any = setting(boolean)
    resume: Any = setting(resume_setting)


def schemas(cfg: Mapping, more: Mapping[str, type] | None = None) -> dict[str, type]:
    """The schemas of the groups ``cfg`` holds, by config path, with ``more`` (a command's
    own: ``""`` for the top of its config)."""
    out: dict[str, type] = dict(more or {})
    out |= {group: schema for group, schema in GROUPS.items() if group in cfg}
    if "data" in cfg:
        out["data"] = DATA[
            "chat" if str(cfg["data"].get("_target_", "")).endswith("ChatDataModule") else "text"
        ]
    return out


def check(cfg: DictConfig, more: Mapping[str, type] | None = None) -> None:
    """Refuse, in one line, the first setting of ``cfg`` that lp cannot run with (``more``:
    the command's own schemas, by config path)."""
    for key, why in RETIRED.items():
        if OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
            raise LpError(f"{key} is not a setting: {why}")
    if "trainer" in cfg:
        lightning_arguments(cfg.trainer)
    validate(cfg, schemas(cfg, more))
    if "strategy" in cfg:
        check_strategy(cfg)  # across groups: devices, accelerator, installed engines


def fixed_settings(cfg: DictConfig, more: Mapping[str, type] | None = None) -> dict[str, Any]:
    """``{dotted.key: value}`` of every fixed setting (a fixed section: each of its leaves)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(f"{prefix}.{k}", sub)
        else:
            out[prefix] = v

    for key in fixed_keys(schemas(cfg, more)):
        v = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        walk(key, OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v)
    return out


_ABSENT = object()
