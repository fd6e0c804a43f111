"""Resume (lp.training.checkpointing): a run killed with SIGKILL, resumed with ``resume=auto``, ends
exactly as an uninterrupted one: every TensorBoard scalar at every step, bit for bit,
and the same export. Plus what a checkpoint holds and what a resume refuses.

The smoke base on CPU in float32, 6 steps: checkpoints every 2 steps, evaluations
every 3, so checkpoints fall both on and between evaluations."""

import os
import random
import shutil
import sys

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from lp.train import run
from lp.training.checkpointing import KEY, AtomicCheckpointIO, Resumable, StepCheckpoint, steps
from tests.conftest import ROOT, check_one_line, hydra_cli

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


def resume_dir(reference, tmp_path):
    """A run directory holding the uninterrupted run's checkpoints (a copy: refused runs
    must leave it as it was)."""
    out = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", out / "checkpoints")
    return out


def files(d):
    """What lp wrote in ``d`` (Hydra writes its .hydra/ and log before any run starts)."""
    mine = [p for p in d.rglob("*") if ".hydra" not in p.parts and p.suffix != ".log"]
    return sorted((str(p.relative_to(d)), p.stat().st_mtime_ns) for p in mine)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.seq_len=32", "data.seq_len=32 differs from 64"),
        ("expansion.blocks=2", "expansion.blocks=2 differs from 8"),
        ("method=expand_full", "method.name='expand_full' differs from 'block_expansion'"),
        ("data.sources.math.weight=2.0", "data.sources.math.weight=2.0 differs from 1.0"),
        ("strategy=ddp trainer.devices=2", "written by 1 processes, this run has 2"),
        ("resume=null", "resume=null but"),
    ],
)
def test_a_resume_refuses_a_changed_fixed_setting_in_one_line(
    override, message, reference, lp_cache, tmp_path, monkeypatch, capsys
):
    out = resume_dir(reference[0], tmp_path)
    before = files(out)
    monkeypatch.setenv("LP_CACHE", str(lp_cache))
    code = hydra_cli("lp.train", [*SHORT, *override.split(), f"hydra.run.dir={out}"], monkeypatch)
    check_one_line(code, capsys.readouterr().err, message)
    assert files(out) == before  # the run directory is kept, nothing in it written


def test_a_resume_refuses_an_older_checkpoint_where_newer_ones_are(
    reference, lp_cache, tmp_path, monkeypatch, capsys
):
    out = resume_dir(reference[0], tmp_path)
    monkeypatch.setenv("LP_CACHE", str(lp_cache))
    older = out / "checkpoints/step-4.ckpt"
    code = hydra_cli("lp.train", [*SHORT, f"resume={older}", f"hydra.run.dir={out}"], monkeypatch)
    check_one_line(code, capsys.readouterr().err, "step-6.ckpt is newer")


def test_a_resume_refuses_a_changed_base(reference, lp_cache, tmp_path, monkeypatch, capsys):
    from safetensors.torch import save_file

    cache = tmp_path / "cache"
    shutil.copytree(lp_cache, cache)
    (weights,) = cache.glob("tiny-llama-*/model.safetensors")
    tensors = load_file(weights)
    tensors["model.norm.weight"][0] += 1  # one number of the base changed, same settings
    save_file(tensors, weights, metadata={"format": "pt"})
    out = resume_dir(reference[0], tmp_path)
    monkeypatch.setenv("LP_CACHE", str(cache))
    code = hydra_cli("lp.train", [*SHORT, f"hydra.run.dir={out}"], monkeypatch)
    check_one_line(code, capsys.readouterr().err, "is not the one")


def test_max_steps_and_intervals_may_change(reference, lp_cache, tmp_path):
    out = resume_dir(reference[0], tmp_path)
    (out / "checkpoints/step-6.ckpt").unlink()  # continue from step 4
    longer = ["trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.log_every_n_steps=2"]
    result = in_process(out, ["resume=auto", "export=false", *longer], cache=lp_cache)
    assert result.module.trainer.global_step == 8
    assert [s for s, _ in steps(out / "checkpoints")][-2:] == [6, 8]
    loss = scalars(out)["train/loss"]
    assert [s for s, _ in loss] == [5, 7]  # the resumed part only (this directory has no earlier events)


class Noisy(L.LightningModule):
    """Draws from every generator a training step may use (dropout, numpy, random)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(8))
        self.drawn: dict[int, tuple] = {}

    def training_step(self, batch, batch_idx):
        draws = (torch.rand(3).tolist(), np.random.rand(), random.random())
        self.drawn[self.trainer.global_step] = draws
        return (torch.nn.functional.dropout(self.w, 0.5) * batch[0]).sum()

    def train_dataloader(self):
        data = TensorDataset(torch.ones(8, 8))  # batches alike: this loader does not resume
        return DataLoader(data, batch_size=1, generator=torch.Generator().manual_seed(0))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, max_steps, ckpt=None) -> Noisy:
    L.seed_everything(0)
    module = Noisy()
    trainer = L.Trainer(
        max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[StepCheckpoint(tmp_path, every_n_steps=2, keep=None), Resumable({}, {})],
        plugins=[AtomicCheckpointIO()],
    )  # fmt: skip
    trainer.fit(module, ckpt_path=ckpt)
    return module


def test_random_number_generators_continue_where_they_were(tmp_path):
    whole = fit(tmp_path / "whole", 4)
    resumed = fit(tmp_path / "resumed", 4, ckpt=tmp_path / "whole/step-2.ckpt")
    assert sorted(resumed.drawn) == [2, 3]
    assert [resumed.drawn[s] for s in (2, 3)] == [whole.drawn[s] for s in (2, 3)]
    assert torch.equal(resumed.w, whole.w)  # dropout masks drawn alike
