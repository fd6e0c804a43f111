"""``python -m lp.bench``: lp's training step against a plain PyTorch loop.

Runs the same model, batch and number of steps through (a) the loop a user
would write (transformers model, requires_grad=False on the original blocks,
autocast bf16 on CUDA, AdamW over the trainable parameters; the shape of
``shared/bench/naive_reference.py``) and (b) lp's real step (CausalLMModule +
FreezeCallback + Lightning Trainer), for block expansion and full fine-tuning
of the same expanded model. Prints a table and, with ``--json``, writes
``{"device", "runs", "ratios": {"lp_over_plain_step_time", "freeze_over_full_step_time"}}``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lp.callbacks import FreezeCallback
from lp.expansion import expand_model, make_plan
from lp.flops import peak_flops, useful_flops_per_token
from lp.module import CausalLMModule

SHAPES = {  # base shapes (as in the naive reference); --blocks new blocks go on top
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=24, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
    "1.5b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000),
    "8.3b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000),
}  # fmt: skip


def build(shape: str, blocks: int, mode: str, device: torch.device, lp_layout: bool):
    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192)
    attn = "sdpa"
    model = LlamaForCausalLM._from_config(cfg, attn_implementation=attn)
    plan = make_plan(cfg.num_hidden_layers, blocks)
    expand_model(model, plan)
    module = CausalLMModule(model, plan)
    FreezeCallback(trainable="new_blocks" if mode == "block_expansion" else "all").freeze_before_training(
        module
    )
    if lp_layout and device.type == "cuda":  # frozen weights in the compute dtype, trainable fp32 masters
        for p in model.parameters():
            p.data = p.data.to(torch.float32 if p.requires_grad else torch.bfloat16)
    return model.to(device), module, plan


def plain(model, batches, device) -> list[float]:
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=device.type == "cuda"
    )
    times = []
    for ids in batches:
        t = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def lp_step(module, batches, device) -> list[float]:
    import lightning as L

    class Clock(L.Callback):
        def __init__(self):
            self.times, self.t = [], 0.0

        def on_train_batch_start(self, *a):
            self.t = time.perf_counter()

        def on_train_batch_end(self, *a):
            _sync(device)
            self.times.append(time.perf_counter() - self.t)

    clock = Clock()
    trainer = L.Trainer(
        max_steps=len(batches), accelerator=device.type, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        precision="bf16-mixed" if device.type == "cuda" else "32-true", callbacks=[clock],
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        [{"input_ids": b[0], "labels": b[0]} for b in batches], batch_size=None
    )
    trainer.fit(module, train_dataloaders=loader)
    return clock.times


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(args, mode: str, runner: str, device) -> dict:
    try:
        return _measure(args, mode, runner, device)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"runner": runner, "mode": mode, "step_s": None, "tokens_per_s": None, "useful_tflops": None,
                "mfu": None, "peak_gib": None, "error": "out of memory"}  # fmt: skip


def _measure(args, mode: str, runner: str, device) -> dict:
    model, module, plan = build(args.shape, args.blocks, mode, device, lp_layout=runner == "lp")
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    batches = [
        torch.randint(0, vocab, (args.mb, args.seq), generator=g).to(device) for _ in range(args.steps)
    ]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if runner == "plain":
        times = plain(model, batches, device)
    else:
        times = lp_step(module, [b.unsqueeze(0) for b in batches], device)
    step = sorted(times[args.warmup :])[len(times[args.warmup :]) // 2]  # median after warm-up
    tokens = args.mb * args.seq
    flops = useful_flops_per_token(model, args.seq) * tokens / step
    peak = peak_flops(device, args.peak_tflops)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del model, module
    return {"runner": runner, "mode": mode, "step_s": step, "tokens_per_s": tokens / step,
            "useful_tflops": flops / 1e12, "mfu": flops / peak if peak else None,
            "peak_gib": mem}  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lp.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=SHAPES, default="tiny")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--mb", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = [measure(args, mode, runner, device) for mode in ("block_expansion", "full_finetune")
            for runner in ("plain", "lp")]  # fmt: skip
    by = {(r["runner"], r["mode"]): r for r in runs}
    ratios = {
        "lp_over_plain_step_time": by["lp", "block_expansion"]["step_s"]
        / by["plain", "block_expansion"]["step_s"],
        "freeze_over_full_step_time": by["lp", "block_expansion"]["step_s"]
        / by["lp", "full_finetune"]["step_s"],
    }
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"device: {name}   shape: {args.shape} (+{args.blocks} blocks)   "
        f"micro-batch {args.mb} x seq {args.seq}"
    )
    print(f"{'runner':<7}{'mode':<17}{'step s':>9}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}")
    for r in runs:
        if r["step_s"] is None:
            print(f"{r['runner']:<7}{r['mode']:<17}  {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        mem = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"{r['runner']:<7}{r['mode']:<17}{r['step_s']:>9.4f}{r['tokens_per_s']:>11,.0f}"
              f"{r['useful_tflops']:>9.3f}{mfu:>7}{mem:>10}")  # fmt: skip
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}" if v is not None else f"{k}: -")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "shape": args.shape, "runs": runs, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
