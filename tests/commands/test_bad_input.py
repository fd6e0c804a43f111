"""Bad input: one ``error:`` line naming the setting or file, exit 2, no traceback,
nothing written, for every entry point (lp.train, lp.expand, lp.data, lp.report).

The table runs the real entry points in this process (as ``python -m`` would:
``runpy``, ``sys.argv``, Hydra, ``run_cli``), so 40 cases cost seconds, not a Python start
each; a few cases also run as real subprocesses."""

import contextlib
import io
import json

import pytest

from tests.conftest import ROOT, check_one_line, hydra_cli, run_lp


def local_data(tmp, rows: str | bytes, suffix=".jsonl") -> list[str]:
    f = tmp / f"code{suffix}"
    f.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    good = tmp / "math.jsonl"
    good.write_text(json.dumps({"text": "1 + 1 = 2"}) + "\n")
    return ["data=local", f"data.sources.code.files={f}", f"data.sources.math.files={good}"]


def checkpoint(tmp, config: str | None, weights: bool = False) -> list[str]:
    d = tmp / "ckpt"
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(config)
    if weights:
        (d / "model.safetensors").write_bytes(b"")
    return ["model=hf", f"model.name_or_path={d}"]


def resume_file(tmp, content) -> list[str]:
    f = tmp / "step-6.ckpt"
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        import torch

        torch.save(content, f)
    return [f"resume={f}"]


LLAMA = json.dumps({"model_type": "llama", "num_hidden_layers": 2})


def chat_data(tmp, rows: str) -> list[str]:
    f = tmp / "chat.jsonl"
    f.write_text(rows)
    return ["stage=sft", "data=chat_local", f"data.sources.chat.files={f}"]


GOOD_CHAT = json.dumps(
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
)


