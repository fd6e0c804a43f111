"""The paper's MoE comparison (appendix H), as lp builds it.

Every block's MLP gets a second down projection beside the original, zero at
start, and the two are mixed by a learned softmax over two scalars:
``down(h) -> 2 * (p0 * down(h) + p1 * new_down(h))`` with ``p = softmax(s)``.
The two "experts" share the MLP's gate/up activations ``h``. At start s = 0 and
the new projection is zero, so the output is the base's exactly (the factor 2
and the halves are exact in binary floating point). Only the new projections
and the scalars train. Because both experts are linear in the same ``h``, the
trained pair folds back into one down projection for export, so the exported
checkpoint is an ordinary model of the base's architecture.
"""

from __future__ import annotations

import torch
from torch import nn

ADDED = ("moe_down", "moe_logits")  # names of the parameters this method adds


class MixedDownProj(nn.Module):
    def __init__(self, original: nn.Linear):
        super().__init__()
        self.original = original
        self.moe_down = nn.Linear(original.in_features, original.out_features, bias=original.bias is not None)
        self.moe_down.to(device=original.weight.device, dtype=original.weight.dtype)
        nn.init.zeros_(self.moe_down.weight)
        if self.moe_down.bias is not None:
            nn.init.zeros_(self.moe_down.bias)
        self.moe_logits = nn.Parameter(torch.zeros(2, device=original.weight.device))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(self.moe_logits.float(), dim=0).to(h.dtype)
        return 2 * (p[0] * self.original(h) + p[1] * self.moe_down(h))


def add_experts(model: nn.Module, layers: nn.ModuleList) -> nn.Module:
    for block in layers:
        block.mlp.down_proj = MixedDownProj(block.mlp.down_proj)
    return model


def fold(original: dict[str, torch.Tensor], new: dict[str, torch.Tensor], logits: torch.Tensor) -> dict:
    """The one linear layer's weight (and bias) computing ``MixedDownProj``'s function:
    ``2 * (p0 * W + p1 * W_new)``, in float32, returned in the original's dtype."""
    p = torch.softmax(logits.detach().float(), dim=0)
    return {
        k: (2 * (p[0] * original[k].float() + p[1] * new[k].float())).to(original[k].dtype) for k in original
    }


def fold_state_dict(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` (the model's state dict) with every ``MixedDownProj`` folded into
    the plain ``down_proj`` of the base architecture; the model is not changed."""
    from torch.distributed.fsdp._common_utils import clean_tensor_name

    out = dict(weights)
    for wrapped_name, module in model.named_modules():
        if isinstance(module, MixedDownProj):
            # under FSDP module names carry its wrappers' prefixes; gathered state dict keys do not
            name = clean_tensor_name(wrapped_name)
            keys = [k for k in ("weight", "bias") if f"{name}.original.{k}" in weights]
            original = {k: out.pop(f"{name}.original.{k}") for k in keys}
            new = {k: out.pop(f"{name}.moe_down.{k}") for k in keys}
            folded = fold(original, new, out.pop(f"{name}.moe_logits"))
            out.update({f"{name}.{k}": v for k, v in folded.items()})
    return out
