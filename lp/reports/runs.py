"""The runs of a sweep as lp.report reads them: every run's TensorBoard event files
(tensorboard's own reader; nothing is re-run) and its Hydra config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from lp.core.errors import first_line
from lp.expansion.streamed import natural_key
from lp.measure.forgetting import RETAINED
from lp.reports.pooling import config_file, run_config
from lp.reports.record import FAILED, SETTINGS, read_failure


@dataclass
class Run:
    name: str
    settings: dict
    final: dict  # tag -> last value
    curves: dict = field(default_factory=dict)  # val/<domain>/loss, forgetting/kl -> [(step, value)]
    config: dict = field(default_factory=dict)  # the composed Hydra config, flattened (lp.reports.pooling)

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


CURVES = ("forgetting/kl",)  # read at every evaluation besides the losses (lp.reports.curves)
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


# one column per recorded setting (lp.reports.record.SETTINGS), named by its last part
