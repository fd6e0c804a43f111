"""The LightningDataModule of the instruction stage: weighted chat sources plus eval sets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lp.core.config import boolean, choice, fixed, integer, number, setting
from lp.core.errors import LpError
from lp.corpus.chat.format import chat_tokenizer
from lp.corpus.chat.packing import OVERLONG, ChatStream, eval_conversations
from lp.corpus.chat.sources import ChatSource, build_chat_source
from lp.corpus.packing import eval_rows
from lp.corpus.sources import Source, build_source
from lp.corpus.text import (
    TrainedStateLoader,
    indexed_rows,
    loader_generator,
    train_order_seed,
    trainer_rank,
)


@dataclass
class ChatDataConfig:
    """The ``data`` group for conversations (``conf/data/chat_common.yaml`` and its presets,
    the instruction stage): chat sources, the general text set forgetting reads, rows
    (packed or padded), overlong conversations, the chat template."""

    _target_: str = "lp.corpus.ChatDataModule"
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
    packing: Any = setting(boolean, fixed=True)
    overlong: str = setting(choice(*OVERLONG), fixed=True)
    default_template: Any = setting(boolean, fixed=True)
    cache_dir: str | None = None


class ChatDataModule(L.LightningDataModule):
    """Training rows from chat ``sources`` (name -> settings, weighted), packed or
    padded (``lp.corpus.chat.packing``); one held-out chat eval set per domain (loss on
    assistant tokens) plus the ``general`` text set that forgetting reads.

    Built (files found, every local row checked) at construction; the tokenizer
    comes later through ``use_tokenizer``, which gives it a chat template.
    """

    def __init__(
        self,
        tokenizer,
        sources: dict,
        general: dict | None,
        seq_len: int = 512,  # the defaults are conf/data/chat_common.yaml's (tests/core/test_config.py)
        batch_size: int = 2,
        eval_batch_size: int = 8,
        eval_tokens: int = 4096,
        eval_fraction: float = 0.05,
        seed: int = 0,
        train_seed: int = 0,
        num_workers: int = 1,
        packing: bool = True,
        overlong: str = "truncate",
        default_template: bool = True,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if not sources:
            raise LpError("data.sources is empty; give at least one chat source")
        common = {"general": dict(general or {}), "eval_fraction": eval_fraction, "cache_dir": cache_dir}
        self.sources: list[ChatSource] = [build_chat_source(n, dict(c), common) for n, c in sources.items()]
        self.general: Source | None = (
            build_source("general", {"domain": "general", **dict(general)}) if general else None
        )
        self.tokenizer = tokenizer
        self.seq_len, self.batch_size, self.eval_batch_size = seq_len, batch_size, eval_batch_size
        self.eval_tokens, self.eval_fraction, self.seed = eval_tokens, eval_fraction, seed
        self.train_seed = train_seed  # the training order only (lp.corpus.text.train_order_seed)
        self.num_workers, self.packing, self.overlong = num_workers, packing, overlong
        self.default_template = default_template
        self.eval_sets: dict[str, list[dict] | torch.Tensor] = {}

    def use_tokenizer(self, tokenizer, name: str):
        """Set the tokenizer, with a chat template (``lp.corpus.chat.format.chat_tokenizer``)."""
        self.tokenizer = chat_tokenizer(tokenizer, self.default_template, name)
        return self.tokenizer

    @property
    def domains(self) -> list[str]:
        names = list(dict.fromkeys(s.domain for s in self.sources))
        if self.general is not None and "general" not in names:
            names.append("general")
        return names

    def setup(self, stage: str | None = None) -> None:
        if self.eval_sets:
            return
        for domain in self.domains:
            parts = [s for s in self.sources if s.domain == domain]
            if not parts:  # the general text set
                args = (self.seq_len, self.eval_tokens, self.seed, self.eval_fraction)
                self.eval_sets[domain] = eval_rows(self.general, self.tokenizer, *args)
                continue
            share = -(-self.eval_tokens // len(parts))
            self.eval_sets[domain] = [
                row
                for s in parts
                for row in eval_conversations(
                    s, self.tokenizer, self.seq_len, share, self.seed, self.eval_fraction, self.overlong
                )  # fmt: skip
            ]

    def train_stream(self) -> ChatStream:
        rank, world = trainer_rank(self)
        seed = train_order_seed(self.seed, self.train_seed)
        return ChatStream(self.sources, self.tokenizer, self.seq_len, seed, self.eval_fraction,
                          self.packing, self.overlong, rank=rank, world=world,
                          block=self.batch_size)  # fmt: skip

    def train_dataloader(self) -> TrainedStateLoader:
        if self.num_workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return TrainedStateLoader(
            self.train_stream(),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            generator=loader_generator(self.seed),
        )

    def val_dataloader(self) -> list[DataLoader]:
        """Each rank evaluates every world-th row; the module's metrics sum over ranks."""
        rank, world = trainer_rank(self)
        out = []
        for d in self.domains:
            rows = self.eval_sets[d]
            if isinstance(rows, torch.Tensor):
                data = indexed_rows(rows, rank, world)
            else:  # conversations: dicts, each with its global row index
                data = [{**r, "row": i} for i, r in enumerate(rows)][rank::world]
            out.append(
                DataLoader(data, batch_size=self.eval_batch_size, generator=loader_generator(self.seed))
            )
        return out
