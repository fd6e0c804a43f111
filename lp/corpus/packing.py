"""Tokenise documents, join them with EOS and pack them into fixed-length rows."""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from lp.core.errors import LpError
from lp.corpus.sources import Source, is_eval, split

MAX_EVAL_SCAN = 200_000  # documents looked at to fill one eval set


class TokenCursor:
    """One source's token stream for one shard (rank x worker) of the data.

    The shard takes every ``nshards``-th document of the source's stream, so
    shards never share a document. Its position is two integers: the stream
    index of the first document still buffered and how many of its tokens are
    used, which is all a resumed run needs (the document is re-read and
    re-tokenised, nothing is skipped or repeated).
    """

    def __init__(self, source: Source, tokenizer, seed: int, eval_fraction: float, shard: int, nshards: int,
                 state: dict | None = None, batch: int = 32):  # fmt: skip
        self.source, self.tokenizer, self.eos = source, tokenizer, tokenizer.eos_token_id
        self.eval_fraction, self.nshards, self.batch = eval_fraction, nshards, batch
        self.next_raw = state["raw"] if state else shard
        self.stream = itertools.islice(source.documents(seed, self.next_raw), 0, None, nshards)
        self.docs: deque[tuple[int, list[int]]] = deque()
        self.offset, self.skip = 0, state["offset"] if state else 0
        self.tokens = 0  # tokens taken, for share reporting

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if not self.docs:
                self._fill()
            ids = self.docs[0][1]
            piece = ids[self.offset : self.offset + n - len(out)]
            out.extend(piece)
            self.offset += len(piece)
            if self.offset == len(ids):
                self.docs.popleft()
                self.offset = 0
        self.tokens += n
        return out

    def _fill(self) -> None:
        batch = []
        while len(batch) < self.batch:
            text, raw = next(self.stream), self.next_raw
            self.next_raw += self.nshards
            if not is_eval(text, self.eval_fraction):
                batch.append((raw, text))
        ids = self.tokenizer([t for _, t in batch], add_special_tokens=False)["input_ids"]
        self.docs.extend((raw, x + [self.eos]) for (raw, _), x in zip(batch, ids, strict=True))
        self.offset, self.skip = self.offset + self.skip, 0

    def state(self) -> dict:
        raw = self.docs[0][0] if self.docs else self.next_raw
        return {"raw": raw, "offset": self.offset + self.skip}


class ResumableStream(IterableDataset):
    """The state protocol of lp's training streams (text and chat): torchdata's
    StatefulDataLoader, which Lightning saves in its checkpoints, calls
    ``state_dict``/``load_state_dict``; a subclass's ``_rows`` sets ``self._live`` to
    the state after each row it yields and starts from ``self._resume``.

    Under data parallelism (``world`` > 1) every rank reads the one-process stream and
    keeps its block of ``block`` rows out of each ``block * world`` (``rank_share``)."""

    def __init__(self, rank: int = 0, world: int = 1, block: int = 1):
        self.rank, self.world, self.block = rank, world, block
        self._resume: dict | None = None
        self._live: dict | None = None

    def state_dict(self) -> dict:
        return dict(self._live or self._resume or {})

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state) if state else None

    def __iter__(self) -> Iterator[dict]:
        rows = self._rows()
        return rank_share(rows, self.rank, self.world, self.block) if self.world > 1 else rows

    def _rows(self) -> Iterator[dict]:
        raise NotImplementedError


