"""The speed options (lp.training.speed) and lp.bench, on CPU: the same code the GPU runs."""

import copy
import importlib.machinery
import json
import math
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from lp.core.errors import LpError
from lp.expansion import decoder_layers, expand_model, make_plan
from lp.measure.flops import lowest_trainable_layer
from lp.training.callbacks import FreezeCallback
from lp.training.module import CausalLMModule
from lp.training.speed import SpeedUp, cast_frozen_linears, checkpoint_trained_layers, compile_model, speed_up
from tests.conftest import tiny_llama


def frozen(layers=6, blocks=2, method="block_expansion", **kw):
    model = tiny_llama(layers, **kw)
    plan = make_plan(layers, blocks)
    expand_model(model, plan)
    FreezeCallback().freeze_before_training(CausalLMModule(model, plan, method=method))
    return model.train(), plan


def step(model, ids, autocast=False):
    """loss and the trainable parameters' gradients of one forward/backward."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


IDS = torch.randint(0, 99, (2, 24), generator=torch.Generator().manual_seed(3))


def test_frozen_linears_in_bf16_give_bit_identical_bf16_mixed_steps():
    fp32, plan = frozen()
    cast = copy.deepcopy(fp32)
    originals = {}
    n = cast_frozen_linears(cast, torch.bfloat16, originals)
    linears = [m for m in cast.modules() if isinstance(m, torch.nn.Linear)]
    frozen_linears = [p for m in linears for p in m.parameters() if not p.requires_grad]
    assert n == len(frozen_linears) == len(originals) > 0
    assert all(p.dtype == torch.bfloat16 for p in frozen_linears)
    assert all(p.dtype == torch.float32 for p in cast.parameters() if p.requires_grad)  # fp32 masters
    assert cast.get_input_embeddings().weight.dtype == torch.float32  # keeps the residual stream in fp32
    loss_a, grads_a = step(fp32, IDS, autocast=True)
    loss_b, grads_b = step(cast, IDS, autocast=True)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


def test_a_head_tied_to_the_embedding_is_not_cast():
    model, _ = frozen(tie_word_embeddings=True)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    cast_frozen_linears(model, torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.float32


def test_the_export_view_has_the_exact_originals_and_leaves_training_alone():
    model, plan = frozen()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    module = CausalLMModule(model, plan)
    done = speed_up(model, "32-true", torch.device("cpu"), module.originals, frozen_dtype="bfloat16")
    assert "frozen_dtype" in done
    assert not torch.equal(model.lm_head.weight.float(), before["lm_head.weight"])  # bf16 rounded
    _, weights = module.export_weights()
    assert all(weights[n].dtype == t.dtype and torch.equal(weights[n], t) for n, t in before.items())
    assert model.lm_head.weight.dtype == torch.bfloat16  # the model being trained is untouched


@pytest.mark.parametrize("precision, cast", [("bf16-mixed", True), ("32-true", False), ("16-mixed", False)])
def test_auto_casts_only_where_autocast_casts_to_bf16(precision, cast):
    model, _ = frozen()
    done = speed_up(model, precision, torch.device("cpu"))
    assert ("frozen_dtype" in done) == cast
    assert (model.lm_head.weight.dtype == torch.bfloat16) == cast


def count_attention_calls(model) -> dict[int, int]:
    calls = dict.fromkeys(range(len(decoder_layers(model))), 0)
    for i, layer in enumerate(decoder_layers(model)):
        layer.self_attn.register_forward_pre_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_checkpointing_covers_exactly_the_layers_with_a_backward_pass():
    model, plan = frozen(layers=6, blocks=2)  # new blocks at 3 and 7 of 8
    reference = copy.deepcopy(model)
    chosen = checkpoint_trained_layers(model)
    low = lowest_trainable_layer(model)
    assert chosen == list(range(low, 8)) and low == min(plan.new_layers) == 3
    calls, calls_ref = count_attention_calls(model), count_attention_calls(reference)
    loss_a, grads_a = step(reference, IDS)
    loss_b, grads_b = step(model, IDS)
    assert calls == {i: 2 if i >= low else 1 for i in range(8)}  # recomputed only where backward runs
    assert calls_ref == dict.fromkeys(range(8), 1)
    assert torch.equal(loss_a, loss_b) and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


def fake_liger(monkeypatch) -> list:
    """Stands in for liger_kernel (Triton, CUDA only) to check lp's wiring alone."""
    calls = []
    pkg = types.ModuleType("liger_kernel")
    pkg.__spec__ = importlib.machinery.ModuleSpec("liger_kernel", None)
    sub = types.ModuleType("liger_kernel.transformers")
    sub._apply_liger_kernel_to_instance = lambda model: calls.append(model)
    monkeypatch.setitem(sys.modules, "liger_kernel", pkg)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", sub)
    return calls


def test_liger_auto_patches_the_model_on_cuda_only(monkeypatch):
    calls = fake_liger(monkeypatch)
    model, _ = frozen()
    assert "liger" not in speed_up(model, "32-true", torch.device("cpu"))
    assert calls == []
    assert speed_up(model, "bf16-mixed", torch.device("cuda"), liger="auto")["liger"] is True
    assert calls == [model]


def test_liger_patches_the_base_of_a_peft_model(monkeypatch):
    from peft import LoraConfig, get_peft_model

    calls = fake_liger(monkeypatch)
    base = tiny_llama(2)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    speed_up(peft_model, "32-true", torch.device("cuda"), liger=True)
    assert calls == [base]


