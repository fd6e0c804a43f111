"""What a configured mixture really yields: shares, samples, eval sizes, speed."""

from __future__ import annotations

import time
from collections import defaultdict

from lp.corpus.text import MixtureDataModule


def inspect_mixture(data: MixtureDataModule, batches: int) -> dict:
    """Draw ``batches`` training batches and measure them.

    ``tokens_per_s`` is the dataloader's own rate, worker start-up included.
    Documents are counted by the EOS tokens drawn (documents ended)."""
    data.setup("fit")
    eos = data.tokenizer.eos_token_id
    tokens: dict[int, int] = defaultdict(int)
    docs: dict[int, int] = defaultdict(int)
    samples: dict[int, str] = {}
    start = time.perf_counter()
    for i, batch in enumerate(data.train_dataloader()):
        if i == batches:
            break
        for ids, k in zip(batch["input_ids"], batch["source"].tolist(), strict=True):
            tokens[k] += ids.numel()
            docs[k] += int((ids == eos).sum())
            samples.setdefault(k, data.tokenizer.decode(ids[:96]))
    elapsed = time.perf_counter() - start
    total, weight_sum = sum(tokens.values()), sum(s.weight for s in data.sources)
    return {
        "sources": {
            s.name: {
                "domain": s.domain,
                "weight": s.weight,
                "weight_share": s.weight / weight_sum,
                "documents": docs[k],
                "tokens": tokens[k],
                "share": tokens[k] / total if total else 0.0,
                "sample": samples.get(k, ""),
            }
            for k, s in enumerate(data.sources)
        },
        "eval": {d: int(rows.numel()) for d, rows in data.eval_sets.items()},
        "tokens_per_s": total / elapsed if elapsed > 0 else 0.0,
    }


def format_report(report: dict, batches: int) -> str:
    lines = [
        f"{batches} batches drawn at {report['tokens_per_s']:,.0f} tokens/s (dataloader, start-up included)",
        "",
    ]
    lines.append(
        f"{'source':<16}{'domain':<10}{'weight':>8}{'share':>8}{'target':>8}{'docs':>8}{'tokens':>10}"
    )
    for name, s in report["sources"].items():
        lines.append(
            f"{name:<16}{s['domain']:<10}{s['weight']:>8.2f}{s['share']:>8.1%}{s['weight_share']:>8.1%}"
            f"{s['documents']:>8}{s['tokens']:>10}"
        )
    lines.append("")
    lines.append("eval sets (held-out tokens): " + ", ".join(f"{d}={n}" for d, n in report["eval"].items()))
    for name, s in report["sources"].items():
        lines.append(f"\n--- sample from {name} ---\n{s['sample']}")
    return "\n".join(lines)
