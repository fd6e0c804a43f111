"""The instruction stage (lp.training.stages): stage=sft end to end after stage one, what
each method trains there, the export as a chat model, overlong counts across ranks."""

import json

import pytest
import torch

from lp.corpus.chat.format import DEFAULT_TEMPLATE


def tensors(export):
    from safetensors.torch import load_file

    return load_file(export / "model.safetensors")


@pytest.fixture(scope="module")
def two_stages(lp_cache, tmp_path_factory):
    """The README's two commands (stage one, then stage=sft on its export), in this process
    through the real CLI, shrunk by debug=smoke."""
    from tests.conftest import hydra_cli

    out = tmp_path_factory.mktemp("two_stages")
    mp = pytest.MonkeyPatch()
    mp.setenv("LP_CACHE", str(lp_cache))
    try:
        # two steps: the first is warmup at lr 0; after the second the new blocks' output
        # projections are no longer zero, so in stage two gradients reach every weight
        one = [
            "debug=smoke",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            f"hydra.run.dir={out}/one",
        ]
        assert hydra_cli("lp.train", one, mp) == 0
        two = ["stage=sft", "model=hf", f"model.name_or_path={out}/one/export", "debug=smoke",
               "trainer.max_steps=2", "trainer.val_check_interval=2", "stage.samples.max_new_tokens=4",
               f"hydra.run.dir={out}/two"]  # fmt: skip
        assert hydra_cli("lp.train", two, mp) == 0
    finally:
        mp.undo()
    return out / "one", out / "two"


def test_sft_trains_every_block_and_records_the_stage(two_stages):
    one, two = two_stages
    before, after = tensors(one / "export"), tensors(two / "export")
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # full_finetune: every tensor trains
    meta1 = json.loads((one / "export/lp_expansion.json").read_text())
    meta2 = json.loads((two / "export/lp_expansion.json").read_text())
    assert meta2["layer_map"] == meta1["layer_map"] and meta2["new_layers"] == meta1["new_layers"]
    assert meta2["base_model"] == meta1["base_model"]
    assert [s["stage"] for s in meta2["stages"]] == ["pretrain", "sft"]
    assert meta2["stages"][1]["steps"] == 2 and meta2["stages"][1]["method"] == "full_finetune"
    assert set(meta2["stages"][1]["data"]) == {"math", "code", "general"}


def test_sft_logs_chat_losses_and_generation_samples(two_stages):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(two_stages[1] / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    for tag in ("val/chat_math/loss", "val/chat_code/loss", "val/chat_general/loss", "val/general/loss",
                "forgetting/general", "data/overlong_truncated", "train/loss"):  # fmt: skip
        assert tag in acc.Tags()["scalars"], tag
    steps = [s.step for s in acc.Scalars("val/chat_math/loss")]
    assert len(steps) == 2 and steps[0] == 0 < steps[1]  # before training and after
    for i in range(3):
        texts = acc.Tensors(f"samples/{i}/text_summary")
        assert [e.step for e in texts] == [0, 2]
        assert texts[0].tensor_proto.string_val[0].decode().startswith("**user:**")


def test_the_export_is_a_chat_model(two_stages):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = two_stages[1] / "export"
    tok = AutoTokenizer.from_pretrained(export)
    assert tok.chat_template == DEFAULT_TEMPLATE  # the tiny base has none: the default was saved
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    question = [{"role": "user", "content": "Solve for x: 2x = 6."}]
    ids = tok.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"]
    assert tok.decode(ids[0]).endswith("<|assistant|>\n")
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                         min_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)  # fmt: skip
    assert out.shape[1] == ids.shape[1] + 5 and torch.equal(out[0, : ids.shape[1]], ids[0])


@pytest.mark.parametrize("method", ["block_expansion", "lora"])
def test_each_sft_method_trains_what_it_says(two_stages, method, lp_cache, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from lp.train import run
    from tests.conftest import ROOT

    one = two_stages[0] / "export"
    monkeypatch.setenv("LP_CACHE", str(lp_cache))
    overrides = ["stage=sft", "model=hf", f"model.name_or_path={one}", "debug=smoke", f"method={method}",
                 "trainer.max_steps=2", "trainer.val_check_interval=2", "data.eval_tokens=64",
                 "stage.samples.prompts=[]", f"logger.save_dir={tmp_path}"]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=overrides)
    run(cfg, tmp_path / "run")
    before, after = tensors(one), tensors(tmp_path / "run/export")
    assert before.keys() == after.keys()  # lora: merged into the base's own weights
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    new = json.loads((one / "lp_expansion.json").read_text())["new_layers"]
    if method == "block_expansion":  # only stage one's new blocks, every one of them
        assert changed and {int(k.split(".")[2]) for k in changed} == set(new)
    else:  # lora: the adapted projections of every block, nothing else
        assert changed == {k for k in before if k.endswith("proj.weight")}


def test_overlong_counts_are_summed_over_ranks_and_kept_across_a_resume():
    from types import SimpleNamespace

    from lp.training.stages import ChatStats

    world = 2  # a stand-in strategy whose reduce sums two ranks holding the same counts
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda t, reduce_op: t * world))
    logged = []
    module = SimpleNamespace(log=lambda name, value, **kw: logged.append((name, value)))
    batch = {"truncated": torch.tensor([1, 0]), "dropped": torch.tensor([0, 1])}
    first = ChatStats()
    first.on_train_batch_end(trainer, module, None, batch, 0)
    resumed = ChatStats()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as a checkpoint holds it
    resumed.on_train_batch_end(trainer, module, None, batch, 1)
    assert resumed.totals == {"truncated": 4, "dropped": 4}
    assert logged[-2:] == [("data/overlong_truncated", 4.0), ("data/overlong_dropped", 4.0)]
