"""Scale-out (lp.training.strategy, conf/strategy/): a 2-process DDP run against one process with the
same global batch, the FSDP unit layout on the real expanded model, the DDP unused-parameter
flag, and the shape of the SLURM job the launcher submits. FSDP and DeepSpeed need CUDA: their
runs are marked ``gpu``."""

import math
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.plugins.precision import Precision
from safetensors.torch import load_file

from lp.expansion import expand_model, make_plan
from lp.training.callbacks import FreezeCallback, find_non_identity_blocks
from lp.training.methods import METHODS, get_method, prepare
from lp.training.module import CausalLMModule
from lp.training.strategy import KeepFrozenOriginals, build, fsdp_units, gathered_state, unit_kinds
from tests.commands.test_train import scalars
from tests.conftest import ROOT, hydra_cli, run_lp, tiny_llama

METHOD_SETTINGS = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def frozen_module(method: str = "block_expansion", tied: bool = False, **freeze) -> CausalLMModule:
    """The real expanded (or adapted) tiny Llama with its trainable set chosen, as lp.train builds it."""
    model = tiny_llama(layers=4, tie_word_embeddings=tied)
    m = get_method(method)
    expands = m.blocks == "required"
    plan = make_plan(
        4, blocks=2 if expands else 0, position="interleave", source="group_top", init="zero_out"
    )
    if expands:
        expand_model(model, plan)
    module = CausalLMModule(prepare(model, m, METHOD_SETTINGS), plan, method=m)
    FreezeCallback(**freeze).freeze_before_training(module)
    return module


def test_fsdp_units_one_per_layer_frozen_and_trainable_apart():
    module = frozen_module()
    kinds = unit_kinds(module.model, fsdp_units(module.model))
    new = set(module.plan.new_layers)
    expected = {f"model.layers.{j}": "trainable" if j in new else "frozen" for j in range(6)}
    assert kinds == {"": "frozen", **expected}  # root: embeddings, final norm, head


@pytest.mark.parametrize(
    "method, freeze, tied",
    [
        ("block_expansion", {"train_norms": True}, False),
        ("block_expansion", {"train_embeddings": True}, False),
        (
            "block_expansion",
            {"train_norms": True},
            True,
        ),  # root mixed: frozen tied embedding/head, trained norm
        ("lora", {}, False),
        ("moe", {}, False),
    ],
)
def test_fsdp_never_mixes_frozen_and_trainable_in_one_unit(method, freeze, tied):
    module = frozen_module(method, tied, **freeze)
    units = fsdp_units(module.model)
    kinds = unit_kinds(module.model, units)
    assert "mixed" not in kinds.values(), kinds
    # every trainable parameter is in some trainable unit; every parameter is in exactly one unit
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    assert trainable > 0
    if freeze.get("train_norms"):
        assert kinds["model.layers.0.input_layernorm"] == "trainable"
        assert kinds["model.layers.0.self_attn"] == "frozen"
    if tied:  # the shared embedding/head tensor stays in one unit, the root
        assert "model.embed_tokens" not in kinds and "lm_head" not in kinds


@pytest.fixture
def one_process_group(tmp_path):
    """A real (gloo, world size 1) process group: torch's FSDP runs on CPU, Lightning's does not."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize(
    "method, train_norms, low",
    [("block_expansion", False, 2), ("block_expansion", True, 0), ("moe", False, 0)],
)
def test_fsdp_wraps_what_the_policy_says_and_trains_on_cpu(one_process_group, method, train_norms, low):
    """The policies lp gives Lightning's FSDPStrategy, applied by torch's FSDP as Lightning applies
    them (the wrap, then activation checkpointing): one FSDP unit per planned unit plus the root,
    FSDP's non-reentrant checkpoint wrapper on exactly the layers at and above the lowest
    trainable one (``low``: the first new block; with train_norms layer 0's norms train, and MoE
    trains experts in every layer), the export from the gathered weights equal to the unwrapped
    model's export, the identity check passing through the root wrapper, and a step computing the
    unwrapped model's loss and gradients."""
    from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    module, reference = (frozen_module(method, train_norms=train_norms) for _ in range(2))
    settings = {"name": "fsdp", "sharding_strategy": "SHARD_GRAD_OP", "cpu_offload": False}
    strategy = build(settings, activation_checkpointing=True)
    strategy.connect(module)  # what the Trainer does before it sets the strategy up
    units = fsdp_units(module.model)
    layers = list(module.model.model.layers)
    wrapped = FSDP(module, sharding_strategy=strategy.sharding_strategy, device_id=torch.device("cpu"),
                   **strategy.kwargs)  # fmt: skip
    _setup_activation_checkpointing(wrapped, strategy._activation_checkpointing_kwargs)
    fsdp = [m.module for m in wrapped.modules() if isinstance(m, FSDP)]
    assert len(fsdp) == len(units) + 1
    checkpointed = [
        m._checkpoint_wrapped_module for m in wrapped.modules() if isinstance(m, CheckpointWrapper)
    ]
    assert [layers.index(m) for m in checkpointed] == list(range(low, len(layers)))
    # the export's gather (Lightning's full state dict, rank 0) and the identity check, through FSDP
    strategy.model, strategy.parallel_devices = wrapped, [torch.device("cpu")]
    trainer = SimpleNamespace(strategy=strategy, is_global_zero=True, precision_plugin=Precision())
    _, exported = module.export_weights(gathered_state(trainer, module))
    _, expected_export = reference.export_weights()
    assert exported.keys() == expected_export.keys()
    assert all(torch.equal(exported[k], expected_export[k]) for k in exported)
    assert find_non_identity_blocks(module, torch.randint(0, 99, (2, 16)), trainer) == []
    ids = torch.randint(0, 99, (2, 16))
    loss, expected = wrapped(ids, ids).loss, reference(ids, ids).loss
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    grads = {n: p.grad for n, p in reference.model.named_parameters() if p.requires_grad}
    got = {plain_name(n): p.grad for n, p in wrapped.named_parameters() if p.requires_grad}
    assert got.keys() == grads.keys()
    for n in grads:
        torch.testing.assert_close(got[n], grads[n], rtol=0, atol=1e-6, msg=n)


