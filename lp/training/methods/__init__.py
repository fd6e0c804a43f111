"""Training methods: what is built around the base and which parameters train.

All methods share one LightningModule and one training step. A ``Method`` is the
one owner of which parameters train: the freeze callback, ``lp.bench``, the
report and the tests all read ``Method.trainable``; the config only names the
method (``method=``). A method also says how the model is prepared after loading
and expansion, and which weights an ordinary Hugging Face model of the base's
architecture needs to compute the same function (the export).

- ``block_expansion`` (paper): new blocks train, everything else is frozen.
- ``expand_full``: expansion, then every parameter trains (added capacity without freezing).
- ``full_finetune``: no expansion, every parameter trains.
- ``lora``: LoRA adapters (``peft``) on the base, or, with ``expansion.blocks`` > 0, on the
  new blocks only; export merges them.
- ``moe``: the paper's MoE comparison (``lp.training.methods.moe``); export folds it back.
- ``in_place``: the control for "is adding blocks necessary?": no new blocks; the base
  layers that block expansion would copy (the plan's sources, same trainable count) train
  in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from lp.core.config import choice, integer, number, setting, strings
from lp.core.errors import LpError
from lp.expansion import decoder_layers
from lp.training.methods import moe

LORA_PREFIX = "lora_"  # peft's LoraModel.prefix: lora_A, lora_B (not imported: peft is slow to import)


@dataclass
class MethodConfig:
    """The ``method`` group: which method (``METHODS``) and LoRA's settings (the other
    methods have none); a resumed run keeps all of it."""

    name: str = setting(lambda v: choice(*METHODS)(v), fixed=True)
    # LoRA's own: absent (not null) for the other methods, so they are neither checked nor kept
    r: int = setting(integer(1), fixed=True)
    alpha: float = setting(number(0, open_lo=True), fixed=True)
    dropout: float = setting(number(0, 1, open_hi=True), fixed=True)
    target_modules: list[str] = setting(strings, fixed=True)


@dataclass(frozen=True)
class Method:
    name: str
    # "layers": the decoder layers the run trains (the new blocks; in_place: the layers they
    # would copy) | "all" | "added" (parameters the method adds)
    trainable: str
    blocks: str  # what expansion.blocks may be: "required" (> 0), "none" (0) or "either"
    inserts: bool = True  # False: the plan only names layers; the model keeps its depth

    def train_layers(self, plan) -> tuple[int, ...]:
        """Indices of the decoder layers that train whole, in the model as built."""
        if self.trainable != "layers":
            return ()
        if self.inserts:
            return tuple(plan.new_layers)
        return tuple(sorted({plan.layer_map[j] for j in plan.new_layers}))

    def keeps_base(self) -> bool:
        """Whether the base's own weights stay as loaded (only new blocks, or adapters on
        them, train): the model with its new blocks skipped is then the base."""
        return self.name in ("block_expansion", "lora")


METHODS = {
    "block_expansion": Method("block_expansion", "layers", "required"),
    "expand_full": Method("expand_full", "all", "required"),
    "full_finetune": Method("full_finetune", "all", "none"),
    "lora": Method("lora", "added", "either"),
    "moe": Method("moe", "added", "none"),
    "in_place": Method("in_place", "layers", "required", inserts=False),
}


def get_method(name: str, blocks: int | None = None) -> Method:
    """The method called ``name``; with ``blocks``, refuses a contradicting expansion."""
    if name not in METHODS:
        raise LpError(f"method.name={name!r} is unknown; allowed: {', '.join(METHODS)}")
    m = METHODS[name]
    if blocks is None:
        return m
    if m.blocks == "required" and blocks == 0:
        what = "names the layers to train by" if not m.inserts else "needs"
        raise LpError(f"method={name} {what} expansion.blocks > 0; for no expansion use method=full_finetune")
    if m.blocks == "none" and blocks != 0:
        raise LpError(
            f"method={name} trains the base model without expansion, but expansion.blocks={blocks}; "
            f"set expansion.blocks=0 (method={name} does) or use method=block_expansion / expand_full"
        )
    return m


def prepare(model, method: Method, settings: Mapping, new_layers: tuple[int, ...] = ()):
    """Add what the method trains (LoRA adapters, MoE experts) to a loaded model; LoRA
    with ``new_layers`` (an expanded model) adapts only the modules of those blocks."""
    if method.name == "lora":
        from peft import LoraConfig, get_peft_model

        targets = list(settings["target_modules"])
        if new_layers:  # full module names: peft matches them whatever the family's layout
            targets = _block_modules(model, new_layers, targets)
        cfg = LoraConfig(
            r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
            target_modules=targets, task_type="CAUSAL_LM",
        )  # fmt: skip
        return get_peft_model(model, cfg)
    if method.name == "moe":
        return moe.add_experts(model, decoder_layers(model))
    return model


def _block_modules(model, layers: tuple[int, ...], names: list[str]) -> list[str]:
    """The full names of the modules called one of ``names`` inside decoder layers ``layers``."""
    blocks = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is blocks)
    found = [f"{prefix}.{j}.{sub}" for j in layers for sub, _ in blocks[j].named_modules()
             if sub.rsplit(".", 1)[-1] in names]  # fmt: skip
    if not found:
        raise LpError(f"method.target_modules={names} names no module of the new blocks")
    return found


def is_added(name: str) -> bool:
    """Parameters a method added: LoRA's ``lora_A``/``lora_B``, MoE's new experts."""
    return any(part.startswith((LORA_PREFIX, *moe.ADDED)) for part in name.split("."))


def export_weights(
    model,
    method: Method,
    originals: Mapping[str, torch.Tensor] | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """An ordinary Hugging Face model of the base's architecture (for its class and
    config) and the weights that make it compute what ``model`` computes now.

    ``originals``: full-precision tensors, by parameter name, of frozen weights
    that training stores in lower precision (``lp.training.speed``); they replace the
    stored ones, so frozen weights go out exactly as loaded. ``model`` itself is
    not changed, so this can be asked for at any time during training. ``state``:
    the model's full state dict gathered from a sharded strategy's shards
    (``lp.training.strategy.gathered_state``), read instead of the model's own.
    """
    originals = originals or {}
    state = model.state_dict() if state is None else state
    weights = {k: originals.get(k, v) for k, v in state.items()}
    if method.name == "lora":
        return _lora_export(model, weights)
    if method.name == "moe":
        return model, moe.fold_state_dict(model, weights)
    return model, weights


def _lora_export(model, weights: dict) -> tuple[torch.nn.Module, dict]:
    """W + ΔW for every adapted linear layer (peft's own ``get_delta_weight``, the
    update ``merge_and_unload`` adds), under the base model's parameter names."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                w = weights[f"{name}.base_layer.weight"]
                delta = module.get_delta_weight(adapter).detach()
                weights[f"{name}.base_layer.weight"] = (w.to(delta.dtype) + delta).to(w.dtype)
    out = {}
    for k, v in weights.items():
        if any(part.startswith(LORA_PREFIX) for part in k.split(".")):
            continue
        out[k.removeprefix(prefix).replace(".base_layer.", ".")] = v
    return model.get_base_model(), out
