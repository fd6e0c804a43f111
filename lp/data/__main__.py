"""``python -m lp.data [overrides] inspect.batches=N inspect.json=PATH``: look at the
configured mixture before spending GPU hours on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from lp.atomic import write_atomic
from lp.data.inspect import format_report, inspect_mixture
from lp.errors import LpError, print_error


@hydra.main(version_base=None, config_path="../../conf", config_name="inspect")
def main(cfg: DictConfig) -> None:
    try:
        from lp.models import load_tokenizer, resolve_base

        tokenizer = load_tokenizer(resolve_base(cfg.model, cfg.data))
        data = instantiate(cfg.data, tokenizer=tokenizer, _convert_="all")
        report = inspect_mixture(data, int(cfg.inspect.batches))
    except (LpError, MissingMandatoryValue) as e:
        sys.exit(print_error(e))
    print(format_report(report, int(cfg.inspect.batches)))
    if cfg.inspect.json:
        write_atomic(Path(str(cfg.inspect.json)).expanduser(), json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
