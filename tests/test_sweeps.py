"""Every experiment file survives a shrunk sweep; lp.report reads a real sweep."""

import csv

import pytest

from lp.report import main as report_main
from tests.conftest import ROOT, run_lp

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf/experiment").glob("*.yaml"))
RUNS = {"ablation_blocks": 5, "ablation_position": 3, "ablation_init": 3, "ablation_source": 2,
        "ablation_methods": 5, "table5": 10}  # fmt: skip


def sweep(experiment, lp_cache, tmp_path, *extra):
    res = run_lp(
        ["lp.train", "-m", f"experiment={experiment}", "debug=smoke",
         f"hydra.sweep.dir={tmp_path}/sweep", *extra],
        lp_cache, ROOT, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp_path / "sweep"


def test_every_experiment_is_listed():
    assert set(EXPERIMENTS) == set(RUNS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_survives_a_shrunk_sweep(experiment, lp_cache, tmp_path):
    out = sweep(experiment, lp_cache, tmp_path)
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == RUNS[experiment]
    for run in runs:
        assert (run / "export/lp_expansion.json").is_file(), run.name
        assert list((run / "tb").glob("events.out.tfevents.*")), run.name
    if experiment == "ablation_blocks":  # run names carry the swept values
        assert [r.name for r in runs] == [f"{i}_expansion.blocks={p}" for i, p in enumerate([1, 2, 4, 8, 16])]


def test_report_on_a_real_two_run_sweep_and_a_partial_one(lp_cache, tmp_path, capsys):
    out = sweep("ablation_source", lp_cache, tmp_path)
    (out / "2_unfinished/tb").mkdir(parents=True)  # a run that has not evaluated yet
    (out / "2_unfinished/tb/events.out.tfevents.0.x").write_bytes(b"")
    assert report_main([str(out), "--out", str(tmp_path / "rep")]) == 0
    rep = tmp_path / "rep"
    rows = list(csv.DictReader((rep / "report.csv").open()))
    assert {r["run"] for r in rows} == {"0_expansion.source=group_top", "1_expansion.source=group_bottom"}
    assert {r["source"] for r in rows} == {"group_top", "group_bottom"}
    assert all(r["method"] == "block_expansion" and r["blocks"] == "8" for r in rows)
    for r in rows:
        assert float(r["val/general/loss"]) > 0 and r["forgetting/general"] and int(r["trainable params"]) > 0
    md = (rep / "report.md").read_text()
    assert "**" in md and "2_unfinished: no evaluation logged yet" in md
    assert (rep / "gain_vs_forgetting.png").read_bytes()[:4] == b"\x89PNG"
    assert (rep / "val_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "skipped 2_unfinished" in capsys.readouterr().out


def test_report_refuses_an_empty_directory(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err


@pytest.mark.slow
def test_submitit_local_launcher(lp_cache, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = sweep("ablation_source", lp_cache, tmp_path, "hydra/launcher=submitit_local")
    assert len([p for p in out.iterdir() if p.is_dir() and (p / "export").is_dir()]) == 2
