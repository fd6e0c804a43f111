"""Loading a base (lp.base.models): the model and tokenizer as transformers loads them,
what a config names, and the depth known before loading."""

import json

import pytest
import torch

from lp.base.models import attn_implementation, declared_layers, load_model, load_tokenizer, named_base
from lp.core.errors import LpError
from tests.conftest import tiny_llama
from tests.corpus.test_text import tokenizer  # noqa: F401  (the shared BPE fixture)


def saved(tmp_path, tok=None):
    d = tmp_path / "base"
    tiny_llama(3).save_pretrained(d)
    if tok is not None:
        tok.save_pretrained(d)
    return d


def test_a_saved_model_loads_with_its_weights_in_the_asked_dtype(tmp_path):
    d = saved(tmp_path)
    model = load_model(str(d), "eager", "bfloat16")
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == 3
    reference = tiny_llama(3)
    assert torch.equal(
        model.model.embed_tokens.weight.float(), reference.model.embed_tokens.weight.bfloat16().float()
    )


def test_the_tokenizer_loads_and_needs_an_eos(tokenizer, tmp_path):  # noqa: F811
    d = saved(tmp_path, tokenizer)
    assert load_tokenizer(str(d)).eos_token_id is not None
    (tmp_path / "empty").mkdir()
    with pytest.raises(LpError, match="cannot be loaded"):
        load_tokenizer(str(tmp_path / "empty"))


def test_attention_is_sdpa_without_cuda_and_as_asked_otherwise():
    assert attn_implementation("eager") == "eager"
    if not torch.cuda.is_available():
        assert attn_implementation("auto") == "sdpa"


def test_what_a_model_config_names_and_its_depth(tmp_path):
    d = saved(tmp_path)
    assert named_base({"name_or_path": str(d)}) == str(d)
    assert named_base({"name_or_path": None, "tiny": {"num_layers": 4}}) is None  # the tiny base
    assert (
        declared_layers({"name_or_path": str(d)})
        == json.loads((d / "config.json").read_text())["num_hidden_layers"]
    )
    assert declared_layers({"name_or_path": None, "tiny": {"num_layers": 5}}) == 5
    assert declared_layers({"name_or_path": "org/hub-id"}) is None  # only known once loaded
