"""Seeds pooled: the runs of a sweep grouped by configuration, every metric as
mean ± std (n) over the seeds of that configuration (``lp.report``'s
``by_config.md`` and ``by_config.csv``), and every configuration against the first,
seed by seed (``paired.md``, ``paired.csv``).

A configuration is the run's whole composed Hydra config (``.hydra/config.yaml``,
interpolations left as written) less the keys a seed sets and the keys that only
say where the run writes: two runs belong together exactly when nothing else
differs, whatever was swept.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable
from pathlib import Path

from lp.core.files import write_atomic

# what a seed changes (lp.train seeds everything from `seed`; data.train_seed follows it)
# and where a run writes: neither tells configurations apart
EXCLUDED = ("seed", "data.train_seed", "logger.save_dir")


def config_file(log_dir: Path) -> Path | None:
    """The run's ``.hydra/config.yaml``, beside or above its event files."""
    for d in (log_dir, *log_dir.parents[:2]):
        if (d / ".hydra" / "config.yaml").is_file():
            return d / ".hydra" / "config.yaml"
    return None


def run_config(log_dir: Path) -> dict[str, str]:
    """The run's composed config flattened to ``dotted.key -> value as text``, as
    written (empty if the run has none)."""
    from omegaconf import OmegaConf

    f = config_file(log_dir)
    if not f:
        return {}
    cfg = OmegaConf.load(f)
    flat = flatten(OmegaConf.to_container(cfg, resolve=False))
    for key, value in flat.items():  # interpolations within the config (debug=smoke's seq_len)
        if "${" in value:
            try:
                flat[key] = str(OmegaConf.select(cfg, key, throw_on_resolution_failure=True))
            except Exception:  # Hydra's own resolvers (${hydra:...}) exist only inside a run
                pass
    return flat


def flatten(tree, prefix: str = "") -> dict[str, str]:
    if not isinstance(tree, dict):
        return {prefix: str(tree)}
    out: dict[str, str] = {}
    for k, v in tree.items():
        out |= flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": str(v)}
    return out


def configuration(config: dict[str, str]) -> tuple:
    return tuple(sorted((k, v) for k, v in config.items() if k not in EXCLUDED))


def labels(configs: Iterable[tuple]) -> dict[tuple, str]:
    """A short name per configuration: the keys whose values differ between them."""
    configs = list(dict.fromkeys(configs))
    keys = sorted({k for c in configs for k, _ in c})
    varying = [k for k in keys if len({dict(c).get(k) for c in configs}) > 1]
    return {c: ", ".join(f"{k}={dict(c).get(k, '-')}" for k in varying) or "all runs" for c in configs}


def spread(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n) of the values that are numbers; std is
    NaN below two values."""
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan, len(vals)


def group(runs: list) -> dict[str, list]:
    """Configuration label -> its runs (``Run`` of ``lp.report``, with ``config``), in
    the order configurations first appear."""
    keys = [configuration(r.config) for r in runs]
    names = labels(keys)
    out: dict[str, list] = {}
    for k, r in zip(keys, runs, strict=True):
        out.setdefault(names[k], []).append(r)
    return out


def pooled_table(groups: dict[str, list], metrics: dict) -> tuple[list[str], list[list]]:
    """One row per configuration: its label, its seeds, then (mean, std, n) per metric;
    ``metrics`` maps a column name to a function of a run."""
    header = ["configuration", "seeds", *metrics]
    rows = []
    for name, runs in groups.items():
        seeds = ",".join(sorted({r.config.get("seed", "?") for r in runs}, key=_seed_key))
        rows.append([name, seeds, *(spread([f(r) for r in runs]) for f in metrics.values())])
    return header, rows


def _seed_key(s: str):
    return (0, int(s)) if s.isdigit() else (1, s)


def write_by_config(groups: dict[str, list], metrics: dict, out: Path) -> None:
    header, rows = pooled_table(groups, metrics)
    md = ["# Seeds pooled by configuration", "",
          "Mean ± sample standard deviation over seeds (n: runs with the metric). A configuration "
          "is the whole Hydra config less seed and output keys; named by what differs.", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    for r in rows:
        md.append("| " + " | ".join([r[0], r[1], *(_cell(*s) for s in r[2:])]) + " |")
    write_atomic(out / "by_config.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*header[:2], *(f"{m} {part}" for m in header[2:] for part in ("mean", "std", "n"))])
    for r in rows:
        w.writerow([r[0], r[1], *(x for s in r[2:] for x in s)])
    write_atomic(out / "by_config.csv", buf.getvalue())


def _cell(mean: float, std: float, n: int, signed: bool = False) -> str:
    if n == 0:
        return "-"
    m = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return f"{m} (n=1)" if n == 1 else f"{m} ± {std:.4f} ({n})"


def paired_table(groups: dict[str, list], metrics: dict) -> tuple[list[str], list[list]]:
    """Every configuration minus the first one (the sweep's first), seed by seed: runs
    with the same seed read the same training rows and are scored on the same eval rows,
    so what the seed shares cancels in the difference. One row per configuration with
    (mean, std, n) of the per-seed differences; seeds missing on either side are left out."""
    names = list(groups)
    header = ["configuration", "minus", "seeds", *metrics]
    if len(names) < 2:
        return header, []
    reference = {r.config.get("seed"): r for r in groups[names[0]]}
    rows = []
    for name in names[1:]:
        pairs = [
            (r, reference[r.config.get("seed")]) for r in groups[name] if r.config.get("seed") in reference
        ]
        seeds = ",".join(sorted({r.config.get("seed", "?") for r, _ in pairs}, key=_seed_key))
        diffs = [spread([f(a) - f(b) for a, b in pairs]) for f in metrics.values()]
        rows.append([name, names[0], seeds, *diffs])
    return header, rows


def write_paired(groups: dict[str, list], metrics: dict, out: Path) -> None:
    header, rows = paired_table(groups, metrics)
    if not rows:
        return
    md = ["# Paired by seed", "",
          f"Each configuration minus **{rows[0][1]}**, seed by seed (same training rows, same eval "
          "rows): mean ± sample standard deviation of the differences (n: seeds in both).", "",
          "| " + " | ".join(h for h in header if h != "minus") + " |",
          "|" + "---|" * (len(header) - 1)]  # fmt: skip
    for r in rows:
        md.append("| " + " | ".join([r[0], r[2], *(_cell(*s, signed=True) for s in r[3:])]) + " |")
    write_atomic(out / "paired.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*header[:3], *(f"{m} {part}" for m in header[3:] for part in ("mean", "std", "n"))])
    for r in rows:
        w.writerow([*r[:3], *(x for s in r[3:] for x in s)])
    write_atomic(out / "paired.csv", buf.getvalue())
