"""Gain and forgetting against training tokens (``lp.report``'s ``curves.csv``,
``curves_by_config.csv``, ``forgetting_vs_tokens.png`` and ``pareto.png``).

At every evaluation of a run: the domain gain (mean drop of the new-domain
losses from step 0) and the forgetting by each measure (``MEASURES``: the rise of
the general loss and of the loss on the base's own text from step 0, and the KL to
the base), against the tokens trained on so far; then, per configuration and
evaluation step, their mean and spread over seeds, so methods are compared at
matched token counts rather than only at the end. ``pareto.png`` draws gain against
each measure, one line per configuration through its evaluations.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from lp.core.files import write_atomic
from lp.reports.pooling import spread


def tokens_per_step(config: dict[str, str]) -> int | None:
    """Training tokens per optimizer step: rows x row length x accumulated batches x
    devices x nodes (``devices`` other than a count, e.g. ``auto``, counts as one)."""
    try:
        rows, length = int(config["data.batch_size"]), int(config["data.seq_len"])
    except (KeyError, ValueError):
        return None
    per = rows * length
    for key in ("trainer.accumulate_grad_batches", "trainer.devices", "trainer.num_nodes"):
        value = config.get(key, "1")
        per *= int(value) if value.isdigit() else 1
    return per


def trained_steps(config: dict[str, str], evaluations: int) -> list[int] | None:
    """Steps trained at each of a run's evaluations, from lp.train's schedule: step 0,
    every ``trainer.val_check_interval`` steps, and the last step. TensorBoard's step
    cannot be used as is: Lightning logs an evaluation inside ``fit`` at the count of
    batches before the last one (after 6 steps, at 5) but the one before ``fit`` at 0.
    None when the run's evaluations do not follow the schedule (e.g. a resumed run)."""
    try:
        every, last = int(config["trainer.val_check_interval"]), int(config["trainer.max_steps"])
    except (KeyError, ValueError):
        return None
    steps = list(range(0, last + 1, every))
    steps += [last] if steps[-1] != last else []
    return steps if len(steps) == evaluations else None


# forgetting measures: column -> (how a run's curves give it at evaluation i, axis label)
MEASURES = {
    "forgetting": (lambda c, i: _rise(c.get("val/general/loss"), i), "rise of the general loss"),
    "forgetting self": (lambda c, i: _rise(c.get("val/self/loss"), i), "rise of the loss on the base's text"),
    "kl": (lambda c, i: _at(c.get("forgetting/kl"), i), "KL(base || model), nats/token"),
}  # fmt: skip
VALUES = ("gain", *MEASURES)


def _at(curve, i: int) -> float:
    return curve[i][1] if curve and i < len(curve) else math.nan


def _rise(curve, i: int) -> float:
    return curve[i][1] - curve[0][1] if curve and i < len(curve) else math.nan


def points(run) -> list[dict]:
    """One row per evaluation of ``run`` (a ``lp.report`` Run): steps trained, tokens,
    gain and each forgetting measure. Domains are matched by evaluation, in order."""
    general = run.curves.get("val/general/loss", [])
    domains = [[v for _, v in c] for c in run.new_domain_curves()]
    if not general or not domains:
        return []
    steps = trained_steps(run.config, len(general)) or [s for s, _ in general]
    per = tokens_per_step(run.config)
    out = []
    for i, step in enumerate(steps):
        drops = [c[0] - c[i] for c in domains if i < len(c)]
        row = {"step": step, "tokens": step * per if per is not None else math.nan,
               "gain": sum(drops) / len(drops) if drops else math.nan}  # fmt: skip
        out.append(row | {key: measure(run.curves, i) for key, (measure, _) in MEASURES.items()})
    return out


def pooled(groups: dict[str, list]) -> list[dict]:
    """Per configuration and evaluation step: mean, std and n over seeds of the gain and
    of each forgetting measure."""
    out = []
    for name, runs in groups.items():
        by_step: dict[int, list[dict]] = {}
        for r in runs:
            for p in points(r):
                by_step.setdefault(p["step"], []).append(p)
        for step, ps in sorted(by_step.items()):
            row = {"configuration": name, "step": step, "tokens": ps[0]["tokens"]}
            for key in VALUES:
                row[f"{key} mean"], row[f"{key} std"], n = spread([p[key] for p in ps])
                row["n"] = max(row.get("n", 0), n)
            out.append(row)
    return out


