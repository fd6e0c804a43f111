"""``python -m lp.report SWEEP_DIR [--out DIR]``: compare the runs of a sweep.

Reads every run's TensorBoard event files under SWEEP_DIR (tensorboard's own
event reader; nothing is re-run) and writes ``report.md``, ``report.csv``,
``gain_vs_forgetting.png`` and ``val_curves.png``; seeds pooled per configuration
(``lp.reports.pooling``: ``by_config.md``, ``by_config.csv``; ``paired.md``, ``paired.csv``) and
gain and forgetting against training tokens (``lp.reports.curves``: ``curves.csv``,
``curves_by_config.csv``, ``forgetting_vs_tokens.png``). Works on a partial or
still-running sweep: runs without an evaluation after training are listed as
skipped, with the reason.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from lp.core.errors import LpError, refused_status
from lp.core.files import check_output, write_atomic
from lp.reports.curves import write_curves
from lp.reports.pooling import group, write_by_config, write_paired
from lp.reports.runs import Run, collect
from lp.reports.tables import AXES, HOW, figures, markdown, pooled_metrics, table


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
