"""The layers of lp (.importlinter), enforced by import-linter: the commands on top, then
the parts of the flow, each importing only what lies below it; no cycles between the
modules of a package; expansion, base models and core free of Lightning and Hydra."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_every_architecture_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:]
    assert "0 broken" in res.stdout


def test_the_top_level_holds_only_the_commands_and_the_schemas():
    commands = {"train", "expand", "eval", "data", "report", "bench", "families"}
    modules = {p.stem for p in (ROOT / "lp").glob("*.py")} - {"__init__"}
    assert modules == commands | {"schemas"}
    ends = ("run_cli(main)", "sys.exit(main())", "main()")  # each runs as python -m lp.<command>
    assert all((ROOT / f"lp/{c}.py").read_text().rstrip().endswith(ends) for c in commands)
