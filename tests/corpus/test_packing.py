"""Issue 4's guarantees: shares, determinism, resume, disjoint shards, presets, lp.data."""

import itertools
import json

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torchdata.stateful_dataloader import StatefulDataLoader

from lp.core.errors import LpError
from lp.corpus import build_source
from lp.corpus.packing import PackedMixture, TokenCursor, document_positions
from lp.corpus.text import TrainedStateLoader
from lp.training.module import CausalLMModule
from tests.conftest import ROOT, run_lp, tiny_llama
from tests.corpus.test_text import tokenizer  # noqa: F401  (the shared BPE fixture)


def numbered(tmp_path, name, n, field="text", fmt="doc {i} of {name}: " + "word " * 20):
    f = tmp_path / f"{name}.jsonl"
    f.write_text("\n".join(json.dumps({field: fmt.format(i=i, name=name)}) for i in range(n)))
    return f


def mixture(tokenizer, sources, seq_len=32, seed=0, **share):  # noqa: F811
    return PackedMixture(sources, tokenizer, seq_len, seed, eval_fraction=0.05, **share)


def offline_sources():
    return [
        build_source("code", {"kind": "stdlib_code", "weight": 1.5}),
        build_source("math", {"kind": "math"}),
    ]


def test_token_shares_match_weights_over_200_batches(tokenizer):  # noqa: F811
    loader = StatefulDataLoader(mixture(tokenizer, offline_sources()), batch_size=8)
    rows = torch.cat([b["source"] for b in itertools.islice(iter(loader), 200)])
    share = (rows == 0).float().mean().item()
    assert abs(share - 0.6) < 0.03, share


