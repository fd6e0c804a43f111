"""python -m lp.expand: streamed checkpoint expansion, checked against the in-memory path."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lp.expand import main as expand_main
from lp.expand import parse_size
from lp.expansion import ARCHS, ArchFacts, arch_facts, expand_model, make_plan
from lp.expansion.streamed import source_tensors
from tests.expansion.test_families import FAMILIES, IDS, LAYERS, family_model


def save(model, path, **kw):
    model.save_pretrained(path, **kw)
    (path / "tokenizer_config.json").write_text('{"model_max_length": 128}')
    return path


def load_all(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def expand(src, dst, *args):
    return expand_main([str(src), str(dst), *args])


@pytest.mark.parametrize("model_type", FAMILIES)
def test_streamed_equals_in_memory_for_every_family(model_type, tmp_path):
    base = family_model(model_type)
    src = save(base, tmp_path / "src")
    assert expand(src, tmp_path / "dst", "--blocks", "2", "--shard-size", "30KB") == 0
    # checkpoints may name tensors differently from memory (Mixtral's per-expert w1/w2/w3),
    # so compare what transformers loads with what the in-memory path builds
    reference = expand_model(family_model(model_type), make_plan(LAYERS, 2)).state_dict()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dst", attn_implementation="eager").eval()
    assert loaded.state_dict().keys() == reference.keys()
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, reference[name]), name
    names = list(source_tensors(src))
    facts = arch_facts(base.config)
    per_layer = sum(n.startswith(f"{facts.saved_layers or facts.layers}.0.") for n in names)
    assert per_layer > 0
    assert len(load_all(tmp_path / "dst")) == len(names) + 2 * per_layer  # two more layers' worth
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, base(IDS).logits)


def test_output_layout_config_and_side_files(tmp_path, capsys):
    src = save(family_model("qwen2"), tmp_path / "src")
    assert expand(src, tmp_path / "dst", "--blocks", "2", "--position", "0,5", "--shard-size", "40KB") == 0
    dst = tmp_path / "dst"
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((dst / s).is_file() for s in shards)
    config = json.loads((dst / "config.json").read_text())
    assert config["num_hidden_layers"] == 7 and len(config["layer_types"]) == 7
    meta = json.loads((dst / "lp_expansion.json").read_text())
    assert meta["layer_map"] == [4, 0, 1, 2, 3, 4, 4] and meta["new_layers"] == [0, 6]
    assert meta["base_model"] == str(src) and meta["position"] == [0, 5] and meta["base_layers"] == 5
    assert (dst / "tokenizer_config.json").read_text() == '{"model_max_length": 128}'
    assert (dst / "generation_config.json").is_file()
    assert f"model.name_or_path={dst}" in capsys.readouterr().out


def test_a_broken_expansion_is_named_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    src = save(family_model("llama"), tmp_path / "src")
    # a wrong override that forgets down_proj: the first new block (after base layer 2,
    # expanded layer 3) writes into the residual stream
    monkeypatch.setitem(ARCHS, "llama", ArchFacts(residual_out=("self_attn.o_proj",)))
    capsys.readouterr()
    assert expand(src, tmp_path / "dst", "--blocks", "2") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the expanded model is not an identity") and "\n" not in err
    assert "the output of base layer 3 (expanded layer 4) differs; new blocks below it: [3]" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert expand(src, tmp_path / "dst", "--blocks", "2", "--no-verify") == 0
    assert (tmp_path / "dst" / "lp_expansion.json").is_file()


def test_dtype_is_preserved_or_converted_on_request(tmp_path):
    src = save(family_model("llama").to(torch.bfloat16), tmp_path / "src")
    expand(src, tmp_path / "keep", "--blocks", "1")
    assert {t.dtype for t in load_all(tmp_path / "keep").values()} == {torch.bfloat16}
    expand(src, tmp_path / "f32", "--blocks", "1", "--dtype", "float32")
    converted = load_all(tmp_path / "f32")
    assert {t.dtype for t in converted.values()} == {torch.float32}
    original = load_all(src)
    assert torch.equal(converted["model.embed_tokens.weight"], original["model.embed_tokens.weight"].float())


def test_tied_embeddings_stay_tied(tmp_path):
    base = family_model("gemma")
    assert base.config.tie_word_embeddings
    src = save(base, tmp_path / "src")
    expand(src, tmp_path / "dst", "--blocks", "2")
    assert "lm_head.weight" not in load_all(tmp_path / "dst")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dst", attn_implementation="eager")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_bin_sources_are_read(tmp_path):
    base = family_model("mistral")
    src = tmp_path / "src"
    base.config.save_pretrained(src)
    torch.save(base.state_dict(), src / "pytorch_model.bin")
    assert expand(src, tmp_path / "dst", "--blocks", "2") == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dst", attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, base(IDS).logits)


def test_existing_destination_needs_force_and_interruption_leaves_nothing(tmp_path, monkeypatch, capsys):
    src = save(family_model("llama"), tmp_path / "src")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert expand(src, dst, "--blocks", "1") == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (dst / "keep.txt").read_text() == "mine"

    import lp.expansion.streamed as ck

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "_copy_side_files", boom)
    with pytest.raises(KeyboardInterrupt):
        expand(src, tmp_path / "new", "--blocks", "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no DST, no temp dir
    monkeypatch.undo()
    assert expand(src, dst, "--blocks", "1", "--force") == 2  # --force never replaces what lp did not write
    assert "holds files lp did not write" in capsys.readouterr().err
    assert (dst / "keep.txt").read_text() == "mine"
    (dst / "keep.txt").unlink()  # empty now: --force may fill it, and then replace its own expansion
    assert expand(src, dst, "--blocks", "1", "--force") == 0
    assert expand(src, dst, "--blocks", "2", "--force") == 0
    assert len(json.loads((dst / "lp_expansion.json").read_text())["new_layers"]) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--blocks", "-1"], "--blocks -1 is too small"),
        (["--blocks", "2", "--position", "middle"], "--position 'middle' is unknown"),
        (["--blocks", "2", "--position", "0,9"], "out of range"),
        (["--blocks", "2", "--shard-size", "lots"], "is not a size"),
    ],
)
def test_bad_input(args, message, tmp_path, capsys):
    src = save(family_model("llama"), tmp_path / "src")
    capsys.readouterr()
    assert expand(src, tmp_path / "dst", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "dst").exists()


def test_bad_sources(tmp_path, capsys):
    assert expand(tmp_path / "missing", tmp_path / "dst", "--blocks", "1") == 2
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit/config.json").write_text('{"model_type": "vit"}')
    assert expand(tmp_path / "vit", tmp_path / "dst", "--blocks", "1") == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "not a causal language model" in err
    assert not (tmp_path / "dst").exists()


def test_unknown_choice_is_argparse_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        expand(tmp_path, tmp_path / "dst", "--blocks", "1", "--init", "noise")
    assert e.value.code == 2 and "invalid choice: 'noise'" in capsys.readouterr().err


def test_sizes():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("1GiB") == 2**30
