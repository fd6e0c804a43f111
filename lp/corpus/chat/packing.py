"""Conversations into training rows: packed (position ids restart) or padded, one per row.

Packing: whole conversations are laid one after another in a ``seq_len`` row,
position ids restarting at 0 for each. Without an attention mask and without a
KV cache, transformers (sdpa and eager) reads restarting position ids as packed
sequences and builds a block-diagonal causal mask from them; flash-attention
takes them as varlen sequence boundaries. No token attends across conversations,
and the first token of each carries no label, so nothing is learned across a
boundary either (``tests/corpus/test_chat.py`` checks packed losses equal each
conversation's alone). The row's unused tail is padding (label -100) in a
segment of its own.

Padding: one conversation per row, right-padded (label -100): causal attention
never looks right, so no mask is needed.

A conversation longer than ``seq_len`` is truncated (``overlong=truncate``; dropped
after all if no assistant token survives) or dropped (``overlong=drop``); each row
carries how many of its conversations were truncated and how many were dropped
before it, which ``lp.training.stages.ChatStats`` sums and logs.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator

import torch

from lp.core.errors import LpError
from lp.corpus.chat.format import IGNORE, Rendered, render
from lp.corpus.chat.sources import ChatSource, is_eval_chat
from lp.corpus.packing import ResumableStream, _tuplify, shard_index

OVERLONG = ("truncate", "drop")
MAX_EVAL_SCAN = 200_000  # conversations looked at to fill one eval set


def fit(r: Rendered, seq_len: int, overlong: str) -> tuple[Rendered | None, str | None]:
    """The conversation as it goes into a row, or None; and what happened to it."""
    if len(r.input_ids) <= seq_len:
        return r, None
    if overlong == "drop":
        return None, "dropped"
    cut = Rendered(r.input_ids[:seq_len], r.labels[:seq_len])
    if all(x == IGNORE for x in cut.labels[1:]):
        return None, "dropped"
    return cut, "truncated"


def pad_row(pieces: list[Rendered], seq_len: int, pad_id: int, positions: bool) -> dict:
    """One row from whole conversations: ids, labels (first token of each ignored) and
    position ids restarting per conversation, right-padded to ``seq_len``."""
    ids, labels, pos = [], [], []
    for r in pieces:
        ids += r.input_ids
        labels += [IGNORE, *r.labels[1:]]
        pos += range(len(r.input_ids))
    n = seq_len - len(ids)
    row = {
        "input_ids": torch.tensor(ids + [pad_id] * n, dtype=torch.long),
        "labels": torch.tensor(labels + [IGNORE] * n, dtype=torch.long),
    }
    if positions:
        row["position_ids"] = torch.tensor(pos + list(range(n)), dtype=torch.long)
    return row


class ChatCursor:
    """One source's training conversations for one shard (rank x worker): every
    ``nshards``-th conversation of the stream, held-out ones skipped. Its state is
    the stream index of the next conversation."""

    def __init__(self, source: ChatSource, seed: int, eval_fraction: float, shard: int, nshards: int,
                 state: dict | None = None):  # fmt: skip
        self.eval_fraction, self.nshards = eval_fraction, nshards
        self.next_raw = state["raw"] if state else shard
        self.stream = itertools.islice(source.conversations(seed, self.next_raw), 0, None, nshards)

    def next(self) -> list[dict]:
        while True:
            messages = next(self.stream)
            self.next_raw += self.nshards
            if not is_eval_chat(messages, self.eval_fraction):
                return messages

    def state(self) -> dict:
        return {"raw": self.next_raw}


class ChatStream(ResumableStream):
    """An endless stream of training rows from weighted chat sources: each
    conversation comes from a source chosen with probability proportional to its
    weight. Every dataloader worker reads a disjoint shard; under data parallelism
    every rank reads the one-process stream and keeps its block of each global batch
    (``rank_share``, as ``PackedMixture`` does), so rank 0's state resumes every rank.

    ``state_dict``/``load_state_dict`` follow ``lp.corpus.packing.PackedMixture``'s
    protocol (torchdata's StatefulDataLoader saves them in Lightning checkpoints):
    a resumed stream yields the row after the last one taken, the conversation
    held over for the next packed row included.
    """

    def __init__(self, sources: list[ChatSource], tokenizer, seq_len: int, seed: int, eval_fraction: float,
                 packing: bool = True, overlong: str = "truncate", rank: int = 0, world: int = 1,
                 block: int = 1):  # fmt: skip
        super().__init__(rank, world, block)
        self.sources, self.tokenizer = sources, tokenizer
        self.seq_len, self.seed, self.eval_fraction = seq_len, seed, eval_fraction
        self.packing, self.overlong = packing, overlong
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _rows(self) -> Iterator[dict]:
        shard, nshards = shard_index()
        state, self._resume = self._resume, None
        rng = random.Random(f"{self.seed}/{shard}")
        if state:
            rng.setstate(_tuplify(state["rng"]))
        cursors = [
            ChatCursor(
                s, self.seed, self.eval_fraction, shard, nshards, state["cursors"][i] if state else None
            )
            for i, s in enumerate(self.sources)
        ]
        held = Rendered(*state["held"]) if state and state.get("held") else None
        weights = [s.weight for s in self.sources]
        while True:
            pieces, counts = [], {"truncated": 0, "dropped": 0}
            while True:
                r, held = held or self._next(rng, cursors, weights, counts), None
                if pieces and sum(len(p.input_ids) for p in pieces) + len(r.input_ids) > self.seq_len:
                    held = r  # starts the next row
                    break
                pieces.append(r)
                if not self.packing:
                    break
            self._live = {
                "rng": rng.getstate(),
                "cursors": [c.state() for c in cursors],
                "held": [held.input_ids, held.labels] if held else None,
            }
            yield pad_row(pieces, self.seq_len, self.pad_id, self.packing) | counts

    def _next(
        self, rng: random.Random, cursors: list[ChatCursor], weights: list[float], counts: dict
    ) -> Rendered:
        while True:
            k = rng.choices(range(len(cursors)), weights)[0]
            r, what = fit(render(self.tokenizer, cursors[k].next()), self.seq_len, self.overlong)
            if what:
                counts[what] += 1
            if r is not None:
                return r


def eval_conversations(source: ChatSource, tokenizer, seq_len: int, n_tokens: int, seed: int,
                       eval_fraction: float, overlong: str) -> list[dict]:  # fmt: skip
    """Held-out conversations of ``source``, one per padded row, until they hold
    ``n_tokens`` tokens (or one pass is done). The same rows whatever the packing,
    batch size or training length."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, tokens, seen = [], 0, set()
    for messages in itertools.islice(source.conversations(seed, 0), MAX_EVAL_SCAN):
        key = json.dumps(messages, sort_keys=True)
        if key in seen:  # the stream began its next pass
            break
        seen.add(key)
        if not is_eval_chat(messages, eval_fraction):
            continue
        r, _ = fit(render(tokenizer, messages), seq_len, overlong)
        if r is None:
            continue
        rows.append(pad_row([r], seq_len, pad, positions=False))
        tokens += len(r.input_ids)
        if tokens >= n_tokens:
            break
    if not rows:
        raise LpError(
            f"chat source {source.name!r}: no held-out conversation fits data.seq_len={seq_len}; "
            "raise data.eval_fraction or data.seq_len, or give the source more conversations"
        )
    return rows
