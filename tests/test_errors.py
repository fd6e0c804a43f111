"""Bad input: one line on stderr, non-zero exit, no traceback, no run directory left."""

import json

import pytest

from tests.conftest import ROOT, run_lp

CASES = [
    (["expansion.blocks=-1"], "expansion.blocks=-1"),
    (["expansion.blocks=2.5"], "not an integer"),
    (["expansion.blocks=many"], "not an integer"),
    (["expansion.position=[0,1,99]", "expansion.blocks=3"], "out of range"),
    (["expansion.position=[1]", "expansion.blocks=2"], "one index per new block"),
    (["expansion.position=middle"], "expansion.position='middle' is unknown"),
    (["expansion.init=noise"], "expansion.init='noise' is unknown"),
    (["model=hf", "model.name_or_path=/no/such/checkpoint"], "does not exist"),
    (["speed.compile=yes"], "speed.compile='yes' is unknown"),
]


def check_refused(res, message, run_dir):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], res.stderr[-1500:]
    assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))


@pytest.mark.parametrize("overrides, message", CASES)
def test_bad_input_is_refused_in_one_line(overrides, message, lp_cache, tmp_path):
    # model=tiny unless a case names its model: the refusal comes before any base is built
    model = [] if any(o.startswith("model=") for o in overrides) else ["model=tiny"]
    res = run_lp(["lp.train", *model, *overrides, f"hydra.run.dir={tmp_path}/run"], lp_cache, ROOT)
    check_refused(res, message, tmp_path / "run")


@pytest.mark.parametrize(
    "config, message", [({"model_type": "vit"}, "not a causal language model"), (None, "has no config.json")]
)
def test_a_local_directory_that_is_no_causal_lm_is_refused(config, message, lp_cache, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    if config:
        (ckpt / "config.json").write_text(json.dumps(config))
    res = run_lp(
        ["lp.train", "model=hf", f"model.name_or_path={ckpt}", f"hydra.run.dir={tmp_path}/run"],
        lp_cache,
        ROOT,
    )
    check_refused(res, message, tmp_path / "run")


def test_unknown_group_option_uses_hydras_message(lp_cache, tmp_path):
    res = run_lp(["lp.train", "model=nope", f"hydra.run.dir={tmp_path}/run"], lp_cache, ROOT)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "Could not find 'model/nope'" in res.stderr
    assert not (tmp_path / "run").exists()
