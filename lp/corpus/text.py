"""The LightningDataModule: a weighted code/math mixture plus fixed eval sets."""

from __future__ import annotations

import os
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lp.core.config import boolean, fixed, integer, number, setting
from lp.core.errors import LpError
from lp.corpus.packing import PackedMixture, eval_rows
from lp.corpus.sources import Source, build_source


class TrainedStateLoader(StatefulDataLoader):
    """A StatefulDataLoader whose state is that of the batches *trained on*.

    Lightning saves a stateful loader's state in its checkpoints, but fetches
    one batch ahead of training (its prefetching), so the plain state would
    make a resumed run skip that batch. This reports the state from one batch
    earlier. Hand-written: neither Lightning nor torchdata offers it.
    """

    lag = 1  # Lightning's _PrefetchDataFetcher default

    def __iter__(self):
        it = super().__iter__()
        self._history = deque([super().state_dict()], maxlen=self.lag + 1)
        for batch in it:
            self._history.append(super().state_dict())
            yield batch

    def state_dict(self) -> dict:
        history = getattr(self, "_history", None)
        return history[0] if history and len(history) > self.lag else super().state_dict()


@dataclass
class TextDataConfig:
    """The ``data`` group for plain text (``conf/data/common.yaml`` and its presets): the
    sources (``lp.corpus.sources``, checked when built), rows, eval sets, replay and the
    base's own text. What changes the data a run reads is fixed across a resume."""

    _target_: str = "lp.corpus.MixtureDataModule"
    sources: dict[str, Any] = fixed()
    general: dict[str, Any] | None = fixed()
    seq_len: int = setting(integer(2), fixed=True)
    batch_size: int = setting(integer(1), fixed=True)
    eval_batch_size: int = setting(integer(1))
    eval_tokens: int = setting(integer(1), fixed=True)
    eval_fraction: float = setting(number(0, 1, open_lo=True, open_hi=True), fixed=True)
    seed: int = setting(integer(0), fixed=True)
    train_seed: int = setting(integer(0), fixed=True)
    num_workers: int = setting(integer(0), fixed=True)
    reset_position_ids: Any = setting(boolean, fixed=True)
    replay: float = setting(number(0, 1, open_hi=True), fixed=True)
    self_tokens: int = setting(integer(0), fixed=True)


