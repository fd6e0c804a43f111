"""Tokenise documents, join them with EOS and pack them into fixed-length rows."""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from lp.data.sources import Source, split


def token_stream(docs: Iterator[str], tokenizer, eos_id: int) -> Iterator[list[int]]:
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        yield ids + [eos_id]


class PackedMixture(IterableDataset):
    """An endless stream of ``seq_len``-token rows drawn from weighted sources.

    Each row comes whole from one source, chosen with probability proportional
    to its weight, so realised *token* shares follow the weights (sampling
    documents would bias shares towards sources with long documents). Rows are
    cut from each source's own EOS-joined token stream: no padding.
    """

    def __init__(self, sources: list[Source], tokenizer, seq_len: int, seed: int, eval_fraction: float):
        self.sources, self.tokenizer = sources, tokenizer
        self.seq_len, self.seed, self.eval_fraction = seq_len, seed, eval_fraction

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        seed = self.seed * 1000 + (info.id if info else 0)  # workers draw distinct streams
        rng = random.Random(seed)
        eos = self.tokenizer.eos_token_id
        streams = [
            token_stream(split(s.documents(seed), self.eval_fraction, want_eval=False), self.tokenizer, eos)
            for s in self.sources
        ]
        buffers: list[list[int]] = [[] for _ in self.sources]
        weights = [s.weight for s in self.sources]
        while True:
            k = rng.choices(range(len(self.sources)), weights)[0]
            while len(buffers[k]) < self.seq_len:
                buffers[k].extend(next(streams[k]))
            row, buffers[k] = buffers[k][: self.seq_len], buffers[k][self.seq_len :]
            ids = torch.tensor(row, dtype=torch.long)
            yield {"input_ids": ids, "labels": ids.clone(), "source": k}


def eval_rows(
    source: Source, tokenizer, seq_len: int, n_tokens: int, seed: int, eval_fraction: float
) -> torch.Tensor:
    """The first ``n_tokens`` (rounded up to whole rows) of the held-out documents."""
    rows = max(1, -(-n_tokens // seq_len))
    buf: list[int] = []
    docs = split(source.documents(seed), eval_fraction, want_eval=True)
    for ids in token_stream(docs, tokenizer, tokenizer.eos_token_id):
        buf.extend(ids)
        if len(buf) >= rows * seq_len:
            break
    return torch.tensor(buf[: rows * seq_len], dtype=torch.long).view(rows, seq_len)