def batches(loader, n):
    return [b["input_ids"] for b in itertools.islice(iter(loader), n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_stream_continues_exactly(tokenizer, workers):  # noqa: F811
    def loader():
        return StatefulDataLoader(mixture(tokenizer, offline_sources()), batch_size=4, num_workers=workers)

    expected = batches(loader(), 12)
    first = loader()
    it = iter(first)
    seen = [next(it)["input_ids"] for _ in range(5)]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    rest = batches(resumed, 7)
    assert all(torch.equal(a, b) for a, b in zip(seen + rest, expected, strict=True))


def test_resume_inside_a_lightning_run(tokenizer, tmp_path):  # noqa: F811
    """A checkpoint taken mid-stream resumes on the very next batch."""

    class Record(L.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen.append(batch["input_ids"].clone())

    def fit(steps, ckpt=None):
        rec = Record()
        data = TrainedStateLoader(mixture(tokenizer, offline_sources()), batch_size=2, num_workers=1)
        trainer = L.Trainer(
            max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, callbacks=[rec], accelerator="cpu",
        )  # fmt: skip
        module = CausalLMModule(tiny_llama(2, vocab_size=300), None)
        trainer.fit(module, train_dataloaders=data, ckpt_path=ckpt)
        return trainer, rec.seen

    _, whole = fit(6)
    trainer, head = fit(3)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    _, tail = fit(6, tmp_path / "mid.ckpt")
    assert len(tail) == 3
    assert all(torch.equal(a, b) for a, b in zip(head + tail, whole, strict=True))


def test_shards_read_disjoint_documents(tokenizer, tmp_path):  # noqa: F811
    src = build_source("c", {"kind": "files", "files": str(numbered(tmp_path, "c", 200))})
    seen = []
    for shard in range(3):
        cursor = TokenCursor(src, tokenizer, seed=0, eval_fraction=0.0, shard=shard, nshards=3, batch=4)
        cursor.take(2000)
        seen.append({raw for raw in range(shard, cursor.next_raw, 3)})
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_ranks_share_each_global_batch_in_blocks(tokenizer):  # noqa: F811
    """Ranks keep consecutive blocks of the one-process stream: their batches, side
    by side, are the one-process batches of world x block rows, and every rank's
    recorded position is the one-process position after those rows."""
    single = mixture(tokenizer, offline_sources())
    one = list(itertools.islice(iter(single), 12))
    shares = [mixture(tokenizer, offline_sources(), rank=r, world=3, block=2) for r in range(3)]
    ranks = [list(itertools.islice(iter(ds), 4)) for ds in shares]
    for step in range(2):
        side_by_side = [row for r in range(3) for row in ranks[r][2 * step : 2 * step + 2]]
        same = [
            torch.equal(a["input_ids"], b["input_ids"])
            for a, b in zip(side_by_side, one[6 * step : 6 * step + 6], strict=True)
        ]
        assert same == [True] * 6
    assert all(ds.state_dict() == single.state_dict() for ds in shares)


def test_boundary_aware_position_ids():
    ids = torch.tensor([5, 6, 2, 7, 8, 9, 2, 2, 4])
    assert document_positions(ids, eos=2).tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 0]


def data_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("train", overrides=overrides).data


def stand_in_hub_dataset(tmp_path):
    """Local directories with the hub datasets' layout and schema: The Stack's `content`
    under data/python, Proof-Pile-2's named configs with `text`."""
    stack = tmp_path / "the-stack-dedup"
    (stack / "data/python").mkdir(parents=True)
    numbered(stack / "data/python", "train", 300, field="content", fmt="def f{i}():\n    return {i}\n")
    pile = tmp_path / "proof-pile-2"
    configs = ["algebraic-stack", "open-web-math", "arxiv"]
    readme = "---\nconfigs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train/*.jsonl\n" for c in configs
    )
    (pile / "README.md").parent.mkdir(parents=True)
    (pile / "README.md").write_text(readme + "---\n")
    for c in configs:
        (pile / c / "train").mkdir(parents=True)
        numbered(pile / c / "train", "part", 300, fmt=f"{c} theorem {{i}}: " + "x + y = y + x. " * 5)
    return stack, pile


def test_paper_preset_reads_hub_schema(tokenizer, tmp_path):  # noqa: F811
    stack, pile = stand_in_hub_dataset(tmp_path)
    cfg = data_cfg(
        ["data=llama_pro_paper", f"data.sources.stack_python.path={stack}"]
        + [f"data.sources.{s}.path={pile}" for s in ("algebraic_stack", "open_web_math", "arxiv")]
        + ["data.seq_len=32", "data.eval_tokens=64", "data.eval_fraction=0.1", "data.num_workers=0"]
    )
    dm = instantiate(cfg, tokenizer=tokenizer, _convert_="all")
    assert [s.weight for s in dm.sources] == [1.5, 1.0, 1.0, 1.0]
    dm.setup("fit")
    assert dm.domains == ["code", "math", "general"]
    rows = list(itertools.islice(iter(dm.train_dataloader()), 40))
    text = tokenizer.decode(torch.cat([b["input_ids"].flatten() for b in rows]))
    assert "def f" in text and "theorem" in text


def test_hub_dataset_while_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LpError, match="'stack': the hub dataset 'bigcode/the-stack-dedup' needs network"):
        build_source("stack", {"kind": "hf", "path": "bigcode/the-stack-dedup"})


def test_empty_local_source_is_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(LpError, match="'code'"):
        build_source("code", {"kind": "files", "files": str(tmp_path / "empty.jsonl")})


def test_lp_data_inspect_on_local_preset(lp_cache, tmp_path):
    code, math = numbered(tmp_path, "code", 500), numbered(tmp_path, "math", 500)
    report = tmp_path / "out/report.json"
    res = run_lp(
        ["lp.data", "debug=smoke", "data=local", f"data.sources.code.files={code}",
         f"data.sources.math.files={math}", "inspect.batches=30", f"inspect.json={report}"],
        lp_cache, tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(report.read_text())
    assert set(out) == {"sources", "eval", "tokens_per_s"} and out["tokens_per_s"] > 0
    assert set(out["sources"]) == {"code", "math"} and set(out["eval"]) == {"code", "math", "general"}
    code_s = out["sources"]["code"]
    assert code_s["domain"] == "code" and code_s["weight"] == 1.5 and code_s["tokens"] > 0
    assert abs(code_s["share"] + out["sources"]["math"]["share"] - 1) < 1e-9
    assert "share" in res.stdout and "sample from code" in res.stdout
    assert not (tmp_path / "outputs").exists()  # inspection leaves no run directory


def test_lp_data_missing_files_is_one_line(lp_cache, tmp_path):
    res = run_lp(["lp.data", "debug=smoke", "data=local"], lp_cache, tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith("error: Missing mandatory value: data.sources.code.files")
    )