def untemplated_checkpoint(tmp) -> list[str]:
    """A real checkpoint whose tokenizer has no chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import tiny_llama

    t = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "q": 2, "a": 3}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", unk_token="<unk>")
    d = tmp / "untemplated"
    with contextlib.redirect_stderr(io.StringIO()):  # the save's progress bar is not the run's output
        tiny_llama(2, vocab_size=len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return [
        "model=hf",
        f"model.name_or_path={d}",
        *chat_data(tmp, GOOD_CHAT + "\n"),
        "data.default_template=false",
    ]


# (overrides, or a function of a temporary directory giving them; what the error line must name)
TRAIN = [
    (["data.seq_len=0"], "data.seq_len=0"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.eval_tokens=-5"], "data.eval_tokens=-5"),
    (["data.eval_fraction=1.5"], "data.eval_fraction=1.5"),
    (["data.num_workers=-1"], "data.num_workers=-1"),
    (["data.train_seed=-2"], "data.train_seed=-2"),
    (["optim.lr=-1"], "optim.lr=-1"),
    (["optim.warmup_ratio=2"], "optim.warmup_ratio=2"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1"),
    (["optim.betas=[0.9,1.5]"], "optim.betas=[0.9, 1.5]"),
    (["trainer.precision=bf17"], "trainer.precision='bf17'"),
    (["trainer.max_steps=0"], "trainer.max_steps=0"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval=0"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1"),
    (["callbacks.throughput.window=0"], "callbacks.throughput.window=0"),
    (["callbacks.throughput.peak_tflops=-3"], "callbacks.throughput.peak_tflops=-3"),
    (["speed.compile=yes"], "speed.compile='yes'"),
    (["speed.frozen_dtype=int8"], "speed.frozen_dtype='int8'"),
    (["model.dtype=float8"], "model.dtype='float8'"),
    (["model.attn=flash"], "model.attn='flash'"),
    (["seed=-1"], "seed=-1"),
    (["callbacks.benchmark.enabled=1"], "callbacks.benchmark.enabled=1"),
    (["eval.code_timeout_s=0"], "eval.code_timeout_s=0"),
    (["method=lora", "method.r=0"], "method.r=0"),
    (["expansion.blocks=-1"], "expansion.blocks=-1"),
    (["expansion.blocks=2.5"], "not an integer"),
    (["expansion.position=[0,1,99]", "expansion.blocks=3"], "out of range"),
    (["expansion.position=middle"], "expansion.position='middle' is unknown"),
    (["expansion.init=noise"], "expansion.init='noise' is unknown"),
    (["method=expand_full", "callbacks.freeze.trainable=new_blocks"], "callbacks.freeze.trainable"),
    (["+callbacks.freeze.trainable=new_blocks"], "callbacks.freeze.trainable is not a setting"),
    (["model=nope"], "model/nope"),
    (["strategy=fsdp"], "strategy=fsdp needs CUDA GPUs"),  # this machine has none (CI neither)
    (["strategy=deepspeed_zero3"], "strategy=deepspeed_zero3 needs"),  # CUDA, or DeepSpeed where CUDA is
    (["trainer.devices=2"], "strategy=single runs on one device"),
    (["method=lora", "strategy=fsdp"], "method=lora does not combine with strategy=fsdp"),
    (["strategy=fsdp", "strategy.sharding_strategy=HALF"], "strategy.sharding_strategy='HALF'"),
    (["strategy=ddp", "strategy.find_unused_parameters=maybe"], "strategy.find_unused_parameters='maybe'"),
    (["strategy=deepspeed_zero2", "strategy.stage=4"], "strategy.stage=4"),
    (["strategy=nope"], "strategy/nope"),
    (["+trainer.strategy=ddp"], "trainer.strategy is not a setting"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0"),
    (["trainer.use_distributed_sampler=true"], "trainer.use_distributed_sampler=true"),
    # raised inside Hydra's instantiate: the line is lp's own, not Hydra's wrapper
    (["+data.sources.extra={kind: math, weight: 0}"], "error: data source 'extra': weight=0"),
    (lambda t: local_data(t, ""), "error: data source 'code': "),  # ... code.jsonl is empty
    (lambda t: local_data(t, '{"content": "x = 1"}\n'), "error: data source 'code': rows have no text"),
    (lambda t: local_data(t, b"PAR1 not really parquet", ".parquet"), "error: data source 'code': cannot"),
    (lambda t: checkpoint(t, LLAMA), "has a config.json but no weights"),
    (lambda t: checkpoint(t, "{not json", weights=True), "config.json is not valid JSON"),
    (lambda t: checkpoint(t, None), "has no config.json"),
    (lambda t: checkpoint(t, json.dumps({"model_type": "vit"}), weights=True), "not a causal language model"),
    (["model=hf", "model.name_or_path=/no/such/checkpoint"], "/no/such/checkpoint does not exist"),
    (["callbacks.checkpoint.every_n_steps=0"], "callbacks.checkpoint.every_n_steps=0"),
    (["callbacks.checkpoint.keep=0"], "callbacks.checkpoint.keep=0"),
    (["resume=5"], "resume=5 is not allowed"),
    (["resume=/no/such/step-6.ckpt"], "resume=/no/such/step-6.ckpt is not a file"),
    (lambda t: resume_file(t, b"PK not really a checkpoint"), "cannot be read as a checkpoint"),
    (lambda t: resume_file(t, {"state_dict": {}}), "is not a checkpoint of lp.train"),
    # the instruction stage (stage=sft): chat rows named by file and row, methods, settings
    (lambda t: chat_data(t, '{"text": "hi"}\n'), "chat.jsonl row 1: the row has neither 'messages' nor"),
    (
        lambda t: chat_data(t, GOOD_CHAT + '\n{"messages": [{"role": "robot", "content": "x"}]}\n'),
        "chat.jsonl row 2: unknown role 'robot'",
    ),
    (
        lambda t: chat_data(t, '{"conversations": [{"from": "human", "value": "q"}]}\n'),
        "chat.jsonl row 1: the conversation has no assistant turn",
    ),
    (lambda t: chat_data(t, ""), "chat.jsonl is empty"),
    (untemplated_checkpoint, "has no chat template and data.default_template=false"),
    (["stage=sft", "method=moe"], "method.name='moe' is not allowed with stage=sft"),
    (["stage=sft", "method=block_expansion"], "has none; use method=full_finetune"),
    (["stage=sft", "data.overlong=cut"], "data.overlong='cut' is not allowed; allowed: truncate, drop"),
    (["stage=sft", "data.packing=2"], "data.packing=2"),
    (["stage=sft", "stage.samples.max_new_tokens=0"], "stage.samples.max_new_tokens=0"),
    (["stage=sft", "stage.samples.prompts=null"], "stage.samples.prompts=None is not allowed"),
]


@pytest.mark.parametrize("overrides, message", TRAIN)
def test_lp_train_refuses_bad_input_in_one_line(overrides, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LP_CACHE", str(tmp_path / "cache"))  # nothing may be built for a refused run
    args = overrides(tmp_path) if callable(overrides) else overrides
    # model=tiny unless a case names its model: the refusal comes before any base is built
    model = [] if any(a.startswith("model=") for a in args) else ["model=tiny"]
    code = hydra_cli("lp.train", [*model, *args, f"hydra.run.dir={tmp_path}/run"], monkeypatch)
    check_one_line(code, capsys.readouterr().err, message)
    assert not (tmp_path / "run").exists(), sorted(p.name for p in (tmp_path / "run").rglob("*"))
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [(["inspect.batches=0"], "inspect.batches=0"), (["data.batch_size=-2"], "data.batch_size=-2")],
)
def test_lp_data_refuses_bad_input_in_one_line(overrides, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "inspect.json"
    code = hydra_cli("lp.data", [*overrides, f"inspect.json={out}"], monkeypatch)
    check_one_line(code, capsys.readouterr().err, message)
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_lp_data_never_writes_its_json_over_a_file_the_mixture_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LP_CACHE", str(tmp_path / "cache"))
    args = local_data(tmp_path, json.dumps({"text": "def f(): pass"}) + "\n")
    math = tmp_path / "math.jsonl"
    before = math.read_bytes()
    code = hydra_cli("lp.data", [*args, f"inspect.json={math}"], monkeypatch)
    check_one_line(code, capsys.readouterr().err, "is the input")
    assert math.read_bytes() == before and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [(["device=foo"], "device='foo'"), (["model.dtype=float8"], "model.dtype='float8'")],
)
def test_lp_eval_refuses_bad_input_in_one_line(overrides, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LP_CACHE", str(tmp_path / "cache"))
    code = hydra_cli(
        "lp.eval", [*overrides, f"hydra.run.dir={tmp_path}/run", f"out={tmp_path}/out"], monkeypatch
    )
    check_one_line(code, capsys.readouterr().err, message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def expand_src(tmp):
    from tests.expansion.test_streamed import family_model, save

    return save(family_model("llama"), tmp / "src")


EXPAND = [
    (lambda t: [expand_src(t), "--blocks", "-1"], "--blocks -1"),  # the flag as typed (issue 21)
    (lambda t: [expand_src(t), "--blocks", "2", "--shard-size", "5XB"], "--shard-size '5XB'"),
    (lambda t: [expand_src(t), "--blocks", "2", "--position", "1,x"], "--position '1,x'"),
    (lambda t: [t / "missing", "--blocks", "1"], "missing does not exist"),
    (lambda t: [checkpoint(t, LLAMA)[1].split("=", 1)[1], "--blocks", "1"], "no weights"),
    (lambda t: [checkpoint(t, "[1,", weights=True)[1].split("=", 1)[1], "--blocks", "1"], "not valid JSON"),
]


@pytest.mark.parametrize("make, message", EXPAND)
def test_lp_expand_refuses_bad_input_in_one_line(make, message, tmp_path, capsys):
    from lp.expand import main

    src, *rest = make(tmp_path)
    capsys.readouterr()
    code = main([str(src), str(tmp_path / "dst"), *rest])
    check_one_line(code, capsys.readouterr().err, message)
    assert not (tmp_path / "dst").exists()


def test_lp_expand_refuses_an_existing_destination(tmp_path, capsys):
    from lp.expand import main

    src, dst = expand_src(tmp_path), tmp_path / "dst"
    dst.mkdir()
    (dst / "mine.txt").write_text("keep")
    capsys.readouterr()
    check_one_line(main([str(src), str(dst), "--blocks", "1"]), capsys.readouterr().err, "--force")
    assert [p.name for p in dst.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: [str(t / "nowhere")], "nowhere is not a directory"),
        (lambda t: [str(t)], "no finished run"),
        (lambda t: [str(t), "--out", str(t / "file.md")], "--out"),
    ],
)
def test_lp_report_refuses_bad_input_in_one_line(make, message, tmp_path, capsys):
    from lp.report import main

    (tmp_path / "file.md").write_text("mine")
    args = make(tmp_path)
    check_one_line(main(args), capsys.readouterr().err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.md"]
    assert (tmp_path / "file.md").read_text() == "mine"


@pytest.mark.parametrize(
    "overrides, message",
    [(["data.seq_len=0"], "data.seq_len=0"), (["model=nope"], "Could not find 'model/nope'")],
)
def test_a_real_process_gets_one_line_and_exit_2(overrides, message, lp_cache, tmp_path):
    res = run_lp(["lp.train", *overrides, f"hydra.run.dir={tmp_path}/run"], lp_cache, ROOT)
    check_one_line(res.returncode, res.stderr, message)
    assert not (tmp_path / "run").exists()
