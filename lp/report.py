"""``python -m lp.report SWEEP_DIR [--out DIR]``: compare the runs of a sweep.

Reads every run's TensorBoard event files under SWEEP_DIR (tensorboard's own
event reader; nothing is re-run) and writes ``report.md``, ``report.csv``,
``gain_vs_forgetting.png`` and ``val_curves.png``; seeds pooled per configuration
(``lp.seeds``: ``by_config.md``, ``by_config.csv``; ``paired.md``, ``paired.csv``) and
gain and forgetting against training tokens (``lp.curves``: ``curves.csv``,
``curves_by_config.csv``, ``forgetting_vs_tokens.png``). Works on a partial or
still-running sweep: runs without an evaluation after training are listed as
skipped, with the reason.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lp.atomic import check_output, write_atomic
from lp.curves import write_curves
from lp.errors import LpError, first_line, refused_status
from lp.expansion.checkpoint import natural_key
from lp.forgetting import RETAINED
from lp.record import FAILED, METRIC_FAMILIES, SETTINGS, read_failure
from lp.seeds import config_file, group, run_config, write_by_config, write_paired


@dataclass
class Run:
    name: str
    settings: dict
    final: dict  # tag -> last value
    curves: dict = field(default_factory=dict)  # val/<domain>/loss, forgetting/kl -> [(step, value)]
    config: dict = field(default_factory=dict)  # the composed Hydra config, flattened (lp.seeds)

    @property
    def domains(self) -> list[str]:
        return sorted(t.split("/")[1] for t in self.final if _is_loss(t))

    def new_domain_curves(self) -> list[list[tuple[int, float]]]:
        """The loss curves of the new domains: every eval domain but the base's own."""
        return [c for t, c in sorted(self.curves.items()) if _is_loss(t) and t.split("/")[1] not in RETAINED]

    def gain(self) -> float:
        """Mean drop of the new-domain losses from step 0."""
        drops = [c[0][1] - c[-1][1] for c in self.new_domain_curves()]
        return sum(drops) / len(drops) if drops else math.nan

    def bench_gain(self) -> float:
        """Mean rise of the new-domain benchmark averages (``gain/bench/<group>``) from step 0."""
        gains = [v for t, v in self.final.items() if t.startswith("gain/bench/")]
        return sum(gains) / len(gains) if gains else math.nan

    def forgetting_per_gain(self) -> float:
        """Forgetting per unit of domain gain; NaN where nothing was gained (the ratio
        means nothing there, and a gain of exactly 0 would divide by zero)."""
        gain = self.gain()
        return self.final.get("forgetting/general", math.nan) / gain if gain > 0 else math.nan


def find_runs(sweep: Path) -> list[Path]:
    """Directories holding TensorBoard event files, and run directories of failed runs
    (``lp_failed.json``) whose event files, if any, lie below them."""
    failed = {p.parent for p in sweep.rglob(FAILED)}
    dirs = {p.parent for p in sweep.rglob("events.out.tfevents.*")}
    dirs = {d for d in dirs if not failed.intersection((d, *d.parents))} | failed
    return sorted(dirs, key=lambda d: natural_key(str(d.relative_to(sweep))))


def read_run(log_dir: Path, name: str) -> tuple[Run | None, str]:
    """A run, or None and why it was skipped."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    # the losses themselves, not their standard errors (val/<domain>/loss_se), and the KL
    curves = {t: [(e.step, e.value) for e in scalars(acc, t)] for t in tags if _is_loss(t) or t in CURVES}
    if not any(_is_loss(t) for t in curves):
        return None, "no evaluation logged yet"
    if max(len(c) for c in curves.values()) < 2:
        return None, "no evaluation after training yet (still running or stopped early)"
    final = {t: scalars(acc, t)[-1].value for t in tags}
    if "perf/tokens_per_s" in tags:
        values = [e.value for e in acc.Scalars("perf/tokens_per_s")]
        final["perf/tokens_per_s"] = sum(values) / len(values)
    settings = _hydra_settings(log_dir)
    try:
        start = acc.PluginTagToContent("hparams").get("_hparams_/session_start_info")
    except KeyError:  # no HPARAMS entry (yet): the run's Hydra config still tells its settings
        start = None
    if start:
        info = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info
        for k, v in info.hparams.items():
            settings[k] = v.number_value if v.HasField("number_value") else v.string_value
    return Run(name, settings, final, curves, run_config(log_dir)), ""


def scalars(acc, tag: str) -> list:
    """A tag's events in the order they were logged. TensorBoard reads a run's event files
    in name order, and ``...<pid>.10`` sorts before ``...<pid>.9``: a run whose step-0
    validation and training wrote files 9 and 10 in one second would read backwards."""
    return sorted(acc.Scalars(tag), key=lambda e: (e.step, e.wall_time))


def _is_loss(tag: str) -> bool:
    return tag.startswith("val/") and tag.endswith("/loss")


CURVES = ("forgetting/kl",)  # read at every evaluation besides the losses (lp.curves)
FORGETTING = [f"forgetting/{d}" for d in (*RETAINED, "kl")]  # the report's forgetting columns


def _hydra_settings(log_dir: Path) -> dict:
    """Settings from the run's ``.hydra/config.yaml`` (beside or above the event files)."""
    from omegaconf import OmegaConf

    f = config_file(log_dir)
    if f is None:
        return {}
    cfg = OmegaConf.load(f)
    return {k: OmegaConf.select(cfg, k) for k in SETTINGS if OmegaConf.select(cfg, k) is not None}