def plain_name(name: str) -> str:
    """A parameter's name in the unwrapped model (FSDP and its checkpoint wrapper add prefixes)."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(wrapper, "")
    return name.removeprefix("model.")


@pytest.mark.parametrize("rank0", [True, False])
def test_frozen_weights_go_out_as_loaded_when_an_engine_casts_them(rank0):
    """DeepSpeed's bf16 mode casts the whole module (``module.bfloat16()``, done here by hand):
    rank 0 keeps the frozen weights' originals and exports them exactly; other ranks keep none."""
    module = frozen_module()
    loaded = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    KeepFrozenOriginals().setup(SimpleNamespace(is_global_zero=rank0), module, "fit")
    module.model.bfloat16()
    frozen = {n for n, p in module.model.named_parameters() if not p.requires_grad}
    assert set(module.originals) == (frozen if rank0 else set())
    if rank0:
        _, weights = module.export_weights()
        assert all(torch.equal(weights[n], loaded[n]) for n in frozen)


def test_every_trainable_parameter_gets_a_gradient_so_ddp_need_not_search():
    """conf/strategy/ddp.yaml sets find_unused_parameters=false: true only pays where some
    trainable parameter gets no gradient in a step, which no method does."""
    for method in METHODS:
        module = frozen_module(method)
        ids = torch.randint(0, 99, (2, 16))
        module(ids, ids).loss.backward()
        missing = [n for n, p in module.model.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == [], method
    ddp = build({"name": "ddp", "find_unused_parameters": False})
    assert ddp._ddp_kwargs["find_unused_parameters"] is False


def test_slurm_job_shape_follows_the_trainer(monkeypatch, tmp_path):
    """The real Hydra multirun with hydra/launcher=slurm, up to the sbatch script submitit
    would submit (submitting is the one step replaced)."""
    import submitit

    scripts = []

    def submit(executor, fn, *args):
        scripts.append(executor._executor._make_submission_file_text("python -m lp.train", "0"))
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit)
    bin_dir = tmp_path / "bin"  # submitit looks for srun before it builds a SLURM executor
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    args = ["-m", "hydra/launcher=slurm", "strategy=ddp", "trainer.devices=4", "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    assert hydra_cli("lp.train", args, monkeypatch) == 0
    (script,) = scripts
    for line in ["--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu"]:
        assert f"#SBATCH {line}\n" in script, script


CURVES = ("train/loss", "val/code/loss", "val/math/loss", "val/general/loss", "forgetting/general",
          "perf/trainable_params")  # fmt: skip


SMOKE = ["lp.train", "debug=smoke", "trainer.max_steps=4", "trainer.val_check_interval=2"]
DDP = ["strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "data.batch_size=2"]
CHECKPOINTS = ["callbacks.checkpoint.enabled=true", "callbacks.checkpoint.every_n_steps=2",
               "callbacks.checkpoint.keep=null"]  # fmt: skip


def lp_run(args: list[str], run_dir, cache) -> str:
    res = run_lp([*SMOKE, *args, f"hydra.run.dir={run_dir}"], cache, ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stderr


@pytest.fixture(scope="module")
def ddp_runs(lp_cache, tmp_path_factory):
    """One process x 4 rows; 2 ranks x 2 rows (gloo) with a checkpoint every 2 steps; and that
    DDP run resumed from its middle checkpoint (step 2: its run directory as a killed run would
    leave it, events up to step 4 included, which the resume purges)."""
    out = tmp_path_factory.mktemp("ddp")
    lp_run(["data.batch_size=4"], out / "one", lp_cache)
    lp_run([*DDP, *CHECKPOINTS], out / "two", lp_cache)
    (out / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(out / "two" / "tb", out / "resumed" / "tb")
    shutil.copy(out / "two" / "checkpoints" / "step-2.ckpt", out / "resumed" / "checkpoints")
    log = lp_run([*DDP, *CHECKPOINTS, "resume=auto"], out / "resumed", lp_cache)
    assert "(step 2)" in log, log[-2000:]
    return out


def curves(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = scalars(run_dir)
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in CURVES}


def exported(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "export" / "model.safetensors")


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(ddp_runs):
    """2 ranks x 2 rows against 1 process x 4 rows: the same rows train, so the runs differ only
    in float32 summation order (gradients all-reduced, eval sums over ranks). Measured (4 steps,
    3 evaluations): every curve within 4.8e-7 (one float32 ulp at 5.x), export tensors within
    1.5e-8 (91 of 147 bitwise equal). Another batch (data.seed=1) moves train/loss by 0.5, the
    eval losses by >= 1.4e-2, forgetting by 5e-4 and the export by 7.8e-4; so 1e-5 and 1e-6
    separate the two by orders of magnitude. Turned red by: rank 0's loss logged alone (no
    sync_dist), ranks reading the same rows, eval metrics not summed over ranks."""
    a, b = curves(ddp_runs / "one"), curves(ddp_runs / "two")
    for tag in CURVES:
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
        for (step, x), (_, y) in zip(a[tag], b[tag], strict=True):
            assert math.isclose(x, y, rel_tol=0, abs_tol=1e-5), (tag, step, x, y)
    assert len(a["train/loss"]) == 4 and len(a["val/code/loss"]) == 3
    wa, wb = exported(ddp_runs / "one"), exported(ddp_runs / "two")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


def test_a_ddp_run_resumed_from_its_middle_checkpoint_is_identical(ddp_runs):
    """Every rank resumes from rank 0's checkpoint (model, optimizer, loader position, which
    rank_share makes the same on every rank): bit-identical curves and export."""
    assert curves(ddp_runs / "resumed") == curves(ddp_runs / "two")
    wa, wb = exported(ddp_runs / "two"), exported(ddp_runs / "resumed")
    assert wa.keys() == wb.keys() and [k for k in wa if not torch.equal(wa[k], wb[k])] == []


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_sharded_strategy_trains_and_exports_on_a_gpu(lp_cache, tmp_path, strategy):
    """One GPU (world size 1 still wraps, shards and gathers): trains, exports an ordinary
    checkpoint whose frozen base layers equal the one-process export's. Not run in CI."""
    common = ["lp.train", "debug=smoke", "trainer=gpu", "trainer.devices=1"]
    one = run_lp([*common, f"hydra.run.dir={tmp_path / 'one'}"], lp_cache, ROOT)
    assert one.returncode == 0, one.stderr[-3000:]
    sharded = [f"strategy={strategy}", "callbacks.checkpoint.enabled=false"]  # not yet resumable there
    run = run_lp([*common, *sharded, f"hydra.run.dir={tmp_path / 's'}"], lp_cache, ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    wa, wb = (load_file(tmp_path / d / "export" / "model.safetensors") for d in ("one", "s"))
    assert wa.keys() == wb.keys()
    assert torch.equal(
        wa["model.layers.0.self_attn.q_proj.weight"], wb["model.layers.0.self_attn.q_proj.weight"]
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([], "resumable checkpoints are not supported with strategy=fsdp"),
        (["callbacks.checkpoint.enabled=false", "callbacks.benchmark.enabled=true"], "run on rank 0 alone"),
        (["callbacks.checkpoint.enabled=false", "stage=sft"], "run on rank 0 alone"),
        (["callbacks.checkpoint.enabled=false", "stage=sft", "stage.samples.prompts=[]"], None),
    ],
)
def test_what_a_sharded_strategy_cannot_do_yet_is_refused(overrides, message, monkeypatch):
    """Resumable checkpoints and rank-0-only forward passes (benchmarks, SFT samples) under
    FSDP. The CUDA check is stubbed so the rule behind it is reached on a CPU machine."""
    from hydra import compose, initialize_config_dir

    from lp.core.errors import LpError
    from lp.training.strategy import check

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=["strategy=fsdp", "trainer=gpu", *overrides])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if message is None:
        check(cfg)
    else:
        with pytest.raises(LpError, match=message):
            check(cfg)
