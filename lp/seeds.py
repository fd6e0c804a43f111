"""Seeds pooled: the runs of a sweep grouped by configuration, every metric as
mean ± std (n) over the seeds of that configuration (``lp.report``'s
``by_config.md`` and ``by_config.csv``).

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

from lp.atomic import write_atomic

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
    return flatten(OmegaConf.to_container(OmegaConf.load(f), resolve=False)) if f else {}


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


def _cell(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "-"
    return f"{mean:.4f} (n=1)" if n == 1 else f"{mean:.4f} ± {std:.4f} ({n})"
