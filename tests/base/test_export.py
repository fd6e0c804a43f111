"""The export (lp.base.export): an ordinary Hugging Face checkpoint with the plan and the
stages, written whole or not at all; an older export goes only once the new one is done."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from lp.base.export import export_checkpoint
from lp.expansion import expand_model, make_plan
from lp.training.module import CausalLMModule
from tests.conftest import tiny_llama
from tests.corpus.test_text import tokenizer  # noqa: F401  (the shared BPE fixture)


def module():
    model, plan = tiny_llama(2), make_plan(2, 1)
    expand_model(model, plan)
    return CausalLMModule(model, plan), plan


def test_the_export_loads_as_the_model_it_was(tokenizer, tmp_path):  # noqa: F811
    m, plan = module()
    out = export_checkpoint(m, tokenizer, plan, "the-base", tmp_path / "export", record={"stages": [1]})
    meta = json.loads((out / "lp_expansion.json").read_text())
    assert meta["base_model"] == "the-base" and meta["new_layers"] == [2] and meta["stages"] == [1]
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.arange(12).view(2, 6)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, m.model.eval()(ids).logits)


def test_a_failed_export_leaves_the_older_one_whole(tokenizer, tmp_path, monkeypatch):  # noqa: F811
    m, plan = module()
    out = export_checkpoint(m, tokenizer, plan, "b", tmp_path / "export")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", broken)
    with pytest.raises(RuntimeError):
        export_checkpoint(m, tokenizer, plan, "b", tmp_path / "export")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary left
