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

    def merged(self) -> nn.Linear:
        """One linear layer computing the same function."""
        p = torch.softmax(self.moe_logits.detach().float(), dim=0)
        out = nn.Linear(
            self.original.in_features, self.original.out_features, bias=self.original.bias is not None
        )
        out.to(device=self.original.weight.device, dtype=self.original.weight.dtype)
        with torch.no_grad():
            w = 2 * (p[0] * self.original.weight.float() + p[1] * self.moe_down.weight.float())
            out.weight.copy_(w)
            if out.bias is not None:
                out.bias.copy_(2 * (p[0] * self.original.bias.float() + p[1] * self.moe_down.bias.float()))
        return out


def add_experts(model: nn.Module, layers: nn.ModuleList) -> nn.Module:
    for block in layers:
        block.mlp.down_proj = MixedDownProj(block.mlp.down_proj)
    return model


def merge_experts(model: nn.Module, layers: nn.ModuleList) -> nn.Module:
    for block in layers:
        if isinstance(block.mlp.down_proj, MixedDownProj):
            block.mlp.down_proj = block.mlp.down_proj.merged()
    return model
