"""What lp.report writes of the runs: the table (markdown and CSV), the gain-vs-forgetting
figure and the validation curves, and the metrics pooled over seeds."""

from __future__ import annotations

import io
import math
from pathlib import Path

from lp.core.files import write_atomic
from lp.reports.record import METRIC_FAMILIES, SETTINGS
from lp.reports.runs import FORGETTING, Run

COLUMNS = {key: "method" if key == "method.name" else key.rsplit(".", 1)[-1] for key in SETTINGS}


def table(runs: list[Run]) -> tuple[list[str], list[list]]:
    domains = sorted({d for r in runs for d in r.domains})
    bench = _bench_columns(runs)
    forgetting = [t for t in FORGETTING if any(t in r.final for r in runs)]
    header = ["run", *COLUMNS.values(), "trainable params", *(f"val/{d}/loss" for d in domains),
              "domain gain", *forgetting, *bench, "tokens/s"]  # fmt: skip
    rows = []
    for r in sorted(runs, key=lambda r: (-_num(r.gain()), r.name)):
        rows.append([
            r.name, *(_setting(r.settings.get(k, "")) for k in COLUMNS),
            int(r.final.get("perf/trainable_params", 0)),
            *(r.final.get(f"val/{d}/loss", math.nan) for d in domains),
            r.gain(), *(r.final.get(t, math.nan) for t in forgetting),
            *(r.final.get(t, math.nan) for t in bench), r.final.get("perf/tokens_per_s", math.nan),
        ])  # fmt: skip
    return header, rows


def _bench_columns(runs: list[Run]) -> list[str]:
    """Benchmark columns (``callbacks.benchmark``), where any run has them: each group's
    average, then the general forgetting and each domain's gain from step 0."""
    tags = {t for r in runs for t in r.final}
    averages = sorted(t for t in tags if t.startswith("bench/") and t.endswith("/average"))
    return [*averages, *sorted(t for t in tags if t.startswith(("forgetting/bench/", "gain/bench/")))]


def _setting(value):
    """HPARAMS stores numbers as floats: whole ones (blocks, seed) read back as integers."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _num(x) -> float:
    return x if isinstance(x, (int, float)) and not math.isnan(x) else -math.inf


def _better(column: str) -> str | None:
    """ "high", "low" or None (not ranked) for a report column."""
    if column in ("domain gain", "tokens/s") or column.startswith(("bench/", "gain/")):
        return "high"
    if column.startswith(("val/", "forgetting/")):
        return "low"
    return None


def markdown(header: list[str], rows: list[list], skipped: list[tuple[str, str]], sweep: Path) -> str:
    best = {}
    for j, h in enumerate(header):
        if _better(h):
            vals = [r[j] for r in rows if isinstance(r[j], float) and not math.isnan(r[j])]
            if vals:
                best[j] = max(vals) if _better(h) == "high" else min(vals)
    out = [f"# Sweep report: {sweep}", "", f"{len(rows)} runs, sorted by domain gain (mean drop of the "
           "new-domain validation losses from step 0). **Bold**: best in the column.", ""]  # fmt: skip
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for r in rows:
        cells = []
        for j, v in enumerate(r):
            text = _text(v, header[j])
            cells.append(f"**{text}**" if j in best and v == best[j] else text)
        out.append("| " + " | ".join(cells) + " |")
    if skipped:
        out += ["", "Skipped:"] + [f"- {n}: {why}" for n, why in skipped]
    return "\n".join(out) + "\n"


def _text(v, column: str) -> str:
    if not isinstance(v, float):
        return str(v)
    if column == "tokens/s":
        return f"{v:,.0f}"
    return f"{v:.4f}" if _better(column) else f"{v:g}"  # a setting (lr 2e-05) keeps its digits


LOSS_GAIN = "domain gain: mean drop of code/math validation loss (higher is better)"
AXES = {  # the gain-vs-forgetting figure: (the y tag, its label); x is the gain of the same kind
    "loss": ("forgetting/general", "forgetting/general: rise of general loss (lower is better)"),
    "self": ("forgetting/self", "forgetting/self: rise of the loss on the base's own text (lower is better)"),
    "kl": ("forgetting/kl", "forgetting/kl: KL(base || model) on general rows, nats/token (lower is better)"),
    "bench": ("forgetting/bench/general", "forgetting/bench/general: drop of the general benchmark average "
              "(lower is better)"),
}  # fmt: skip
HOW = {"bench": "train with callbacks.benchmark.enabled=true", "kl": "train with forgetting.kl=true",
       "self": "train with data.self_tokens > 0", "loss": "give data.general"}  # fmt: skip


def _point(r: Run, axes: str) -> tuple[float, float]:
    x = r.bench_gain() if axes == "bench" else r.gain()
    return x, r.final.get(AXES[axes][0], math.nan)


def figures(runs: list[Run], out: Path, axes: str = "loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ylabel = AXES[axes][1]
    xlabel = (
        "domain gain: mean rise of the math/code benchmark averages (higher is better)"
        if axes == "bench"
        else LOSS_GAIN
    )
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in runs:
        x, y = _point(r, axes)
        ax.scatter(x, y)
        ax.annotate(_label(r.name), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(f"Domain gain vs forgetting ({axes})")
    save_figure(fig, out / "gain_vs_forgetting.png")

    tags = sorted({t for r in runs for t in r.curves})
    fig, axes = plt.subplots(1, len(tags), figsize=(5 * len(tags), 4), squeeze=False)
    for ax, tag in zip(axes[0], tags, strict=True):
        for r in runs:
            if tag in r.curves:
                steps, values = zip(*r.curves[tag], strict=True)
                ax.plot(steps, values, marker=".", label=_label(r.name))
        ax.set_title(tag)
        ax.set_xlabel("step")
    axes[0][-1].legend(fontsize=6, loc="best")
    save_figure(fig, out / "val_curves.png")


def legend_below(fig, ax) -> None:
    """One legend for the figure, under its plots: configuration names are long, and a legend
    inside an axis would hide the curves (``save_figure`` keeps what lies outside)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7)


def _label(name: str) -> str:
    """A run's swept values without Hydra's job number: "3_+variant=add_8" -> "variant=add_8"."""
    import re

    return re.sub(r"^\d+_\+?", "", name)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    # small enough to commit next to an experiment; "tight" keeps a legend placed below the plots
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def pooled_metrics(runs: list[Run]) -> dict:
    """What ``by_config`` pools over seeds: domain gain, forgetting per unit of gain, every
    final metric of lp.reports.record's families (losses and their standard errors, forgetting,
    benchmarks) and tokens/s."""
    tags = sorted({t for r in runs for t in r.final if t.startswith(METRIC_FAMILIES)})
    metrics = {"domain gain": Run.gain, "forgetting per gain": Run.forgetting_per_gain}
    metrics |= {t: (lambda r, t=t: r.final.get(t, math.nan)) for t in tags}
    metrics["tokens/s"] = lambda r: r.final.get("perf/tokens_per_s", math.nan)
    return metrics