RUN_COLUMNS = ["configuration", "run", "seed", "step", "tokens", *VALUES]
POOLED_COLUMNS = [
    "configuration",
    "step",
    "tokens",
    "n",
    *(f"{k} {s}" for k in VALUES for s in ("mean", "std")),
]


def write_curves(groups: dict[str, list], out: Path) -> list[dict]:
    per_run = [
        {"configuration": name, "run": r.name, "seed": r.config.get("seed", ""), **p}
        for name, runs in groups.items()
        for r in runs
        for p in points(r)
    ]
    table = pooled(groups)
    write_atomic(out / "curves.csv", _csv(per_run, RUN_COLUMNS))
    write_atomic(out / "curves_by_config.csv", _csv(table, POOLED_COLUMNS))
    _figure(table, out / "forgetting_vs_tokens.png")
    _pareto(table, out / "pareto.png")
    return table


def _csv(rows: list[dict], header: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, header)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _figure(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lp.reports.tables import legend_below, save_figure

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name in dict.fromkeys(r["configuration"] for r in table):
        rows = [r for r in table if r["configuration"] == name]
        x = [r["tokens"] for r in rows]
        mean = {k: [r[f"{k} mean"] for r in rows] for k in ("gain", "forgetting")}
        std = {k: [_zero(r[f"{k} std"]) for r in rows] for k in ("gain", "forgetting")}
        for ax, key in zip(axes[:2], ("gain", "forgetting"), strict=True):
            (line,) = ax.plot(x, mean[key], marker=".", label=_short(name))
            low = [m - s for m, s in zip(mean[key], std[key], strict=True)]
            high = [m + s for m, s in zip(mean[key], std[key], strict=True)]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
        axes[2].errorbar(mean["gain"], mean["forgetting"], xerr=std["gain"], yerr=std["forgetting"],
                         marker="o", capsize=3, label=_short(name))  # fmt: skip
    axes[0].set(xlabel="training tokens", ylabel="domain gain (mean drop of code/math loss)")
    axes[1].set(xlabel="training tokens", ylabel="forgetting (rise of general loss)")
    axes[2].set(xlabel="domain gain", ylabel="forgetting")
    for ax in axes:
        ax.axhline(0, color="grey", lw=0.5)
    axes[1].set_title("mean over seeds, band/bars: ± 1 std")
    legend_below(fig, axes[2])
    save_figure(fig, path)


def _pareto(table: list[dict], path: Path) -> None:
    """Gain against each forgetting measure, side by side: per configuration one line
    through its evaluations (mean over seeds, bars ± 1 std). Lower right is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lp.reports.tables import legend_below, save_figure

    shown = [k for k in MEASURES if any(not math.isnan(r[f"{k} mean"]) for r in table)]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.5), squeeze=False)
    for ax, key in zip(axes[0], shown, strict=True):
        for name in dict.fromkeys(r["configuration"] for r in table):
            rows = [r for r in table if r["configuration"] == name and not math.isnan(r[f"{key} mean"])]
            ax.errorbar([r["gain mean"] for r in rows], [r[f"{key} mean"] for r in rows],
                        xerr=[_zero(r["gain std"]) for r in rows],
                        yerr=[_zero(r[f"{key} std"]) for r in rows],
                        marker=".", capsize=2, label=_short(name))  # fmt: skip
        ax.set(xlabel="domain gain (mean drop of code/math loss)", ylabel=MEASURES[key][1])
        ax.axhline(0, color="grey", lw=0.5)
    axes[0][0].set_title("gain vs forgetting along each run (mean over seeds, ± 1 std)")
    legend_below(fig, axes[0][-1])
    save_figure(fig, path)


def _short(configuration: str) -> str:
    """A configuration's name less the settings it lacks (``method.r=-``): legends stay readable."""
    return ", ".join(p for p in configuration.split(", ") if not p.endswith("=-"))


def _zero(x: float) -> float:
    """No spread drawn where there is none to show (one seed)."""
    return 0.0 if isinstance(x, float) and math.isnan(x) else x
