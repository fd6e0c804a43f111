"""``python -m lp.data [overrides] inspect.batches=N inspect.json=PATH``: look at the
configured mixture before spending GPU hours on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from lp.core.config import integer, setting
from lp.core.errors import exit_on_refusal, run_cli
from lp.core.files import check_output, write_atomic
from lp.corpus.mixture_report import format_report, inspect_mixture
from lp.schemas import RunSettings, check


@dataclass
class InspectSettings:
    """``inspect``: how many training batches to draw, and where the JSON report goes."""

    batches: int = setting(integer(1))
    json: str | None = None


@hydra.main(version_base=None, config_path="../conf", config_name="inspect")
def main(cfg: DictConfig) -> None:
    from lp.base.models import load_tokenizer
    from lp.training.bases import resolve_base

    with exit_on_refusal():  # here, not only around main: Hydra would add a line of its own
        check(cfg, {"": RunSettings, "inspect": InspectSettings})
        out = None
        if cfg.inspect.json:  # never over one of the files the mixture reads
            out = check_output(Path(str(cfg.inspect.json)), "file", "inspect.json", _data_files(cfg.data))
        data = instantiate(cfg.data, tokenizer=None, _convert_="all")  # bad data fails before the base builds
        data.tokenizer = load_tokenizer(resolve_base(cfg.model, cfg.data))
        report = inspect_mixture(data, int(cfg.inspect.batches))
    print(format_report(report, int(cfg.inspect.batches)))
    if out is not None:
        with exit_on_refusal():  # a disk that filled meanwhile: one line
            write_atomic(out, json.dumps(report, indent=2))


def _data_files(data) -> list[str]:
    """The local files the data sources read (their ``files`` globs)."""
    from omegaconf import OmegaConf

    from lp.corpus.sources import named_files

    sources = OmegaConf.to_container(data.sources, resolve=False) if "sources" in data else {}
    return [f for s in sources.values() if isinstance(s, dict) for f in named_files(s)]


if __name__ == "__main__":
    run_cli(main)
