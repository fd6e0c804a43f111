"""Benchmark: lp.expand (streamed) against the whole-model approach and a plain copy.

    python experiments/expand_bench.py --workdir /tmp/expand_bench [--layers 24 --blocks 8]

Builds a random 1.2B-parameter Llama checkpoint (24 layers, hidden 2048,
intermediate 5632, vocab 32000, bf16, 1 GB shards), then expands it to 32
layers three ways, each in its own process under GNU time for wall time and
peak RSS: `cp -r` of the source, `python -m lp.expand`, and what public scripts
do (load the whole model with transformers, copy the state dict, save it).
Checks that both expansions are tensor-for-tensor identical.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

WHOLE_MODEL = r"""
import json, sys, torch
from huggingface_hub import save_torch_state_dict
from transformers import AutoModelForCausalLM
src, dst, blocks = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
sd, layers = model.state_dict(), model.config.num_hidden_layers
group, out, k = layers // blocks, {}, 0
for name, t in sd.items():
    if ".layers." not in name:
        out[name] = t
for i in range(layers):
    block = {n.split(f"layers.{i}.", 1)[1]: t for n, t in sd.items() if f"layers.{i}." in n}
    for n, t in block.items():
        out[f"model.layers.{k}.{n}"] = t
    k += 1
    if (i + 1) % group == 0:
        for n, t in block.items():
            zero = "o_proj" in n or "down_proj" in n
            out[f"model.layers.{k}.{n}"] = torch.zeros_like(t) if zero else t.clone()
        k += 1
import os; os.makedirs(dst, exist_ok=True)
save_torch_state_dict(out, dst, max_shard_size="1GB")
cfg = json.load(open(f"{src}/config.json")); cfg["num_hidden_layers"] = k
json.dump(cfg, open(f"{dst}/config.json", "w"), indent=2)
"""


def make_source(path: Path, layers: int) -> None:
    import torch
    from huggingface_hub import save_torch_state_dict
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers, num_attention_heads=16,
        num_key_value_heads=16, vocab_size=32000, dtype="bfloat16",
    )  # fmt: skip
    h, f, v = 2048, 5632, 32000
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + f"self_attn.{x}_proj.weight": (h, h) for x in "qkvo"})
        shapes.update({p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h)})
        shapes.update({p + "mlp.down_proj.weight": (h, f), p + "input_layernorm.weight": (h,)})
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    g = torch.Generator().manual_seed(0)
    sd = {n: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    path.mkdir(parents=True)
    save_torch_state_dict(sd, path, max_shard_size="1GB")
    cfg.save_pretrained(path)
    print(f"source: {sum(t.numel() for t in sd.values()) / 1e9:.2f}B parameters in {path}", flush=True)


def timed(cmd: list[str]) -> dict:
    t = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(rss_kb / 2**20, 2)}


def identical(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    def index(d):
        out = {}
        for f in d.glob("*.safetensors"):
            with safe_open(f, "pt") as s:
                out.update({k: f for k in s.keys()})
        return out

    ia, ib = index(a), index(b)
    if ia.keys() != ib.keys():
        return False
    for k in ia:
        with safe_open(ia[k], "pt") as sa, safe_open(ib[k], "pt") as sb:
            x, y = sa.get_tensor(k), sb.get_tensor(k)
            if x.dtype != y.dtype or not bool((x == y).all()):
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/expand_bench"))
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--blocks", type=int, default=8)
    a = ap.parse_args()
    src = a.workdir / "src"
    if not (src / "config.json").is_file():
        shutil.rmtree(a.workdir, ignore_errors=True)
        make_source(src, a.layers)
    for d in ("copy", "lp", "whole"):
        shutil.rmtree(a.workdir / d, ignore_errors=True)
    py = sys.executable
    runs = {
        "cp -r": timed(["cp", "-r", str(src), str(a.workdir / "copy")]),
        "lp.expand": timed([py, "-m", "lp.expand", str(src), str(a.workdir / "lp"), "--blocks", str(a.blocks),
                            "--shard-size", "1GB"]),
        "whole model": timed([py, "-c", WHOLE_MODEL, str(src), str(a.workdir / "whole"), str(a.blocks)]),
    }  # fmt: skip
    same = identical(a.workdir / "lp", a.workdir / "whole")
    lp, whole = runs["lp.expand"], runs["whole model"]
    report = {
        "runs": runs,
        "identical_output": same,
        "lp_over_whole_wall": round(lp["wall_s"] / whole["wall_s"], 3),
        "lp_over_whole_rss": round(lp["peak_rss_gib"] / whole["peak_rss_gib"], 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
