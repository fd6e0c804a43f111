"""The forgetting study's tables from lp.report's per-run curves (``curves.csv``):

    python experiments/forgetting_real_base/analyse.py REPORT_DIR > summary.md

1. every configuration at matched training tokens: gain and the three forgetting measures,
   mean ± sample std over seeds;
2. block expansion against each other configuration, paired by seed, at matched tokens;
3. at matched gain: each run's forgetting where its gain first reaches block expansion's
   final gain on the same seed (linear between evaluations), paired by seed;
4. along the curves: both runs cut at the same gain levels, paired by seed.
The layout runs (4 and 16 blocks, top, bottom; 50 steps) appear in 1 and 2 at the middle
budget, 51,200 tokens, which they share with the 8-block runs.

Gain: mean drop of the code and math losses from step 0. Forgetting: rise of the general
(Gutenberg) loss, rise of the loss on the base's own text, KL(base || model) per token.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from pathlib import Path

MEASURES = ("gain", "forgetting", "forgetting self", "kl")
NAMES = {"forgetting": "general", "forgetting self": "self", "kl": "KL", "gain": "gain"}


def short(configuration: str) -> str:
    """A readable name from the keys lp.report found to differ between configurations."""
    d = dict(p.split("=", 1) for p in configuration.split(", ") if "=" in p)
    method = d.get("method.name", "?")
    if method == "block_expansion":
        name = f"block expansion {d.get('expansion.blocks', '8')}"
        pos = d.get("expansion.position", "interleave")
        name += "" if pos == "interleave" else f" {pos}"
    elif method == "full_finetune":
        name = f"full FT lr {float(d.get('optim.lr', '0.0002')):g}"
    elif method == "lora":
        name = f"LoRA r={d.get('method.r', '?')}"
    else:
        name = method.replace("_", " ")
    return name


def load(report: Path) -> dict[str, dict[int, dict[int, dict]]]:
    """config -> seed -> tokens -> row."""
    out: dict = {}
    with open(report / "curves.csv") as f:
        for r in csv.DictReader(f):
            row = {m: float(r[m]) if r[m] not in ("", "nan") else math.nan for m in MEASURES}
            runs = out.setdefault(short(r["configuration"]), {})
            runs.setdefault(int(r["seed"]), {})[int(float(r["tokens"]))] = row
    return out


def spread(values: list[float]) -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:+.3f}"
    return f"{statistics.fmean(v):+.3f} ± {statistics.stdev(v):.3f}"


def signed(d: list[float]) -> str:
    """Paired differences: their spread and how many seeds lie above 0."""
    return spread(d) + (f" ({sum(x > 0 for x in d)}/{len(d)} > 0)" if len(d) > 1 else "")


def at_tokens(data, budgets) -> list[str]:
    lines = ["| configuration | seeds | tokens | " + " | ".join(NAMES[m] for m in MEASURES) + " |",
             "|---|---|---|" + "---|" * len(MEASURES)]  # fmt: skip
    for name, seeds in data.items():
        for t in budgets:
            rows = [s[t] for s in seeds.values() if t in s]
            if rows:
                cells = [spread([r[m] for r in rows]) for m in MEASURES]
                lines.append(f"| {name} | {len(rows)} | {t:,} | " + " | ".join(cells) + " |")
    return lines


def paired(data, reference: str, budgets) -> list[str]:
    lines = [f"| minus {reference} | tokens | seeds | " + " | ".join(NAMES[m] for m in MEASURES) + " |",
             "|---|---|---|" + "---|" * len(MEASURES)]  # fmt: skip
    ref = data[reference]
    for name, seeds in data.items():
        if name == reference:
            continue
        for t in budgets:
            common = [s for s in seeds if s in ref and t in seeds[s] and t in ref[s]]
            if not common:
                continue
            cells = [signed([seeds[s][t][m] - ref[s][t][m] for s in common]) for m in MEASURES]
            lines.append(f"| {name} | {t:,} | {len(common)} | " + " | ".join(cells) + " |")
    return lines


def at_gain(curve: dict[int, dict], target: float) -> dict | None:
    """The run's measures where its gain first reaches ``target`` (linear between evaluations)."""
    points = [curve[t] for t in sorted(curve)]
    for a, b in zip(points, points[1:], strict=False):
        if a["gain"] <= target <= b["gain"] and b["gain"] > a["gain"]:
            w = (target - a["gain"]) / (b["gain"] - a["gain"])
            return {m: a[m] + w * (b[m] - a[m]) for m in MEASURES}
    return None


