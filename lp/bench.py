"""``python -m lp.bench``: lp's training step against a plain PyTorch loop.

Runs the same model, batches and number of steps through (a) the loop a user
would write, shaped like the plain-PyTorch reference loop that lp's GPU targets were
set against (the team's, kept outside this repository; experiments/BENCHMARKS.md
names it): a transformers model, no KV cache, requires_grad=False on the original blocks, frozen weights
cast to bf16 and autocast bf16 on CUDA, fused AdamW on CUDA over the trainable
parameters) and (b) lp's real step (CausalLMModule + FreezeCallback + SpeedUp
with the configured speed options, in a Lightning Trainer), for block expansion
and full fine-tuning of the same expanded model.

A step's time is the interval between consecutive step ends (data loading and
every framework hook included); the figure is the median over all steps after
each measurement's warm-up. On a shared CPU, ``--rounds`` repeats the four
measurements in alternating order so that slow phases of the machine hit all
of them alike. ``--json`` writes ``{"device", "runs", "ratios":
{"lp_over_plain_step_time", "freeze_over_full_step_time"}}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lp.expansion import expand_model, make_plan
from lp.measure.flops import peak_flops, useful_flops_per_token
from lp.training.callbacks import FreezeCallback
from lp.training.methods import METHODS
from lp.training.module import CausalLMModule
from lp.training.speed import SpeedUp

SHAPES = {  # base shapes (as in the naive reference); --blocks new blocks go on top
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=24, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
    "1.5b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000),
    "8.3b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000),
    "smollm2": None,  # the default run's real base, SmolLM2-135M (30 -> 38 layers), as lp.train loads it
}  # fmt: skip
# micro-batch, sequence, steps, warm-up steps, rounds: the naive reference's
# settings for tiny and 1.5b; micro-batch 2 for 8.3b, where the target is set
DEFAULTS = {
    "tiny": dict(mb=2, seq=64, steps=12, warmup=3, rounds=10),
    "1.5b": dict(mb=4, seq=2048, steps=10, warmup=4, rounds=1),
    "8.3b": dict(mb=2, seq=4096, steps=8, warmup=3, rounds=1),
    "smollm2": dict(mb=2, seq=128, steps=20, warmup=3, rounds=3),  # the default run's batch shape
}
RUNS = [(runner, mode) for mode in ("block_expansion", "full_finetune") for runner in ("plain", "lp")]


def build(shape: str, blocks: int, device: torch.device):
    """The expanded model, built directly on the device (a host-side fp32 init of
    8B parameters takes minutes); ``smollm2``: the real base, loaded as lp.train loads it."""
    torch.manual_seed(0)
    if SHAPES[shape] is None:
        model = real_base(shape).to(device)
    else:
        cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, use_cache=False)
        with torch.device(device):
            model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
    plan = make_plan(model.config.num_hidden_layers, blocks)
    expand_model(model, plan)
    return model.train(), plan


def real_base(name: str):
    """The base of ``conf/model/<name>.yaml`` (converted once and cached, lp.base.models)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from lp.base.models import load_model
    from lp.training.bases import resolve_base

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / f"{name}.yaml")
    return load_model(resolve_base(cfg, {}), "sdpa", "float32")


def plain_loop(model, plan, mode: str, batches, device) -> list[float]:
    """What a user writes by hand (the naive reference's step)."""
    cuda = device.type == "cuda"
    if METHODS[mode].trainable == "layers":
        model.requires_grad_(False)
        for j in plan.new_layers:
            model.model.layers[j].requires_grad_(True)
        if cuda:  # frozen weights need no fp32 copy
            for p in model.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=cuda)
    ends = [time.perf_counter()]
    for ids in batches:
        with torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        ends.append(time.perf_counter())
    return _intervals(ends)


def lp_trainer(model, plan, mode: str, batches, device, speed: dict) -> list[float]:
    """lp's step: the LightningModule, the freeze callback and the speed options in a real Trainer."""
    import lightning as L

    class StepEnds(L.Callback):
        def __init__(self):
            self.ends = []

        def on_train_start(self, *args):
            self.ends.append(time.perf_counter())

        def on_train_batch_end(self, *args):
            _sync(device)
            self.ends.append(time.perf_counter())

    ends = StepEnds()
    trainer = L.Trainer(
        max_steps=len(batches), accelerator=device.type, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        callbacks=[FreezeCallback(), SpeedUp(**speed, keep_originals=False), ends],
    )  # fmt: skip
    # batch_size=None: the loader hands over each prepared batch as it is
    loader = torch.utils.data.DataLoader([{"input_ids": b, "labels": b} for b in batches], batch_size=None)
    trainer.fit(CausalLMModule(model, plan, method=mode), train_dataloaders=loader)
    return _intervals(ends.ends)


