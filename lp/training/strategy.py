"""Lightning's own strategies, configured for expanded, mostly frozen models (``conf/strategy/``).

lp builds no engine: each option picks arguments of a Lightning strategy
(``DDPStrategy``, ``FSDPStrategy``, ``DeepSpeedStrategy``) from facts of the
model and of the run.

- ``single``: Lightning's automatic choice for one device.
- ``ddp``: one replica per device; only trainable parameters get gradient
  buckets (DDP skips frozen ones), so the frozen base costs no communication.
- ``fsdp``: one unit per decoder layer (the class is found from the model),
  frozen and trainable parameters never in one unit (a unit that would mix them
  is split into uniform pieces: the norms of a frozen layer under
  ``train_norms``, the adapters of a LoRA layer), ``use_orig_params`` so the
  optimizer sees the model's own parameters; the root unit holds what is left
  (embeddings, final norm, head). Mixed precision is the strategy's
  (``FSDPPrecision``); activation checkpointing is FSDP's own non-reentrant
  wrapper, on the layers a backward pass goes through.
- ``deepspeed_zero2`` / ``deepspeed_zero3``: ZeRO with lp's optimizer; the
  engine owns mixed precision and gradient clipping.

Sharded strategies need CUDA (Lightning refuses FSDP without it; DeepSpeed's
kernels are CUDA), checked up front by ``check``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lp.core.config import boolean, choice, setting
from lp.core.errors import LpError
from lp.expansion import decoder_layers
from lp.measure.flops import lowest_trainable_layer

STRATEGIES = ("single", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
SHARDED = ("fsdp", "deepspeed_zero2", "deepspeed_zero3")
SHARDING = ("SHARD_GRAD_OP", "FULL_SHARD", "NO_SHARD")  # torch's ShardingStrategy names Lightning takes


@dataclass
class StrategyConfig:
    """The ``strategy`` group: which of Lightning's strategies, and the options of that one
    (each file of ``conf/strategy/`` sets its own; the others stay null)."""

    name: str = setting(choice(*STRATEGIES))
    # each strategy's own options: absent (not null) for the others
    find_unused_parameters: Any = setting(boolean)
    sharding_strategy: str = setting(choice(*SHARDING))
    cpu_offload: Any = setting(boolean)
    stage: int = setting(choice(2, 3))
    offload_optimizer: Any = setting(boolean)
    offload_parameters: Any = setting(boolean)


def check(cfg) -> None:
    """Refuse a strategy the run cannot use, before anything loads (``lp.core.config``)."""
    s = cfg.strategy
    accelerator = cfg.trainer.get("accelerator", "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise LpError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU, and this machine has none visible "
            "(torch.cuda.is_available() is false); use trainer=default (CPU)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise LpError(
            "trainer.accelerator=mps needs Apple's MPS, which this machine lacks; use trainer=default"
        )
    devices, nodes = cfg.trainer.devices, cfg.trainer.get("num_nodes", 1)
    if s.name == "single" and (devices not in (1, "auto") or nodes != 1):
        raise LpError(
            f"strategy=single runs on one device, but trainer.devices={devices} trainer.num_nodes={nodes}; "
            "choose strategy=ddp, fsdp, deepspeed_zero2 or deepspeed_zero3"
        )
    if s.name not in SHARDED:
        return
    if s.name in ("fsdp", "deepspeed_zero3") and cfg.method.name == "lora":
        raise LpError(
            f"method=lora does not combine with strategy={s.name}: its export merges the adapters "
            "through peft on whole weights; use strategy=ddp or deepspeed_zero2"
        )
    if cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available():
        raise LpError(f"strategy={s.name} needs CUDA GPUs (Lightning and DeepSpeed shard on CUDA only); "
                      "on CPU use strategy=ddp")  # fmt: skip
    if s.name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise LpError(f"strategy={s.name} needs DeepSpeed: pip install deepspeed")
    if cfg.speed.frozen_dtype not in ("auto", "keep"):
        raise LpError(
            f"speed.frozen_dtype={cfg.speed.frozen_dtype} does not combine with strategy={s.name}: the "
            "strategy's mixed precision casts the weights; use speed.frozen_dtype=auto"
        )
    if cfg.callbacks.checkpoint.enabled:
        # lp.training.checkpointing's slim checkpoints rely on the module's own state dict: FSDP loads its
        # state before the module's hook can refill the frozen weights, and DeepSpeed writes
        # a directory of its own that the resume checks cannot read
        raise LpError(
            f"resumable checkpoints are not supported with strategy={s.name} yet; "
            "set callbacks.checkpoint.enabled=false (or use strategy=ddp)"
        )
    if s.name in ("fsdp", "deepspeed_zero3") and (cfg.callbacks.benchmark.enabled or _samples(cfg)):
        # both run a forward pass on rank 0 alone, which a sharded model cannot do (it would hang)
        raise LpError(
            f"callbacks.benchmark.enabled and stage.samples.prompts run on rank 0 alone and do not combine "
            f"with strategy={s.name}; turn them off (stage.samples.prompts=[]) or use strategy=ddp"
        )


def _samples(cfg) -> bool:
    return cfg.get("stage", {}).get("name") == "sft" and bool(cfg.stage.get("samples", {}).get("prompts"))


def speed_options(name: str, speed: Mapping) -> dict:
    """The speed options with what the strategy owns stepped aside: FSDP checkpoints
    activations itself, and a sharded strategy casts weights itself (its flat
    shards need one dtype per unit, so lp.training.speed's frozen bf16 copies cannot stay)."""
    out = dict(speed)
    if name in SHARDED:
        out["frozen_dtype"] = "keep"
    if name == "fsdp":
        out["activation_checkpointing"] = False
    return out


def build(settings: Mapping, activation_checkpointing: bool = False):
    """The Lightning strategy for ``settings`` (``conf/strategy/``). Built before the model
    exists: FSDP's policies read the strategy's LightningModule when it wraps, after the
    freeze callback has chosen what trains."""
    name = settings["name"]
    if name == "single":
        return "auto"
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=settings["find_unused_parameters"])
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy
        from torch.distributed.fsdp.wrap import CustomPolicy

        # both read at FSDP's first policy call, before it wraps: checkpointing then wraps the
        # layers themselves, inside their FSDP units
        plan = _Lazy(lambda: _fsdp_plan(strategy.lightning_module.model))
        strategy = FSDPStrategy(
            auto_wrap_policy=CustomPolicy(lambda m: m in plan.get()[0]),
            activation_checkpointing_policy=(
                CustomPolicy(lambda m: m in plan.get()[1]) if activation_checkpointing else None
            ),
            sharding_strategy=settings["sharding_strategy"],
            cpu_offload=settings["cpu_offload"],
            use_orig_params=True,
            state_dict_type="full",
        )
        return strategy
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(
        stage=settings["stage"],
        offload_optimizer=settings["offload_optimizer"],
        offload_parameters=settings["offload_parameters"],
    )


