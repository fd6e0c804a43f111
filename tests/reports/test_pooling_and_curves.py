"""Seeds pooled per configuration (lp.reports.pooling) and gain/forgetting against tokens
(lp.reports.curves)."""

import csv
import math
import statistics

import pytest

from lp.reports.curves import points, pooled, tokens_per_step, trained_steps, write_curves
from lp.reports.pooling import flatten, group, write_by_config, write_paired
from lp.reports.runs import Run
from lp.reports.tables import pooled_metrics

CONFIG = flatten({
    "seed": 0, "data": {"seq_len": 128, "batch_size": 2, "seed": 0, "train_seed": "${seed}"},
    "trainer": {"accumulate_grad_batches": 1, "devices": 1, "max_steps": 16, "val_check_interval": 8},
    "optim": {"lr": 2e-4},
    "method": {"name": "block_expansion"}, "logger": {"save_dir": "${hydra:runtime.output_dir}"},
})  # fmt: skip


def run(name, seed, general, code, **config):
    """A run as lp.report reads it: curves (step, value) per validation loss, finals, config;
    the steps as Lightning logs them (an evaluation inside fit at one less than trained)."""
    curves = {
        "val/general/loss": list(zip((0, 7, 15), general, strict=True)),
        "val/code/loss": list(zip((0, 7, 15), code, strict=True)),
    }
    final = {t: c[-1][1] for t, c in curves.items()} | {"forgetting/general": general[-1] - general[0]}
    return Run(name, {}, final, curves, CONFIG | {"seed": str(seed)} | config)


RUNS = [
    run("a0", 0, (3.0, 3.1, 3.2), (2.0, 1.5, 1.0)),
    run("a1", 1, (3.0, 3.0, 3.1), (2.0, 1.6, 1.2), **{"logger.save_dir": "/elsewhere"}),
    run("a2", 2, (3.0, 3.2, 3.4), (2.0, 1.4, 1.1)),
    run("b0", 0, (3.0, 2.9, 2.9), (2.0, 1.8, 1.7), **{"optim.lr": "2e-05"}),
]


def test_runs_pool_by_everything_but_seed_and_output():
    groups = group(RUNS)
    assert list(groups) == ["optim.lr=0.0002", "optim.lr=2e-05"]  # named by what differs
    assert [r.name for r in groups["optim.lr=0.0002"]] == ["a0", "a1", "a2"]


def test_by_config_gives_mean_std_and_n_of_every_metric(tmp_path):
    groups = group(RUNS)
    write_by_config(groups, pooled_metrics(RUNS), tmp_path)
    rows = {r["configuration"]: r for r in csv.DictReader((tmp_path / "by_config.csv").open())}
    a = rows["optim.lr=0.0002"]
    forgetting = [0.2, 0.1, 0.4]
    assert a["seeds"] == "0,1,2" and a["forgetting/general n"] == "3"
    assert float(a["forgetting/general mean"]) == pytest.approx(statistics.fmean(forgetting), abs=1e-12)
    assert float(a["forgetting/general std"]) == pytest.approx(statistics.stdev(forgetting), abs=1e-12)
    assert float(a["domain gain mean"]) == pytest.approx(statistics.fmean([1.0, 0.8, 0.9]), abs=1e-12)
    per_gain = [f / g for f, g in zip(forgetting, [1.0, 0.8, 0.9], strict=True)]
    assert float(a["forgetting per gain mean"]) == pytest.approx(statistics.fmean(per_gain), abs=1e-12)
    b = rows["optim.lr=2e-05"]
    assert b["forgetting/general n"] == "1" and math.isnan(float(b["forgetting/general std"]))
    md = (tmp_path / "by_config.md").read_text()
    assert f"{statistics.fmean(forgetting):.4f} ± {statistics.stdev(forgetting):.4f} (3)" in md


def test_no_gain_no_forgetting_per_gain():
    flat = run("c", 0, (3.0, 3.1, 3.2), (2.0, 2.0, 2.0))
    assert flat.gain() == 0 and math.isnan(flat.forgetting_per_gain())


def test_tokens_count_rows_length_accumulation_and_devices():
    assert tokens_per_step(CONFIG) == 256
    assert tokens_per_step(CONFIG | {"trainer.accumulate_grad_batches": "4", "trainer.devices": "2"}) == 2048
    assert tokens_per_step(CONFIG | {"trainer.devices": "auto"}) == 256
    assert tokens_per_step({}) is None


def test_trained_steps_follow_the_evaluation_schedule():
    assert trained_steps(CONFIG, 3) == [0, 8, 16]
    assert trained_steps(CONFIG | {"trainer.max_steps": "20"}, 4) == [0, 8, 16, 20]  # and the last step
    assert trained_steps(CONFIG, 5) is None  # not lp.train's schedule: TensorBoard's steps are used