def difference_header(first: str, reference: str) -> list[str]:
    """A table whose three first columns are ``first`` and whose others are the forgetting
    measures, each as a difference against ``reference``."""
    cells = " | ".join(f"{NAMES[m]}: it minus {reference}" for m in MEASURES[1:])
    return [f"| {first} | {cells} |", "|---|---|---|" + "---|" * (len(MEASURES) - 1)]


def matched_gain(data, reference: str) -> list[str]:
    lines = difference_header(f"configuration | seeds | at the gain {reference} reaches", reference)
    ref = data[reference]
    for name, seeds in data.items():
        if name == reference:
            continue
        diffs: dict[str, list[float]] = {m: [] for m in MEASURES[1:]}
        gains = []
        for s, curve in seeds.items():
            if s not in ref:
                continue
            final = ref[s][max(ref[s])]
            hit = at_gain(curve, final["gain"])
            if hit is None:
                continue
            gains.append(final["gain"])
            for m in MEASURES[1:]:
                diffs[m].append(hit[m] - final[m])
        if gains:
            lines.append(f"| {name} | {len(gains)} | {spread(gains)} | " +
                         " | ".join(spread(diffs[m]) for m in MEASURES[1:]) + " |")  # fmt: skip
        else:
            lines.append(f"| {name} | 0 | never reached | - | - | - |")
    return lines


def along_pareto(data, reference: str, levels=(0.3, 0.5, 0.7, 0.9)) -> list[str]:
    """Both curves cut at the same gain: each run's forgetting where its gain first reaches
    ``level``, minus the reference run's on the same seed (both interpolated)."""
    lines = difference_header("configuration | gain | seeds", reference)
    lines[0] += f" {reference} there: self, KL |"  # the size the differences are read against
    lines[1] += "---|"
    ref = data[reference]
    for name, seeds in data.items():
        if name == reference:
            continue
        for level in levels:
            hits = [(at_gain(c, level), at_gain(ref[s], level)) for s, c in seeds.items() if s in ref]
            hits = [(a, b) for a, b in hits if a is not None and b is not None]
            if hits:
                cells = [signed([a[m] - b[m] for a, b in hits]) for m in MEASURES[1:]]
                own = [statistics.fmean(b[m] for _, b in hits) for m in ("forgetting self", "kl")]
                cells.append(f"{own[0]:.3f}, {own[1]:.3f}")
                lines.append(f"| {name} | {level:.1f} | {len(hits)} | " + " | ".join(cells) + " |")
    return lines


def main(report: Path) -> None:
    data = load(report)
    reference = next(n for n in data if n == "block expansion 8")
    budgets = sorted({t for s in data[reference].values() for t in s if t > 0})  # the core runs' evaluations
    marks = [budgets[0], budgets[len(budgets) // 2 - 1], budgets[-1]] if len(budgets) > 2 else budgets
    out = ["# Forgetting study: tables", "", "## 1. At matched training tokens (mean ± std over seeds)", "",
           *at_tokens(data, marks), "", f"## 2. Paired by seed: each configuration minus {reference}", "",
           *paired(data, reference, marks), "", "## 3. At matched gain, paired by seed", "",
           "Each run's forgetting where its gain first reaches the final gain of block expansion 8 on "
           "the same seed (interpolated between evaluations), minus block expansion 8's final "
           "forgetting. Negative: forgets less at the same gain.", "", *matched_gain(data, reference), "",
           "## 4. Along the gain-forgetting curves, paired by seed", "",
           "Both runs cut where their gain first reaches the level (interpolated between "
           "evaluations; a run that never reaches it is left out). Negative: forgets less than "
           f"{reference} at the same gain.", "", *along_pareto(data, reference)]  # fmt: skip
    print("\n".join(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
