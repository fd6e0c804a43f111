"""Recognising checkpoint directories (lp.base.checkpoint_dirs): one line for what is no
causal-LM checkpoint, lp's own directories known by their plan file, plans read back."""

import json

import pytest

from lp.base.checkpoint_dirs import check_checkpoint, read_expansion, written_by_lp
from lp.core.errors import LpError
from lp.expansion import make_plan
from tests.conftest import tiny_llama
from tests.corpus.test_text import tokenizer  # noqa: F401  (the shared BPE fixture)


def test_a_real_checkpoint_passes_and_its_damage_is_named(tokenizer, tmp_path):  # noqa: F811
    d = tmp_path / "ckpt"
    tiny_llama(2).save_pretrained(d)
    check_checkpoint(str(d))
    with pytest.raises(LpError, match="has weights but no tokenizer"):
        check_checkpoint(str(d), tokenizer=True)
    (d / "tokenizer.json").write_text("{}")  # there, but no tokenizer transformers can load
    with pytest.raises(LpError, match="has weights but no tokenizer that loads"):
        check_checkpoint(str(d), tokenizer=True)
    tokenizer.save_pretrained(d)
    check_checkpoint(str(d), tokenizer=True)
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(LpError, match="model.safetensors is empty"):
        check_checkpoint(str(d))


@pytest.mark.parametrize(
    "files, message",
    [({}, "has no config.json"), ({"config.json": "{x"}, "not valid JSON"),
     ({"config.json": json.dumps({"model_type": "vit"})}, "not a causal language model"),
     ({"config.json": json.dumps({"model_type": "llama"})}, "no weights")],
)  # fmt: skip
def test_what_is_no_checkpoint_is_refused_in_one_line(files, message, tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    with pytest.raises(LpError, match=message):
        check_checkpoint(str(d), label="SRC")


def test_lp_knows_its_own_directories_by_their_plan(tmp_path):
    plan = make_plan(4, 2)
    (tmp_path / "lp_expansion.json").write_text(plan.to_json(base_model="b"))
    assert written_by_lp(tmp_path) and read_expansion(str(tmp_path)) == plan
    assert not written_by_lp(tmp_path / "other") and read_expansion(str(tmp_path / "other")) is None