def _intervals(ends: list[float]) -> list[float]:
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(args, runner: str, mode: str, device) -> dict:
    """One measurement: a fresh model, ``warmup + steps`` steps; the kept step times."""
    model = None
    try:
        model, plan = build(args.shape, args.blocks, device)
        g = torch.Generator().manual_seed(1)
        vocab = model.config.vocab_size
        batches = [torch.randint(0, vocab, (args.mb, args.seq), generator=g).to(device)
                   for _ in range(args.warmup + args.steps)]  # fmt: skip
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if runner == "plain":
            times = plain_loop(model, plan, mode, batches, device)
        else:
            times = lp_trainer(model, plan, mode, batches, device, args.speed)
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        flops = useful_flops_per_token(model, args.seq)
        return {"times": times[args.warmup :], "peak_gib": mem, "flops_per_token": flops}
    except torch.OutOfMemoryError:
        return {"times": [], "peak_gib": None, "flops_per_token": None, "error": "out of memory"}
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def summarise(runner: str, mode: str, parts: list[dict], args, peak: float | None) -> dict:
    measured = ["step_s", "step_s_p25", "step_s_p75", "tokens_per_s", "useful_tflops", "mfu", "peak_gib"]
    row = dict.fromkeys(measured)
    row.update(runner=runner, mode=mode)
    errors = [p["error"] for p in parts if "error" in p]
    times = sorted(t for p in parts for t in p["times"])
    if errors or not times:
        return {**row, "error": errors[0] if errors else "no steps measured"}
    step = _median(times)
    flops = parts[0]["flops_per_token"] * args.mb * args.seq / step
    mems = [p["peak_gib"] for p in parts if p["peak_gib"] is not None]
    row.update(step_s=step, step_s_p25=times[len(times) // 4], step_s_p75=times[3 * len(times) // 4])
    row.update(tokens_per_s=args.mb * args.seq / step, useful_tflops=flops / 1e12)
    row.update(mfu=flops / peak if peak else None, peak_gib=max(mems) if mems else None)
    return row


RATIOS = {  # name: (numerator, denominator)
    "lp_over_plain_step_time": (("lp", "block_expansion"), ("plain", "block_expansion")),
    "freeze_over_full_step_time": (("lp", "block_expansion"), ("lp", "full_finetune")),
}


def paired_ratios(parts: dict[tuple[str, str], list[dict]]) -> dict[str, float | None]:
    """Each ratio is taken within a round (measurements close in time), then the
    median over rounds: a slow phase of a shared machine then cancels out."""
    out = {}
    for name, (num, den) in RATIOS.items():
        pairs = list(zip(parts[num], parts[den], strict=True))
        if all(a["times"] and b["times"] for a, b in pairs):
            out[name] = _median([_median(a["times"]) / _median(b["times"]) for a, b in pairs])
        else:
            out[name] = None
    return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m lp.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=SHAPES, default="tiny")
    ap.add_argument("--blocks", type=int, default=8)
    for key in ("mb", "seq", "steps", "warmup", "rounds"):
        per_shape = ", ".join(f"{s} {d[key]}" for s, d in DEFAULTS.items())
        ap.add_argument(f"--{key}", type=int, help=f"default: {per_shape}")
    ap.add_argument("--liger", choices=["auto", "true", "false"], default="auto")
    ap.add_argument("--compile", choices=["false", "blocks", "model"], default="false")
    ap.add_argument("--ckpt", action="store_true", help="checkpoint the layers with a backward pass")
    ap.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    for key, value in DEFAULTS[args.shape].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.mb, args.seq, args.steps, args.rounds) < 1 or args.warmup < 0:
        ap.error("--mb, --seq, --steps and --rounds must be at least 1, --warmup at least 0")
    flag = {"true": True, "false": False}
    args.speed = dict(liger=flag.get(args.liger, args.liger), compile=flag.get(args.compile, args.compile),
                      activation_checkpointing=args.ckpt)  # fmt: skip
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parts: dict[tuple[str, str], list[dict]] = {key: [] for key in RUNS}
    for r in range(args.rounds):
        for key in RUNS if r % 2 == 0 else RUNS[::-1]:  # alternate the order between rounds
            parts[key].append(measure(args, *key, device))
    peak = peak_flops(device, args.peak_tflops)
    runs = [summarise(*key, parts[key], args, peak) for key in RUNS]
    ratios = paired_ratios(parts)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print_table(name, args, runs, ratios)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        out = {"device": name, "shape": args.shape, "settings": settings, "runs": runs, "ratios": ratios}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


COLUMNS = [("runner", "<7"), ("mode", "<17"), ("step s", ">9"), ("p25-p75", ">16"), ("tokens/s", ">11"),
           ("TFLOP/s", ">9"), ("MFU", ">7"), ("GiB", ">7")]  # fmt: skip


def print_table(name: str, args, runs: list[dict], ratios: dict) -> None:
    print(f"device: {name}  shape: {args.shape} (+{args.blocks} blocks)  micro-batch {args.mb} x {args.seq}")
    print(f"{args.rounds} round(s) x {args.steps} steps after {args.warmup} warm-up   speed: {args.speed}")
    print("".join(f"{title:{fmt}}" for title, fmt in COLUMNS))
    for r in runs:
        if r["step_s"] is None:
            print(f"{r['runner']:<7}{r['mode']:<17}  {r['error']}")
            continue
        cells = [r["runner"], r["mode"], f"{r['step_s']:.4f}", f"{r['step_s_p25']:.4f}-{r['step_s_p75']:.4f}",
                 f"{r['tokens_per_s']:,.0f}", f"{r['useful_tflops']:.3f}",
                 f"{r['mfu']:.1%}" if r["mfu"] is not None else "-",
                 f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"]  # fmt: skip
        print("".join(f"{cell:{fmt}}" for cell, (_, fmt) in zip(cells, COLUMNS, strict=True)))
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}" if v is not None else f"{k}: -")


if __name__ == "__main__":
    main()
