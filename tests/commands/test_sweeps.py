"""Every experiment file survives a shrunk sweep; lp.report reads a real sweep."""

import csv
import json

import pytest

from lp.report import main as report_main
from tests.conftest import ROOT, run_lp, tiny_llama
from tests.corpus.test_text import tokenizer  # noqa: F401  (the shared BPE fixture)

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf/experiment").glob("*.yaml"))
RUNS = {"ablation_blocks": 5, "ablation_position": 3, "ablation_init": 3, "ablation_source": 2,
        "ablation_methods": 5, "table5": 10, "forgetting_real_base": 6}  # fmt: skip
# fewer runs where the whole grid would only repeat what a part shows (3 x 3 -> 3 x 2 seeds)
SHRINK = {"forgetting_real_base": ["seed=0,1"]}
NO_EXPORT = {"forgetting_real_base"}  # export=false: the experiment compares metrics, not weights


def sweep(experiment, lp_cache, tmp_path, *extra):
    res = run_lp(
        ["lp.train", "-m", f"experiment={experiment}", "debug=smoke",
         f"hydra.sweep.dir={tmp_path}/sweep", *extra],
        lp_cache, ROOT, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp_path / "sweep"


def scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_every_experiment_is_listed():
    assert set(EXPERIMENTS) == set(RUNS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_survives_a_shrunk_sweep(experiment, lp_cache, tmp_path):
    out = sweep(experiment, lp_cache, tmp_path, *SHRINK.get(experiment, []))
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == RUNS[experiment]
    for run in runs:
        assert (run / "export/lp_expansion.json").is_file() != (experiment in NO_EXPORT), run.name
        assert list((run / "tb").glob("events.out.tfevents.*")), run.name
    if experiment == "ablation_blocks":  # run names carry the swept values
        assert [r.name for r in runs] == [f"{i}_expansion.blocks={p}" for i, p in enumerate([1, 2, 4, 8, 16])]
    if experiment == "forgetting_real_base":  # seed by seed; every seed its own training order
        assert [r.name.split("_", 1)[1] for r in runs[:3]] == [
            f"+variant={v},seed=0" for v in ("add_8", "full_finetune", "full_finetune_lr2e-5")
        ]
        train_loss = {r.name: scalars(r, "train/loss") for r in runs}
        assert len(set(map(tuple, train_loss.values()))) == len(runs)
        seeds_pool_by_configuration(out, tmp_path / "rep")


def seeds_pool_by_configuration(out, rep):
    """lp.report on a real 3 x 2 sweep: one row per configuration, each the mean of its seeds' runs."""
    assert report_main([str(out), "--out", str(rep)]) == 0
    runs = list(csv.DictReader((rep / "report.csv").open()))
    pooled = list(csv.DictReader((rep / "by_config.csv").open()))
    assert len(pooled) == 3 and all(r["seeds"] == "0,1" and r["forgetting/general n"] == "2" for r in pooled)
    for row in pooled:
        lr, method = row["configuration"].split("optim.lr=")[1].split(",")[0], row["configuration"]
        mine = [r for r in runs if float(r["lr"]) == float(lr) and r["method"] in method]
        assert len(mine) == 2, row["configuration"]
        mean = sum(float(r["forgetting/general"]) for r in mine) / 2
        assert float(row["forgetting/general mean"]) == pytest.approx(mean, abs=1e-6)
    curves = list(csv.DictReader((rep / "curves_by_config.csv").open()))
    assert {r["tokens"] for r in curves} == {"0", str(4 * 4 * 64)}  # smoke: 4 steps of 4 rows x 64 tokens
    assert (rep / "forgetting_vs_tokens.png").stat().st_size < 300_000


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


def test_a_failed_run_fails_the_sweep_and_the_report_lists_it(lp_cache, tmp_path):
    res = run_lp(
        ["lp.train", "-m", "debug=smoke", "expansion.blocks=1,-1", f"hydra.sweep.dir={tmp_path}/sweep"],
        lp_cache, ROOT,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-3000:]  # a sweep with a refused run must not look green
    assert "Traceback" not in res.stderr and "error: expansion.blocks=-1" in res.stderr
    out = tmp_path / "sweep"
    marker = json.loads((out / "1_expansion.blocks=-1/lp_failed.json").read_text())
    assert marker["overrides"] == ["debug=smoke", "expansion.blocks=-1"]
    assert marker["reason"].startswith("expansion.blocks=-1")
    assert (out / "0_expansion.blocks=1/export/lp_expansion.json").is_file()  # the good run still ran
    assert report_main([str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "1 runs" in md and f"- 1_expansion.blocks=-1: failed: {marker['reason']}" in md


def test_a_crashed_run_leaves_a_marker_and_its_traceback(lp_cache, tokenizer, tmp_path):  # noqa: F811
    ckpt = tmp_path / "ckpt"  # sound files whose shapes disagree with the config: a load that crashes
    tiny_llama(2).save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64}))
    res = run_lp(
        ["lp.train", "model=hf", f"model.name_or_path={ckpt}", "debug=smoke",
         f"hydra.run.dir={tmp_path}/run"], lp_cache, ROOT,
    )  # fmt: skip
    assert res.returncode not in (0, 2) and "Traceback" in res.stderr  # a bug or a broken file, not bad input
    reason = json.loads((tmp_path / "run/lp_failed.json").read_text())["reason"]
    assert reason.startswith("crashed: ")
