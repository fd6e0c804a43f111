"""Speed options for the training step (``conf/speed/``), applied by one callback.

Each option is a switch whose ``auto`` picks what pays off on the device:

- ``frozen_dtype``: frozen ``nn.Linear`` weights are stored in the autocast dtype
  (bf16), with no fp32 copy; trainable parameters keep fp32 master weights.
  Autocast casts every linear weight to bf16 anyway, so the result is bit for
  bit what bf16-mixed computes with fp32 weights, at half the memory and
  without a cast per step. Embeddings and norms stay as loaded: the embedding
  sets the residual stream's dtype, which bf16-mixed keeps in fp32.
  ``auto``: on when the Trainer runs bf16-mixed. The full-precision originals
  stay on the host (where the model was loaded; nothing is copied), recorded
  in the module's ``originals``, which its export view reads, so exported
  frozen weights are bit-identical to the base whichever callbacks ran.
- ``liger``: Liger kernels (fused RMSNorm, SwiGLU, RoPE, fused linear
  cross-entropy). ``auto``: on CUDA when ``liger_kernel`` is installed.
- ``activation_checkpointing``: transformers' own per-layer non-reentrant
  checkpointing, switched on only for the layers a backward pass goes through
  (at and above the lowest trainable one); the layers below keep no
  activations anyway.
- ``compile``: ``torch.compile`` of each decoder layer (``blocks``; in place,
  so parameter names and checkpoints do not change) or of the whole model.

Attention (flash-attention when installed, else SDPA) is chosen when the model
is loaded (``model.attn``); the optimizer is fused AdamW (``lp.training.module``).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.checkpoint import checkpoint

from lp.core.config import choice, setting
from lp.core.errors import LpError
from lp.expansion import decoder_layers
from lp.measure.flops import lowest_trainable_layer

log = logging.getLogger(__name__)

CHOICES = {
    "frozen_dtype": ("auto", "bfloat16", "float16", "keep"),
    "liger": ("auto", True, False),
    "activation_checkpointing": (True, False),
    "compile": (False, "blocks", "model"),
}


@dataclass
class SpeedConfig:
    """The ``speed`` group: one switch per option (``CHOICES``); they may change across a resume."""

    frozen_dtype: str = setting(choice(*CHOICES["frozen_dtype"]))
    liger: Any = setting(choice(*CHOICES["liger"]))
    activation_checkpointing: Any = setting(choice(*CHOICES["activation_checkpointing"]))
    compile: Any = setting(choice(*CHOICES["compile"]))


class SpeedUp(Callback):
    """Applies the speed options once, at the first setup (the step-0 validation
    then already measures with the kernels training uses). Place it after the
    freeze callback: what it does depends on which parameters train."""

    def __init__(
        self,
        frozen_dtype: str = "auto",
        liger: str | bool = "auto",
        activation_checkpointing: bool = False,
        compile: str | bool = False,  # noqa: A002 - the option's name in conf/speed/
        keep_originals: bool = True,  # False: no export follows (lp.bench)
    ):
        self.options = dict(
            frozen_dtype=frozen_dtype,
            liger=liger,
            activation_checkpointing=activation_checkpointing,
            compile=compile,
        )
        for key, value in self.options.items():
            if value not in CHOICES[key]:
                allowed = ", ".join(str(c).lower() for c in CHOICES[key])
                raise LpError(f"speed.{key}={value!r} is unknown; allowed: {allowed}")
        self.keep_originals = keep_originals
        self.applied: dict[str, object] | None = None  # what was done, once done

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.applied is None:
            device = trainer.strategy.root_device
            # only rank 0 exports: the other ranks need not hold the full-precision copies
            keep = self.keep_originals and trainer.is_global_zero
            originals = pl_module.originals if keep else None
            self.applied = speed_up(pl_module.model, trainer.precision, device, originals, **self.options)
            log.info("lp speed options: %s", self.applied)


def speed_up(model, precision: str, device: torch.device, originals: dict | None = None, **options) -> dict:
    """Apply the options to a model whose trainable set is final; returns what was done.
    ``originals`` (a dict) receives the full-precision tensor of every weight cast
    down, by parameter name."""
    done: dict[str, object] = {}
    dtype = frozen_dtype(options.get("frozen_dtype", "auto"), precision)
    if dtype is not None:
        done["frozen_dtype"] = f"{cast_frozen_linears(model, dtype, originals)} tensors to {str(dtype)[6:]}"
    if use_liger(options.get("liger", "auto"), device):
        apply_liger(model)
        done["liger"] = True
    if options.get("activation_checkpointing"):
        done["activation_checkpointing"] = checkpoint_trained_layers(model)
    mode = options.get("compile", False)
    if mode:
        compile_model(model, mode)
        done["compile"] = mode
    return done


def frozen_dtype(option: str, precision: str) -> torch.dtype | None:
    if option == "keep":
        return None
    if option == "auto":  # only where autocast would cast the weights to that dtype anyway
        return torch.bfloat16 if str(precision).startswith("bf16-mixed") else None
    return getattr(torch, option)


def cast_frozen_linears(model: torch.nn.Module, dtype: torch.dtype, originals: dict | None = None) -> int:
    """Store frozen linear weights (and their biases) in ``dtype``; returns how many
    tensors. ``originals`` receives each full-precision tensor under its parameter
    name. A head tied to the input embedding is left alone: casting it would cast
    the embedding too, and with it the residual stream."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    linear = {id(p) for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters(False)}
    n = 0
    for name, p in model.named_parameters():  # each shared parameter once, under its first name
        if id(p) not in linear or p.requires_grad or p.dtype == dtype or id(p) in embeddings:
            continue
        if originals is not None:
            originals[name] = p.data
        p.data = p.data.to(dtype)
        n += 1
    return n


def use_liger(option, device: torch.device) -> bool:
    installed = importlib.util.find_spec("liger_kernel") is not None
    if option == "auto":
        return device.type == "cuda" and installed
    if option and not installed:
        raise LpError("speed.liger=true needs liger-kernel: pip install liger-kernel (CUDA only)")
    if option and device.type != "cuda":
        raise LpError("speed.liger=true needs a CUDA device (Liger kernels are Triton); use speed.liger=auto")
    return bool(option)


def apply_liger(model) -> None:
    """Liger's own patcher for a loaded model (what transformers' Trainer calls for
    ``use_liger_kernel``); a peft model is patched through its base model."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(model=base)


def checkpoint_trained_layers(model) -> list[int]:
    """Non-reentrant checkpointing for the layers a backward pass goes through.

    Uses transformers' per-layer switch (``GradientCheckpointingLayer``): the
    layer's forward runs under ``torch.utils.checkpoint`` and is recomputed in
    the backward pass. Returns the checkpointed layer indices."""
    layers = decoder_layers(model)
    low = lowest_trainable_layer(model)
    chosen = [] if low is None else list(range(low, len(layers)))
    for i in chosen:
        if not hasattr(layers[i], "gradient_checkpointing"):
            raise LpError(
                f"speed.activation_checkpointing: {type(layers[i]).__name__} has no per-layer checkpointing "
                "switch (needs a transformers decoder layer)"
            )
        layers[i].gradient_checkpointing = True
        layers[i]._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    return chosen


def compile_model(model, mode: str) -> None:
    """``nn.Module.compile`` works in place: state_dict keys stay the same, so
    checkpoints and the export are unaffected. Identical layers share one
    compiled graph (frozen and trainable layers get one each)."""
    if mode == "model":
        model.compile()
        return
    for layer in decoder_layers(model):
        layer.compile()