def test_curves_at_matched_tokens_with_seed_spread(tmp_path):
    got = points(RUNS[0])
    assert [p["step"] for p in got] == [0, 8, 16]
    assert [p["tokens"] for p in got] == [0, 8 * 256, 16 * 256]
    assert [p["gain"] for p in got] == pytest.approx([0.0, 0.5, 1.0])
    assert [p["forgetting"] for p in got] == pytest.approx([0.0, 0.1, 0.2])
    table = pooled(group(RUNS))
    at8 = next(r for r in table if r["configuration"] == "optim.lr=0.0002" and r["step"] == 8)
    assert at8["n"] == 3 and at8["tokens"] == 2048
    assert at8["forgetting mean"] == pytest.approx(statistics.fmean([0.1, 0.0, 0.2]))
    assert at8["gain std"] == pytest.approx(statistics.stdev([0.5, 0.4, 0.6]))
    write_curves(group(RUNS), tmp_path)
    assert len(list(csv.DictReader((tmp_path / "curves.csv").open()))) == 4 * 3
    assert len(list(csv.DictReader((tmp_path / "curves_by_config.csv").open()))) == 2 * 3
    assert (tmp_path / "forgetting_vs_tokens.png").read_bytes()[:4] == b"\x89PNG"


def test_paired_by_seed_against_the_first_configuration(tmp_path):
    runs = [*RUNS, run("b2", 2, (3.0, 3.0, 3.3), (2.0, 1.9, 1.5), **{"optim.lr": "2e-05"})]
    write_paired(group(runs), pooled_metrics(runs), tmp_path)
    (row,) = csv.DictReader((tmp_path / "paired.csv").open())
    assert row["configuration"] == "optim.lr=2e-05" and row["minus"] == "optim.lr=0.0002"
    assert row["seeds"] == "0,2"  # seed 1 has no partner
    diffs = [-0.1 - 0.2, 0.3 - 0.4]  # b0 - a0, b2 - a2
    assert float(row["forgetting/general mean"]) == pytest.approx(statistics.fmean(diffs), abs=1e-12)
    assert float(row["forgetting/general std"]) == pytest.approx(statistics.stdev(diffs), abs=1e-12)
    assert "-0.2000 ± 0.1414 (2)" in (tmp_path / "paired.md").read_text()


def test_one_configuration_has_nothing_to_pair(tmp_path):
    write_paired(group(RUNS[:3]), pooled_metrics(RUNS[:3]), tmp_path)
    assert not (tmp_path / "paired.md").exists()


def test_the_base_s_own_text_is_no_new_domain_and_the_kl_is_a_curve(tmp_path):
    r = run("k0", 0, (3.0, 3.1, 3.2), (2.0, 1.5, 1.0))
    r.curves["val/self/loss"] = [(0, 1.0), (7, 1.5), (15, 1.7)]  # rising: not a domain gain
    r.curves["forgetting/kl"] = [(0, 0.0), (7, 0.02), (15, 0.05)]
    assert r.gain() == pytest.approx(1.0)  # code only
    p = points(r)
    assert [x["forgetting self"] for x in p] == pytest.approx([0.0, 0.5, 0.7])
    assert [x["kl"] for x in p] == [0.0, 0.02, 0.05]
    write_curves(group([r]), tmp_path)
    assert (tmp_path / "pareto.png").stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "curves_by_config.csv").open()))
    assert [float(x["kl mean"]) for x in rows] == [0.0, 0.02, 0.05]


def test_a_run_whose_event_files_sort_backwards_reads_in_logged_order(tmp_path):
    """TensorBoard reads a run's event files in name order: ``...pid.10`` (training) before
    ``...pid.9`` (the step-0 validation) when both were written in one second."""
    from torch.utils.tensorboard import SummaryWriter

    from lp.reports.runs import read_run

    for steps, number in (((0,), 9), ((7, 15), 10)):
        d = tmp_path / f"w{number}"
        with SummaryWriter(str(d)) as w:
            for s in steps:
                w.add_scalar("val/code/loss", 2.0 - 0.1 * s, s)
                w.add_scalar("val/general/loss", 3.0 + 0.01 * s, s)
        (f,) = d.iterdir()
        f.rename(tmp_path / f"events.out.tfevents.1796305530.vm.6036.{number}")
    r, _ = read_run(tmp_path, "r")
    assert r.curves["val/code/loss"][0][0] == 0 and r.final["val/code/loss"] == pytest.approx(0.5)
    assert r.gain() == pytest.approx(1.5)
