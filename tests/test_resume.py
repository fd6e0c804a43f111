"""Resume (lp.resume): a run killed with SIGKILL, resumed with ``resume=auto``, ends
exactly as an uninterrupted one: every TensorBoard scalar at every step, bit for bit,
and the same export. Plus what a checkpoint holds and what a resume refuses.

The smoke base on CPU in float32, 6 steps: checkpoints every 2 steps, evaluations
every 3, so checkpoints fall both on and between evaluations."""

import os
import random
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lp.resume import KEY, steps
from lp.train import run
from tests.conftest import ROOT

SHORT = [
    "debug=smoke",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "callbacks.checkpoint.enabled=true",
    "callbacks.checkpoint.every_n_steps=2",
    "callbacks.checkpoint.keep=2",
]
TIMING = ("perf/tokens_per_s", "perf/mfu")  # wall-clock rates: never equal twice


def in_process(run_dir, overrides=(), cache=None):
    """lp.train in this process (as test_train does), into ``run_dir``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LP_CACHE", str(cache))
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            cfg = compose("train", overrides=[*SHORT, *overrides, f"logger.save_dir={run_dir}"])
        return run(cfg, run_dir)


def killed(when: str, run_dir, cache):
    """tests/killed_run.py in a subprocess: lp.train, dead by SIGKILL at ``when``."""
    import subprocess

    env = {**os.environ, "LP_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "tests" / "killed_run.py"), when, *SHORT, f"hydra.run.dir={run_dir}"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == -9, res.stderr[-3000:]  # it died by the signal, not by itself


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()  # what TensorBoard shows: events a restart purged are dropped
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def reference(lp_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, in_process(out, cache=lp_cache).module


@pytest.fixture(scope="module")
def resumed(lp_cache, tmp_path_factory):
    """Killed after a random step, resumed and killed halfway through writing its first
    checkpoint, resumed again to the end."""
    out = tmp_path_factory.mktemp("killed")
    k = random.SystemRandom().randint(1, 5)
    killed(f"step={k}", out, lp_cache)
    before = [s for s, _ in steps(out / "checkpoints")]
    killed("write", out, lp_cache)
    partial = list((out / "checkpoints").glob(".step-*.tmp"))
    in_process(out, ["resume=auto"], cache=lp_cache)
    return out, k, before, partial


def test_a_killed_and_resumed_run_logs_every_scalar_bit_identically(reference, resumed):
    out, k, before, _ = resumed
    want, got = scalars(reference[0]), scalars(out)
    assert set(got) == set(want), f"killed after step {k}"
    for tag in want:
        if tag in TIMING:  # each step once, and only steps the uninterrupted run has
            steps_got = [s for s, _ in got[tag]]
            assert len(steps_got) == len(set(steps_got)) and set(steps_got) <= {s for s, _ in want[tag]}
        else:
            assert got[tag] == want[tag], f"{tag}, killed after step {k} (checkpoints then: {before})"
    assert [s for s, _ in got["val/general/loss"]] == [0, 2, 5]  # step 0 measured once, not re-measured


def test_a_killed_and_resumed_run_exports_the_same_tensors(reference, resumed):
    out, reference = resumed[0], reference[0]
    want, got = load_file(reference / "export/model.safetensors"), load_file(out / "export/model.safetensors")
    assert want.keys() == got.keys()
    assert [n for n in want if not torch.equal(want[n], got[n])] == []
    for f in ("config.json", "lp_expansion.json"):
        assert (reference / "export" / f).read_text() == (out / "export" / f).read_text()


def test_a_write_cut_short_leaves_the_previous_checkpoint_usable(resumed):
    out, k, before, partial = resumed
    assert partial, "the second run was killed while writing: its temporary file is left"
    assert not list((out / "checkpoints").glob(".*")), "the next run clears what a crash left"
    kept = [s for s, _ in steps(out / "checkpoints")]
    assert kept[-2:] == [4, 6] and len(kept) <= 3, kept  # keep=2, plus the one resumed from


def test_a_checkpoint_holds_what_trains_and_the_reference(reference):
    reference, module = reference
    ckpt = torch.load(reference / "checkpoints/step-4.ckpt", weights_only=True)  # Lightning's own default
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    frozen = {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    buffers = {n for n, _ in module.named_buffers() if n in ckpt["state_dict"]}
    assert set(ckpt["state_dict"]) == trainable | buffers and "baseline_general" in buffers
    assert set(ckpt[KEY]["frozen"]) == frozen and not frozen & set(ckpt["state_dict"])
    lp = ckpt[KEY]
    assert lp["world_size"] == 1 and lp["settings"]["data.seq_len"] == 64
    assert lp["base"]["sha256"] and all(len(h) == 64 for h in lp["base"]["sha256"].values())
    assert {"python", "numpy", "torch"} <= set(lp["rng"])
    # the size the README computes: 4 bytes per trainable parameter for the weight, 8 for
    # AdamW's two moments; the rest (loop and loader state, names) is small
    n = sum(p.numel() for n_, p in module.named_parameters() if p.requires_grad)
    size = (reference / "checkpoints/step-4.ckpt").stat().st_size
    assert 12 * n <= size < 12 * n * 1.1 + 100_000, (size, 12 * n)
