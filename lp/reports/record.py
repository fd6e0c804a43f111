"""What a run records about itself for ``lp.report`` and TensorBoard: its settings
against its final metrics (the HPARAMS entry) or, when it failed, why."""

from __future__ import annotations

import json
from pathlib import Path

from lp.core.files import write_atomic

# the settings that tell the runs of a sweep apart: the HPARAMS entry records them and
# lp.report shows them (from the HPARAMS entry, or from the run's Hydra config)
SETTINGS = (
    "method.name",
    "expansion.blocks",
    "expansion.position",
    "expansion.source",
    "expansion.init",
    "optim.lr",
    "data.replay",
    "seed",
)
# the metric families whose final values the HPARAMS entry lists: validation losses,
# forgetting (by loss and by benchmark), benchmark scores (lp.eval) and benchmark gains
METRIC_FAMILIES = ("val/", "forgetting/", "bench/", "gain/")
FAILED = "lp_failed.json"  # in the run directory of a refused or crashed run


def write_hparams(log_dir: str, params: dict, metric_tags: list[str]) -> None:
    """Register ``params`` for TensorBoard's HPARAMS tab with ``metric_tags``.

    The tab shows, for each metric tag, the last scalar logged under it, so the
    final metrics need no second copy; this writes only the experiment, session
    start and session end records (what ``SummaryWriter.add_hparams`` would
    write, minus its extra scalars and sub-run directory).
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
    exp, ssi, sei = hparams(clean, {tag: 0.0 for tag in metric_tags})
    with SummaryWriter(log_dir) as writer:
        for summary in (exp, ssi, sei):
            writer._get_file_writer().add_summary(summary)


def mark_failed(run_dir: Path, overrides: list[str], reason: str) -> None:
    """Leave ``lp_failed.json`` (the run's overrides and the one-line reason) in ``run_dir``."""
    write_atomic(Path(run_dir) / FAILED, json.dumps({"overrides": overrides, "reason": reason}, indent=2))


def clear_failure(run_dir: Path) -> None:
    (Path(run_dir) / FAILED).unlink(missing_ok=True)


def read_failure(run_dir: Path) -> str | None:
    """The reason a run failed, if it left a marker."""
    f = Path(run_dir) / FAILED
    if not f.is_file():
        return None
    try:
        return str(json.loads(f.read_text()).get("reason", "failed"))
    except (OSError, ValueError):
        return "failed (unreadable marker)"