def collect(sweep: Path) -> tuple[list[Run], list[tuple[str, str]]]:
    runs, skipped = [], []
    for d in find_runs(sweep):
        name = str(d.relative_to(sweep)).removesuffix("/tb") or d.name
        failure = read_failure(d)
        if failure is not None:
            skipped.append((name, f"failed: {failure}"))
            continue
        config = config_file(d)
        try:  # the run's settings first: a damaged config is named as such
            run_config(d)
        except Exception as e:
            skipped.append((name, f"unreadable {config} ({type(e).__name__}: {first_line(e)[:80]})"))
            continue
        try:
            run, why = read_run(d, name)
        except Exception as e:  # a half-written event file must not stop the report
            run, why = None, f"unreadable event files ({type(e).__name__})"
        if run is None:
            skipped.append((name, why))
        else:
            runs.append(run)
    return runs, skipped


# one column per recorded setting (lp.record.SETTINGS), named by its last part
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


def _label(name: str) -> str:
    """A run's swept values without Hydra's job number: "3_+variant=add_8" -> "variant=add_8"."""
    import re

    return re.sub(r"^\d+_\+?", "", name)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)  # small enough to commit next to an experiment
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def report(sweep: Path, out: Path, axes: str = "loss") -> tuple[list[Run], list[tuple[str, str]]]:
    if not sweep.is_dir():
        raise LpError(f"{sweep} is not a directory; give a sweep (or run) directory")
    check_output(out, "into", "--out")  # before the event files are read
    runs, skipped = collect(sweep)
    if not runs:
        why = "; ".join(f"{n}: {w}" for n, w in skipped) or "no TensorBoard event files found"
        raise LpError(f"no finished run under {sweep} ({why})")
    if not any(AXES[axes][0] in r.final for r in runs):
        raise LpError(f"--axes {axes}: no run under {sweep} logged {AXES[axes][0]}; {HOW[axes]}")
    out.mkdir(parents=True, exist_ok=True)
    header, rows = table(runs)
    write_atomic(out / "report.md", markdown(header, rows, skipped, sweep).encode())
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    write_atomic(out / "report.csv", buf.getvalue().encode())
    figures(runs, out, axes)
    groups = group(runs)
    write_by_config(groups, pooled_metrics(runs), out)
    write_paired(groups, pooled_metrics(runs), out)
    write_curves(groups, out)
    return runs, skipped


def pooled_metrics(runs: list[Run]) -> dict:
    """What ``by_config`` pools over seeds: domain gain, forgetting per unit of gain, every
    final metric of lp.record's families (losses and their standard errors, forgetting,
    benchmarks) and tokens/s."""
    tags = sorted({t for r in runs for t in r.final if t.startswith(METRIC_FAMILIES)})
    metrics = {"domain gain": Run.gain, "forgetting per gain": Run.forgetting_per_gain}
    metrics |= {t: (lambda r, t=t: r.final.get(t, math.nan)) for t in tags}
    metrics["tokens/s"] = lambda r: r.final.get("perf/tokens_per_s", math.nan)
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lp.report", description=__doc__.split("\n")[0])
    ap.add_argument(
        "sweep", type=Path, help="a sweep directory (multirun/<date>/<time>) or one run directory"
    )
    ap.add_argument("--out", type=Path, help="where to write the report (default: SWEEP)")
    ap.add_argument(
        "--axes", choices=sorted(AXES), default="loss",
        help="gain vs forgetting by validation losses (default), the loss on the base's own text, the KL "
        "to the base, or benchmark scores",
    )  # fmt: skip
    a = ap.parse_args(argv)
    try:
        runs, skipped = report(a.sweep, a.out or a.sweep, a.axes)
    except Exception as e:  # bad input or an unwritable place: one line
        return refused_status(e)
    print(f"lp: {len(runs)} runs reported in {a.out or a.sweep}/report.md")
    for n, why in skipped:
        print(f"lp: skipped {n}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
