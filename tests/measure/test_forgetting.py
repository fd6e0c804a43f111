"""Forgetting the measurement can see (lp.measure.forgetting): KL to the base, the base's own text,
per-row errors of forgetting, and the controls (in-place training, LoRA on the new blocks,
replay), through the real config and a real Trainer on the smoke base."""

import itertools

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from lp.corpus import MixtureDataModule
from lp.corpus.own_text import cached_own_text, own_text
from lp.expansion import decoder_layers
from lp.measure.forgetting import Forgetting, _row_kl, full_reference
from lp.reports.runs import scalars
from lp.train import run
from tests.conftest import ROOT, tiny_llama
from tests.corpus.test_text import tokenizer  # noqa: F401  (the shared BPE fixture)


def smoke(tmp, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("train", overrides=["debug=smoke", f"logger.save_dir={tmp}", "export=false",
                                           "trainer.max_steps=2", "trainer.val_check_interval=2",
                                           *overrides])  # fmt: skip


def curves(run_dir) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [e.value for e in scalars(acc, t)] for t in acc.Tags()["scalars"]}


def trained(tmp, lp_cache, monkeypatch, *overrides):
    monkeypatch.setenv("LP_CACHE", str(lp_cache))
    return run(smoke(tmp, *overrides), tmp), curves(tmp)


METHODS = [
    ["method=block_expansion"],
    ["method=expand_full"],
    ["method=full_finetune"],
    ["method=lora", "method.r=4"],
    ["method=moe"],
    ["method=in_place", "expansion.blocks=3"],
    ["method=lora", "expansion.blocks=2"],
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: " ".join(m))
def test_kl_is_exactly_zero_at_step_0_and_positive_once_the_function_changes(method, lp_cache, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    result, c = trained(tmp_path, lp_cache, monkeypatch, *method, "optim.lr=3e-3")
    assert c["forgetting/kl"][0] == 0.0 and c["forgetting/kl_se"][0] == 0.0
    assert c["forgetting/general_se"][0] == 0.0 and c["forgetting/self"][0] == 0.0
    assert c["forgetting/kl"][-1] > 0.0, c["forgetting/kl"]
    # forgetting is the mean of the per-row differences; its error is theirs, not the level's
    assert c["forgetting/general"][-1] == pytest.approx(c["val/general/loss"][-1] - c["val/general/loss"][0],
                                                        abs=1e-5)  # fmt: skip
    assert 0 < c["forgetting/general_se"][-1] < c["val/general/loss_se"][-1]


def test_the_bypass_and_the_cache_agree_for_block_expansion(lp_cache, tmp_path, monkeypatch):
    _, bypass = trained(tmp_path / "bypass", lp_cache, monkeypatch, "forgetting.reference=bypass")
    _, cache = trained(tmp_path / "cache", lp_cache, monkeypatch, "forgetting.reference=cache")
    _, topk = trained(
        tmp_path / "topk", lp_cache, monkeypatch, "forgetting.reference=cache", "forgetting.topk=8"
    )
    assert bypass["forgetting/kl"][-1] > 0
    assert bypass["forgetting/kl"] == pytest.approx(cache["forgetting/kl"], rel=1e-6, abs=1e-9)
    # top-k + tail: the KL of coarsened distributions, a lower bound of the full one
    assert 0 < topk["forgetting/kl"][-1] <= bypass["forgetting/kl"][-1]
    assert bypass["val/general/loss"] == cache["val/general/loss"] == topk["val/general/loss"]


def test_topk_kl_is_a_lower_bound_and_exact_with_the_whole_vocabulary():
    g = torch.Generator().manual_seed(0)
    base, model = torch.randn(6, 40, generator=g), torch.randn(6, 40, generator=g)
    target = torch.ones(5, dtype=torch.long)
    meter = Forgetting(["general"], "cache", topk=None)
    full = _row_kl(full_reference(base), model, target)
    assert full > 0 and _row_kl(meter.compress(base), base, target) == 0
    meter.topk = 40
    assert _row_kl(meter.compress(base), model, target) == pytest.approx(full.item(), rel=1e-5)
    meter.topk = 5
    assert 0 < _row_kl(meter.compress(base), model, target) < full


def test_per_row_forgetting_error_is_the_error_of_the_differences(lp_cache, tmp_path, monkeypatch):
    result, c = trained(tmp_path, lp_cache, monkeypatch, "method=full_finetune", "optim.lr=3e-3")
    baseline = result.module.forgetting.baseline["general"]
    rows = result.module.trainer.datamodule.eval_sets["general"]
    model = result.module.model.eval()
    with torch.no_grad():
        now = torch.stack([model(r[None], labels=r[None]).loss for r in rows]).double()
    diffs = now - torch.tensor([baseline[i] for i in range(len(rows))], dtype=torch.float64)
    assert c["forgetting/general"][-1] == pytest.approx(diffs.mean().item(), abs=1e-5)
    se = diffs.std() / len(diffs) ** 0.5
    assert c["forgetting/general_se"][-1] == pytest.approx(se.item(), rel=1e-3)


def test_in_place_trains_exactly_the_layers_expansion_would_copy(lp_cache, tmp_path, monkeypatch):
    cfg = smoke(tmp_path, "method=in_place", "expansion.blocks=3")
    monkeypatch.setenv("LP_CACHE", str(lp_cache))
    result = run(cfg, tmp_path)
    model = result.module.model
    layers = decoder_layers(model)
    assert len(layers) == cfg.model.tiny.num_layers == 8  # no new blocks
    trained_layers = [i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())]
    assert trained_layers == [2, 5, 7]  # the group tops of 8 layers in 3 groups (lp.expansion.plan)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 3 * sum(
        p.numel() for p in layers[0].parameters()
    )  # the trainable count of 3 new blocks
    assert result.module.plan.new_layers == ()