class MixtureDataModule(L.LightningDataModule):
    """Training rows from ``sources`` (name -> settings, weighted); one held-out
    eval set per domain that has a source, plus ``general`` (the base model's
    own domain, which the forgetting measurement reads) and, once ``use_own_text``
    has given it, ``self`` (text sampled from the base, ``lp.corpus.own_text``).

    ``replay``: the share of training rows drawn from the general corpus's training
    side (its held-out documents stay out), as one more weighted source; the eval
    sets do not change with it.

    Eval sets depend only on the source settings, ``seed``, ``seq_len``,
    ``eval_tokens`` and ``eval_fraction``, never on batch size, training
    length or ``train_seed``, so runs of a sweep (seeds included) are evaluated
    on identical tokens. ``train_seed`` changes only the order of the training
    rows (``train_order_seed``).

    The sources are built (files found, first rows read) at construction; the
    ``tokenizer`` may be set afterwards, before ``setup`` (``lp.train`` checks the
    data before it loads a model).
    """

    def __init__(
        self,
        tokenizer,
        sources: dict,
        general: dict | None,
        seq_len: int = 128,  # the defaults are conf/data/common.yaml's (tests/core/test_config.py)
        batch_size: int = 2,
        eval_batch_size: int = 16,
        eval_tokens: int = 512,
        eval_fraction: float = 0.05,
        seed: int = 0,
        train_seed: int = 0,
        num_workers: int = 1,
        reset_position_ids: bool = False,
        replay: float = 0.0,
        self_tokens: int = 0,
    ):
        super().__init__()
        if not sources:
            raise LpError("data.sources is empty; give at least one training source")
        if replay and not general:
            raise LpError(f"data.replay={replay} needs a general corpus to replay; set data.general")
        self.tokenizer = tokenizer
        self.sources: list[Source] = [build_source(n, dict(c)) for n, c in sources.items()]
        self.general = build_source("general", {"domain": "general", **dict(general)}) if general else None
        self.seq_len, self.batch_size, self.eval_batch_size = seq_len, batch_size, eval_batch_size
        self.eval_tokens, self.eval_fraction = eval_tokens, eval_fraction
        self.seed, self.num_workers, self.reset_position_ids = seed, num_workers, reset_position_ids
        self.train_seed, self.replay, self.self_tokens = train_seed, replay, self_tokens
        self.eval_sets: dict[str, torch.Tensor] = {}
        self.own_text: torch.Tensor | None = None

    def use_tokenizer(self, tokenizer, name: str):
        """Set the tokenizer (plain text needs nothing more of it)."""
        self.tokenizer = tokenizer
        return tokenizer

    def use_own_text(self, rows: torch.Tensor) -> None:
        """The ``self`` eval set: rows sampled from the base (``lp.corpus.own_text``)."""
        self.own_text = rows

    @property
    def domains(self) -> list[str]:
        """Eval domains, in val-dataloader order."""
        names = list(dict.fromkeys(s.domain for s in self.sources))
        if self.general is not None and "general" not in names:
            names.append("general")
        if self.own_text is not None:
            names.append("self")
        return names

    @property
    def training_sources(self) -> list[Source]:
        """The sources training rows come from: ``sources``, plus the general corpus at the
        weight that makes its share ``replay`` (rows are drawn in proportion to weight)."""
        if not self.replay:
            return self.sources
        weight = self.replay / (1 - self.replay) * sum(s.weight for s in self.sources)
        return [*self.sources, Source("replay", "general", weight, self.general.documents)]

    def setup(self, stage: str | None = None) -> None:
        if self.eval_sets:
            return
        by_domain: dict[str, list[Source]] = {}
        for s in [*self.sources, *([self.general] if self.general else [])]:
            by_domain.setdefault(s.domain, []).append(s)
        if self.own_text is not None:
            self.eval_sets["self"] = self.own_text
        for domain in self.domains:
            if domain == "self":
                continue
            parts = by_domain[domain]
            share = -(-self.eval_tokens // len(parts))
            self.eval_sets[domain] = torch.cat(
                [
                    eval_rows(s, self.tokenizer, self.seq_len, share, self.seed, self.eval_fraction)
                    for s in parts
                ]
            )

    def train_dataloader(self) -> StatefulDataLoader:
        if self.num_workers > 0:
            # workers tokenise in parallel already; the Rust thread pool would oversubscribe
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        seed = train_order_seed(self.seed, self.train_seed)
        rank, world = trainer_rank(self)
        data = PackedMixture(
            self.training_sources, self.tokenizer, self.seq_len, seed, self.eval_fraction,
            self.reset_position_ids, rank=rank, world=world, block=self.batch_size,
        )  # fmt: skip
        return TrainedStateLoader(
            data,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            generator=loader_generator(self.seed),
        )

    def val_dataloader(self) -> list[DataLoader]:
        """Each rank evaluates every world-th row of each eval set; the module's
        metrics sum over ranks, so the values are the one-process ones."""
        rank, world = trainer_rank(self)
        for d in self.domains:
            if len(self.eval_sets[d]) < world:
                raise LpError(
                    f"eval set {d!r} has {len(self.eval_sets[d])} rows, fewer than the {world} ranks; "
                    "raise data.eval_tokens"
                )
        return [
            DataLoader(
                indexed_rows(self.eval_sets[d], rank, world),
                batch_size=self.eval_batch_size,
                generator=loader_generator(self.seed),
            )
            for d in self.domains
        ]


def indexed_rows(rows: torch.Tensor, rank: int, world: int) -> TensorDataset:
    """This rank's share of an eval set (every world-th row), each with its global index,
    which pairs it with the same row at step 0 (``lp.measure.forgetting``)."""
    index = torch.arange(len(rows))
    return TensorDataset(rows[rank::world], index[rank::world])


def train_order_seed(seed: int, train_seed: int) -> int:
    """The seed of the training stream (which rows, in which order).

    ``train_seed`` 0 leaves it at ``seed`` (``data.seed``), so a run with seed 0 reads
    exactly the rows it read before ``train_seed`` existed; any other value mixes both
    into a new one, so ``seed=1,2`` give new orders whatever ``data.seed`` is (a plain
    sum would give data.seed=1, seed=0 and data.seed=0, seed=1 the same order)."""
    return seed if train_seed == 0 else zlib.crc32(f"{seed}/train/{train_seed}".encode())


def trainer_rank(data: L.LightningDataModule) -> tuple[int, int]:
    """(global rank, world size) of the Trainer ``data`` serves; (0, 1) without one."""
    trainer = data.trainer
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


def loader_generator(seed: int) -> torch.Generator:
    """A loader's own generator: each iterator it starts draws a seed, which would
    otherwise come from torch's global one and shift training's random numbers
    (dropout) by every evaluation; a resumed run then draws what an uninterrupted
    one draws (lp.training.checkpointing)."""
    return torch.Generator().manual_seed(seed)