class PackedMixture(ResumableStream):
    """An endless stream of ``seq_len``-token rows drawn from weighted sources.

    Each row comes whole from one source, chosen with probability proportional
    to its weight, so realised *token* shares follow the weights (sampling
    documents would bias shares towards sources with long documents). Rows are
    cut from each source's own EOS-joined token stream: no padding, so no label
    is ever -100. Every dataloader worker reads a disjoint shard.

    Under data parallelism (``world`` > 1) every rank reads the one-process stream
    and keeps its block of ``block`` rows out of each ``block * world`` (``rank_share``):
    the global batch is the batch a one-process run with ``block * world`` rows
    reads, for any world size, and every rank's position is the same.

    ``state_dict``/``load_state_dict`` (called by torchdata's StatefulDataLoader,
    which Lightning saves in its checkpoints) make it resumable mid-stream.
    """

    def __init__(self, sources: list[Source], tokenizer, seq_len: int, seed: int, eval_fraction: float,
                 reset_position_ids: bool = False, rank: int = 0, world: int = 1,
                 block: int = 1):  # fmt: skip
        super().__init__(rank, world, block)
        self.sources, self.tokenizer = sources, tokenizer
        self.seq_len, self.seed, self.eval_fraction = seq_len, seed, eval_fraction
        self.reset_position_ids = reset_position_ids

    def _rows(self) -> Iterator[dict]:
        shard, nshards = shard_index()
        state, self._resume = self._resume, None
        rng = random.Random(f"{self.seed}/{shard}")
        if state:
            rng.setstate(_tuplify(state["rng"]))
        cursors = [
            TokenCursor(s, self.tokenizer, self.seed, self.eval_fraction, shard, nshards,
                        state["cursors"][i] if state else None)
            for i, s in enumerate(self.sources)
        ]  # fmt: skip
        weights = [s.weight for s in self.sources]
        while True:
            k = rng.choices(range(len(cursors)), weights)[0]
            ids = torch.tensor(cursors[k].take(self.seq_len), dtype=torch.long)
            self._live = {"rng": rng.getstate(), "cursors": [c.state() for c in cursors]}
            row = {"input_ids": ids, "labels": ids.clone(), "source": k}
            if self.reset_position_ids:
                row["position_ids"] = document_positions(ids, self.tokenizer.eos_token_id)
            yield row


def shard_index() -> tuple[int, int]:
    """(this shard, number of shards) over dataloader workers. Ranks do not shard
    the stream: they share each global batch (``rank_share``)."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def rank_share(rows: Iterator, rank: int, world: int, block: int) -> Iterator:
    """This rank's ``block`` rows out of each ``block * world`` consecutive rows.

    The whole group is drawn before any of it is yielded, so a stream's recorded
    position (``PackedMixture.state_dict``) is the end of the group on every
    rank: rank 0's loader state resumes them all. Hand-written: Lightning's
    distributed sampler works on indexable datasets only."""
    while True:
        group = list(itertools.islice(rows, block * world))
        if len(group) < block * world:
            return
        yield from group[rank * block : (rank + 1) * block]


def document_positions(ids: torch.Tensor, eos: int) -> torch.Tensor:
    """Position ids that restart after every EOS (boundary-aware packing)."""
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[0] = True
    starts[1:] = ids[:-1] == eos
    index = torch.arange(len(ids))
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(0).values
    return index - first


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def eval_rows(
    source: Source, tokenizer, seq_len: int, n_tokens: int, seed: int, eval_fraction: float
) -> torch.Tensor:
    """The first ``n_tokens`` (rounded up to whole rows) of the held-out documents.

    Stops at the end of one pass over a finite corpus (the stream repeats after
    that) and within a bounded number of documents for generated ones."""
    rows = max(1, -(-n_tokens // seq_len))
    buf: list[int] = []
    seen: set[str] = set()
    docs = itertools.islice(source.documents(seed, 0), MAX_EVAL_SCAN)
    for doc in split(docs, eval_fraction, want_eval=True):
        if doc in seen:
            break
        seen.add(doc)
        buf.extend(tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        if len(buf) >= rows * seq_len:
            break
    if len(buf) < seq_len:
        raise LpError(
            f"data source {source.name!r}: only {len(buf)} held-out tokens, less than one row of {seq_len}; "
            "raise data.eval_fraction or give the source more documents"
        )
    rows = min(rows, len(buf) // seq_len)
    return torch.tensor(buf[: rows * seq_len], dtype=torch.long).view(rows, seq_len)