def test_lora_on_new_blocks_trains_only_their_adapters_and_exports_a_plain_model(lp_cache, tmp_path,
                                                                                 monkeypatch):  # fmt: skip
    result, c = trained(tmp_path, lp_cache, monkeypatch, "method=lora", "expansion.blocks=2", "export=true",
                        "optim.lr=3e-3")  # fmt: skip
    module = result.module
    new = module.plan.new_layers
    assert new == (4, 9)
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and any(f".layers.{j}." in n for j in new) for n in trainable)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert loaded.config.num_hidden_layers == 10 and not any(
        "lora" in n for n, _ in loaded.named_parameters()
    )
    ids = torch.arange(40).view(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, module.model.eval()(ids).logits, rtol=1e-5, atol=1e-5)
    assert c["forgetting/kl"][-1] > 0  # through the bypass: the original weights stay as loaded


def test_own_text_is_deterministic_per_seed_cached_and_never_trained_on(tokenizer, tmp_path):  # noqa: F811
    model = tiny_llama(2, vocab_size=len(tokenizer))
    a, b = own_text(model, tokenizer, 3, 16, seed=0), own_text(model, tokenizer, 3, 16, seed=0)
    assert a.shape == (3, 16) and torch.equal(a, b)
    assert not torch.equal(a, own_text(model, tokenizer, 3, 16, seed=1))
    base = {"path": "tiny", "sha256": {"w": "x"}}
    cached = cached_own_text(model, tokenizer, base, 3, 16, 0, str(tmp_path))
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)  # a cached sample is read, not sampled again
    assert torch.equal(cached, a) and torch.equal(
        cached_own_text(model, tokenizer, base, 3, 16, 0, str(tmp_path)), a
    )
    data = MixtureDataModule(tokenizer, {"math": {"kind": "math"}}, {"kind": "math", "seed": 7}, seq_len=16,
                             batch_size=4, eval_tokens=64, num_workers=0, replay=0.5)  # fmt: skip
    data.use_own_text(a)
    data.setup("fit")
    assert data.domains == ["math", "general", "self"] and torch.equal(data.eval_sets["self"], a)
    assert [s.name for s in data.training_sources] == ["math", "replay"]  # own text is no training source
    rows = [r for b in itertools.islice(iter(data.train_dataloader()), 20) for r in b["input_ids"]]
    assert not any(torch.equal(r, s) for r in rows for s in a)


CODE_MATH = {"code": {"kind": "stdlib_code", "weight": 1.5}, "math": {"kind": "math"}}


@pytest.mark.parametrize("replay", [0.2, 0.5])
def test_replay_share_matches_its_setting(tokenizer, replay):  # noqa: F811
    data = MixtureDataModule(tokenizer, CODE_MATH, {"kind": "math", "seed": 7}, seq_len=32, batch_size=8,
                             num_workers=0, replay=replay)  # fmt: skip
    data.setup("fit")
    sources = torch.cat([b["source"] for b in itertools.islice(iter(data.train_dataloader()), 150)])
    share = (sources == 2).float().mean().item()  # the replay source comes after code and math
    assert abs(share - replay) < 0.04, share
    plain = MixtureDataModule(tokenizer, CODE_MATH, {"kind": "math", "seed": 7}, seq_len=32, num_workers=0)
    plain.setup("fit")
    assert plain.domains == data.domains
    for d in data.domains:  # replay changes what trains, never the eval sets
        assert torch.equal(plain.eval_sets[d], data.eval_sets[d])


def test_eval_rows_carry_their_global_index_on_every_rank(tokenizer):  # noqa: F811
    from lp.corpus.text import indexed_rows

    rows = torch.arange(30).view(10, 3)
    seen = {}
    for rank in range(3):
        for ids, index in DataLoader(indexed_rows(rows, rank, 3), batch_size=2):
            for r, i in zip(ids, index, strict=True):
                seen[int(i)] = r
    assert sorted(seen) == list(range(10)) and all(torch.equal(rows[i], r) for i, r in seen.items())