def _fsdp_plan(model: nn.Module) -> tuple[set, set]:
    return set(fsdp_units(model)), set(trained_layers(model))


class _Lazy:
    """A value computed at its first use (FSDP asks its policy once per module)."""

    def __init__(self, make):
        self.make, self.value = make, None

    def get(self):
        if self.value is None:
            self.value = self.make()
        return self.value


def trained_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers a backward pass goes through (at and above the lowest
    trainable one): the ones worth checkpointing, as in ``lp.training.speed``."""
    low = lowest_trainable_layer(model)
    return [] if low is None else list(decoder_layers(model))[low:]


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become their own FSDP unit (the root, which Lightning wraps,
    holds everything else): every decoder layer, and wherever a layer or the root
    would hold trainable and frozen parameters together, each uniform child of it
    (mixed children split the same way). A child holding a tied parameter stays
    with its parent: a shared tensor must live in one unit."""
    units = list(decoder_layers(model))
    shared = _shared_parameters(model)
    for scope in [*units, model]:
        _split(scope, units, shared)
    return units


def unit_kinds(model: nn.Module, units: list[nn.Module]) -> dict[str, str]:
    """Unit name -> ``trainable``, ``frozen``, ``mixed`` or ``empty`` by the parameters it
    holds itself (not those of nested units); the root is ``""``."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    for unit in [model, *units]:
        own = _own(unit, units)
        grads = {p.requires_grad for p in own}
        out[names[id(unit)]] = "empty" if not own else "mixed" if len(grads) > 1 else (
            "trainable" if grads == {True} else "frozen")  # fmt: skip
    return out


def _split(scope: nn.Module, units: list[nn.Module], shared: set[int]) -> None:
    if len({p.requires_grad for p in _own(scope, units)}) < 2:
        return
    for child in scope.children():
        if any(child is u for u in units):
            continue
        own = _own(child, units)
        kinds = {p.requires_grad for p in own}
        if len(kinds) > 1:
            _split(child, units, shared)
        elif own and not any(id(p) in shared for p in own):
            units.append(child)


def _own(module: nn.Module, units: list[nn.Module]) -> list[nn.Parameter]:
    """Parameters under ``module`` that no nested unit holds."""
    unit_ids = {id(u) for u in units} - {id(module)}
    inner = {id(p) for m in module.modules() if id(m) in unit_ids for p in m.parameters()}
    return [p for p in module.parameters() if id(p) not in inner]


def _shared_parameters(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {i for i, n in seen.items() if n > 1}


class KeepFrozenOriginals(Callback):
    """Under DeepSpeed with 16-bit precision the engine casts the whole module, frozen weights
    included; the export writes frozen weights as loaded, so rank 0 (the one that exports)
    keeps their full-precision tensors, on the host where the model was loaded (nothing is
    copied), in the module's ``originals``, as lp.training.speed does for its own casts. Place it after
    the freeze callback."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            for name, p in pl_module.model.named_parameters():
                if not p.requires_grad:
                    pl_module.originals.setdefault(name, p.data)


def is_sharded(trainer) -> bool:
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    return isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy))


def gathered_state(trainer, module) -> dict[str, torch.Tensor] | None:
    """The full state dict of ``module.model`` gathered from the shards (FSDP, ZeRO-3),
    on rank 0 (other ranks: ``{}``); ``None`` where the model is whole on every rank.
    A collective: every rank calls it. GPU only (not run in this project's CI)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy):
        state = strategy.lightning_module_state_dict()  # full, CPU-offloaded, on rank 0
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.model.parameters()), modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in module.model.state_dict().items()}
        return state if trainer.is_global_zero else {}
    return None
