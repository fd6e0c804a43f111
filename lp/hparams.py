"""The HPARAMS-tab entry of a run: its swept settings against its final metrics."""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


def write_hparams(log_dir: str, params: dict, metric_tags: list[str]) -> None:
    """Register ``params`` for TensorBoard's HPARAMS tab with ``metric_tags``.

    The tab shows, for each metric tag, the last scalar logged under it, so the
    final metrics need no second copy; this writes only the experiment, session
    start and session end records (what ``SummaryWriter.add_hparams`` would
    write, minus its extra scalars and sub-run directory).
    """
    clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
    exp, ssi, sei = hparams(clean, {tag: 0.0 for tag in metric_tags})
    with SummaryWriter(log_dir) as writer:
        for summary in (exp, ssi, sei):
            writer._get_file_writer().add_summary(summary)