def test_liger_requested_where_it_cannot_run_is_refused():
    model, _ = frozen()
    with pytest.raises(LpError, match="speed.liger=true needs"):
        speed_up(model, "32-true", torch.device("cpu"), liger=True)


def test_unknown_options_are_refused_with_the_allowed_values():
    with pytest.raises(LpError, match=r"speed.compile='yes' is unknown; allowed: false, blocks, model"):
        SpeedUp(compile="yes")
    with pytest.raises(LpError, match=r"speed.frozen_dtype='int8' is unknown"):
        SpeedUp(frozen_dtype="int8")


def test_compile_blocks_works_in_place_and_keeps_parameter_names():
    model, _ = frozen()
    names = list(model.state_dict())
    compile_model(model, "blocks")
    assert list(model.state_dict()) == names
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(model))


@pytest.mark.slow
def test_compiled_blocks_train_like_eager():
    eager, _ = frozen()
    compiled = copy.deepcopy(eager)
    compile_model(compiled, "blocks")
    loss_a, grads_a = step(eager, IDS)
    loss_b, grads_b = step(compiled, IDS)
    assert torch.allclose(loss_a, loss_b, rtol=1e-5)
    assert all(torch.allclose(grads_a[k], grads_b[k], rtol=1e-4, atol=1e-6) for k in grads_a)


def test_the_module_trains_without_a_kv_cache_and_with_fused_adamw():
    model, plan = frozen()
    module = CausalLMModule(model, plan)
    assert module(IDS).past_key_values is None
    module.trainer = types.SimpleNamespace(estimated_stepping_batches=10)
    assert module.configure_optimizers()["optimizer"].defaults["fused"] is True


def test_fused_adamw_clips_gradients_under_bf16_mixed():
    """Lightning alone refuses this combination; lp clips as in fp32 (no scaler in bf16)."""
    import lightning as L

    norms = {"before_clip": [], "stepped": []}

    def norm(module):
        grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else None

    class Norm(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # Lightning clips after this
            norms["before_clip"].append(norm(pl_module))

        def on_before_zero_grad(self, trainer, pl_module, optimizer):  # the previous step's grads
            if norm(pl_module) is not None:
                norms["stepped"].append(norm(pl_module))

    model, plan = frozen()
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1e-3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[FreezeCallback(), SpeedUp(), Norm()],
    )  # fmt: skip
    loader = torch.utils.data.DataLoader([{"input_ids": IDS, "labels": IDS}] * 2, batch_size=None)
    trainer.fit(CausalLMModule(model, plan), train_dataloaders=loader)
    assert trainer.optimizers[0].defaults["fused"] is True
    assert norms["before_clip"][0] > 0.01
    assert norms["stepped"][0] == pytest.approx(1e-3, rel=1e-3)  # what the first step used


def test_bf16_mixed_run_trains_in_bf16_and_exports_frozen_weights_unchanged(lp_cache, tmp_path, monkeypatch):
    """The whole lp.train path with bf16-mixed (the GPU default) on CPU."""
    import lp.training.speed
    from tests.commands.test_train import compose_cfg

    applied = []
    real = lp.training.speed.speed_up
    monkeypatch.setattr(
        lp.training.speed, "speed_up", lambda *a, **k: applied.append(real(*a, **k)) or applied[-1]
    )
    monkeypatch.setenv("LP_CACHE", str(lp_cache))
    cfg = compose_cfg([f"logger.save_dir={tmp_path}", "trainer.precision=bf16-mixed", "trainer.max_steps=2"])
    result = lp.train.run(cfg, tmp_path / "run")
    assert len(applied) == 1 and applied[0]["frozen_dtype"].endswith("tensors to bfloat16")
    # the model keeps training in bf16 after the export: the export view changed nothing
    assert result.module.model.lm_head.weight.dtype == torch.bfloat16
    meta = json.loads((tmp_path / "run/export/lp_expansion.json").read_text())
    new = load_file(tmp_path / "run/export/model.safetensors")
    base = load_file(f"{meta['base_model']}/model.safetensors")
    for name, t in new.items():
        parts = name.split(".")
        if name.startswith("model.layers.") and int(parts[2]) in meta["new_layers"]:
            continue
        if name.startswith("model.layers."):
            name = ".".join([*parts[:2], str(meta["layer_map"][int(parts[2])]), *parts[3:]])
        assert t.dtype == torch.float32 and torch.equal(t, base[name]), name


def test_bench_writes_both_ratios(tmp_path, capsys):
    from lp.bench import main

    out = tmp_path / "bench.json"
    main(["--shape", "tiny", "--steps", "2", "--warmup", "1", "--rounds", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["device"] == "cpu"
    assert {(r["runner"], r["mode"]) for r in result["runs"]} == {
        (runner, mode) for runner in ("plain", "lp") for mode in ("block_expansion", "full_finetune")
    }
    assert all(r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["useful_tflops"] > 0 for r in result["runs"])
    assert set(result["ratios"]) == {"lp_over_plain_step_time", "freeze_over_full_step_time"}
    assert all(math.isfinite(v) and v > 0 for v in result["ratios"].values())  # behaviour, not timing
    assert "lp_over_plain_step_time" in capsys.readouterr().out


@pytest.mark.gpu
def test_gpu_defaults_train_with_bf16_frozen_weights():
    model, plan = frozen()
    model.cuda()
    done = speed_up(model, "bf16-mixed", torch.device("cuda"))
    assert model.lm_head.weight.dtype == torch.bfloat16 and "frozen_dtype" in done
    with torch.autocast("cuda", torch.bfloat16):
        loss = model(input_ids=IDS.cuda(), labels=IDS.cuda(), use_cache=False).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
