"""``python -m lp.data [overrides] inspect.batches=N inspect.json=PATH``: look at the
configured mixture before spending GPU hours on it."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from lp.data.inspect import format_report, inspect_mixture
from lp.errors import LpError


@hydra.main(version_base=None, config_path="../../conf", config_name="inspect")
def main(cfg: DictConfig) -> None:
    try:
        from lp.models import load_tokenizer
        from lp.train import resolve_base

        tokenizer = load_tokenizer(resolve_base(cfg))
        data = instantiate(cfg.data, tokenizer=tokenizer, _convert_="all")
        report = inspect_mixture(data, int(cfg.inspect.batches))
    except (LpError, MissingMandatoryValue) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report, int(cfg.inspect.batches)))
    if cfg.inspect.json:
        out = Path(str(cfg.inspect.json)).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, out)  # never a half-written report


if __name__ == "__main__":
    main()
