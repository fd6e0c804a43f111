"""End to end: the real Hydra config, a real Trainer, real TensorBoard files and a
real safetensors export, on the smoke-sized offline default."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from lp.train import run
from tests.conftest import ROOT, run_lp

TAGS = {
    "train/loss",
    "val/code/loss",
    "val/math/loss",
    "val/general/loss",
    "val/code/loss_se",
    "val/math/loss_se",
    "val/general/loss_se",
    "forgetting/general",
    "perf/tokens_per_s",
    "perf/trainable_params",
}


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("train", overrides=["debug=smoke", *overrides])


@pytest.fixture(scope="module")
def trained(lp_cache, tmp_path_factory):
    """One in-process smoke run shared by the checks below."""
    out = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setenv("LP_CACHE", str(lp_cache))
    try:
        cfg = compose_cfg([f"logger.save_dir={out}"])
        result = run(cfg, out)
    finally:
        mp.undo()
    return out, result


def scalars(run_dir):
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_has_every_tag_and_a_step0_baseline(trained):
    run_dir, result = trained
    acc = scalars(run_dir)
    assert TAGS <= set(acc.Tags()["scalars"])
    forgetting = acc.Scalars("forgetting/general")
    assert forgetting[0].step == 0 and forgetting[0].value == 0.0
    general = acc.Scalars("val/general/loss")
    assert len(general) >= 2  # before training and after
    assert forgetting[-1].value == pytest.approx(general[-1].value - general[0].value, abs=1e-5)
    for d in ("code", "math", "general"):  # a standard error: positive, far below the loss itself
        se, loss = acc.Scalars(f"val/{d}/loss_se"), acc.Scalars(f"val/{d}/loss")
        assert [e.step for e in se] == [e.step for e in loss]
        assert all(0 < e.value < 0.5 * v.value for e, v in zip(se, loss, strict=True))
    assert acc.Scalars("perf/trainable_params")[0].value == sum(
        p.numel() for p in result.module.model.parameters() if p.requires_grad
    )


def test_hparams_tab_lists_settings_and_final_metrics(trained):
    run_dir, _ = trained
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {h.name for h in exp.hparam_infos} >= {"expansion.blocks", "expansion.position", "expansion.init"}
    assert {m.name.tag for m in exp.metric_infos} >= {
        "val/general/loss",
        "forgetting/general",
        "val/code/loss",
    }


def test_export_loads_and_matches_the_trained_model(trained):
    run_dir, result = trained
    export = run_dir / "export"
    meta = json.loads((export / "lp_expansion.json").read_text())
    assert meta["base_layers"] == 8 and meta["new_layers"] == list(range(1, 16, 2))
    assert meta["layer_map"] == [i // 2 for i in range(16)]
    assert meta["position"] == "interleave" and meta["init"] == "zero_out" and meta["base_model"]
    loaded = AutoModelForCausalLM.from_pretrained(export).eval()
    ids = torch.arange(40).view(2, 20)
    model = result.module.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_frozen_layers_in_export_are_bit_identical_to_base(trained):
    run_dir, _ = trained
    export = run_dir / "export"
    meta = json.loads((export / "lp_expansion.json").read_text())
    new, base = load_file(export / "model.safetensors"), load_file(f"{meta['base_model']}/model.safetensors")
    for name, t in new.items():
        if not name.startswith("model.layers."):
            assert torch.equal(t, base[name]), name
            continue
        j, rest = name.split(".")[2], ".".join(name.split(".")[3:])
        src = f"model.layers.{meta['layer_map'][int(j)]}.{rest}"
        if int(j) in meta["new_layers"]:
            assert not torch.equal(t, base[src]) or "norm" in name, f"new block tensor {name} did not train"
        else:
            assert torch.equal(t, base[src]), name


def test_cli_run_writes_run_dir(lp_cache, tmp_path):
    res = run_lp(["lp.train", "debug=smoke", f"hydra.run.dir={tmp_path}/r"], lp_cache, ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "r/export/model.safetensors").is_file()
    assert (tmp_path / "r/.hydra/config.yaml").is_file()
    assert "tensorboard --logdir" in res.stdout


def test_an_expanded_checkpoint_trains_its_recorded_blocks(trained, lp_cache, tmp_path, monkeypatch):
    from lp.expand import main as expand_main

    base = json.loads((trained[0] / "export/lp_expansion.json").read_text())["base_model"]
    dst = tmp_path / "expanded"
    assert expand_main([base, str(dst), "--blocks", "1", "--position", "top"]) == 0  # 8 -> 9 layers
    before = load_file(next(dst.glob("*.safetensors")))
    monkeypatch.setenv("LP_CACHE", str(lp_cache))
    # expansion.blocks=3 is ignored: the recorded plan wins over the expansion settings
    cfg = compose_cfg(
        [f"logger.save_dir={tmp_path}", "model=hf", f"model.name_or_path={dst}", "expansion.blocks=3"]
    )
    result = run(cfg, tmp_path / "run")
    assert result.module.plan.new_layers == (8,) and result.module.model.config.num_hidden_layers == 9
    after = load_file(tmp_path / "run/export/model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.layers.8.") for k in changed), changed
