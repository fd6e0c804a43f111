"""FLOPs a training step really does, for throughput and MFU.

With frozen blocks the step does less than the usual 6N per token: the forward
pass is 2N; the backward pass computes input-gradients (2 per weight) only
through the layers at and above the lowest trainable block, and weight-
gradients (2 per weight) only for trainable parameters. Attention adds
2*seq*hidden per layer per token in the forward (QK^T and AV, causal half
counted as in the PaLM/nanoGPT convention) and twice that in the backward
where the input-gradient flows.
"""

from __future__ import annotations

import torch

from lp.expansion import decoder_layers

# dense bf16 peak of common accelerators, TFLOP/s (vendor figures, without sparsity)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def useful_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    layers = decoder_layers(model)
    n_layers, hidden = len(layers), model.config.hidden_size
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    low = lowest_trainable_layer(model)
    if low is None:  # nothing below the head trains: only the head's own gradients
        above, attn_back_layers = 0, 0
    else:
        above = sum(p.numel() for layer in list(layers)[low:] for p in layer.parameters())
        above += model.get_output_embeddings().weight.numel()
        attn_back_layers = n_layers - low
    attn = 2 * seq_len * hidden  # per layer per token, forward
    return 2 * n + 2 * above + 2 * trainable + attn * n_layers + 2 * attn * attn_back_layers


def lowest_trainable_layer(model: torch.nn.Module) -> int | None:
    """Index of the lowest decoder layer that trains or sits above something that does;
    0 when the embeddings train."""
    if model.get_input_embeddings().weight.requires_grad:
        return 0
    for i, layer in enumerate(decoder_layers(model)):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return None


def peak_flops(device: torch.device, configured: float | None) -> float | None:
    """FLOP/s to compute MFU against: the configured TFLOP/s, else a known GPU's."""
    if configured:
        return float(configured) * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None
