"""Where conversations come from: the generated default set, local chat files, hub datasets.

A chat source is, like a text source (``lp.corpus.sources``), a deterministic
endless stream, here of conversations (``lp.corpus.chat.format.conversation``), that
``conversations(seed, start)`` begins at its ``start``-th item, so a resumed
run continues where it stopped. Rows are checked when the source is built:
every row of local files, the first rows of a hub dataset (the rest as they
stream); a bad row is one ``LpError`` naming its file and row.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lp.core.errors import LpError, first_line
from lp.corpus.chat.format import conversation
from lp.corpus.sources import hub_args, is_eval, matching_files, shuffled_passes, source_seed

log = logging.getLogger(__name__)
Conversations = Callable[[int, int], Iterator[list[dict]]]  # (seed, start) -> endless stream
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
HUB_CHECKED_ROWS = 100  # rows of a hub dataset checked up front


@dataclass
class ChatSource:
    name: str
    domain: str
    weight: float
    conversations: Conversations = field(repr=False)


def is_eval_chat(messages: list[dict], eval_fraction: float) -> bool:
    """Held out or not, from the conversation's text alone (``lp.corpus.sources.is_eval``)."""
    return is_eval(json.dumps(messages, sort_keys=True, ensure_ascii=False), eval_fraction)


def _generated(name: str, cfg: dict, common: dict) -> Conversations:
    from lp.corpus.chat.generated import PARTS, chat_set

    part = cfg.get("part")
    if part not in PARTS:
        raise LpError(f"chat source {name!r}: part={part!r} is unknown; allowed: {', '.join(PARTS)}")
    items = chat_set(part, int(cfg.get("seed", 0)), common["general"], common["eval_fraction"],
                     common.get("cache_dir"))  # fmt: skip
    return lambda seed, start: shuffled_passes(items, source_seed(seed, name), start)


def _files(name: str, cfg: dict, common: dict) -> Conversations:
    """jsonl, json or parquet chat files (globs allowed), each row checked now."""
    paths = matching_files(f"chat source {name!r}", name, cfg)
    for p in paths:
        if Path(p).suffix not in BUILDERS:
            raise LpError(f"chat source {name!r}: {p} is not one of {', '.join(BUILDERS)}")
    streams = [_stream(name, dict(path=BUILDERS[Path(p).suffix], data_files=[p]), p) for p in paths]
    for path, ds in zip(paths, streams, strict=True):
        _count_learnable(name, path, _checked(ds, path, None))  # every row read and checked
    return _shuffled(name, cfg, streams, paths)


def _count_learnable(name: str, label: str, conversations) -> None:
    """Refuse rows that hold nothing to learn: none at all, or only empty assistant turns
    (their labels would be end-of-turn markers alone); say how many rows are such."""
    rows = empty = 0
    for messages in conversations:
        rows += 1
        empty += not any(m["content"].strip() for m in messages if m["role"] == "assistant")
    if rows == 0:
        raise LpError(f"chat source {name!r}: {label} holds no rows")
    if empty == rows:
        raise LpError(f"chat source {name!r}: every assistant turn in {label} is empty ({rows} rows read); "
                      "there is nothing to learn")  # fmt: skip
    if empty:
        log.warning("lp: %d of %d rows of %s have only empty assistant turns", empty, rows, label)


def _hub(name: str, cfg: dict, common: dict) -> Conversations:
    """A Hugging Face dataset (hub id or local dataset directory), streamed."""
    args = hub_args(f"chat source {name!r}", cfg, "data=chat_offline, local files (data=chat_local)")
    path = args["path"]
    ds = _stream(name, dict(split=cfg.get("split", "train"), **args), path)
    _count_learnable(name, f"the first rows of {path}", _checked(ds, path, HUB_CHECKED_ROWS))
    return _shuffled(name, cfg, [ds], [path])


def _stream(name: str, load_args: dict, label: str):
    from datasets import load_dataset  # imported here: the offline default never needs it

    load_args.setdefault("split", "train")
    quiet = logging.getLogger("datasets")  # a failure is reported below in one line, not also logged
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        ds = load_dataset(**load_args, streaming=True)
        # the row number travels with the row through the shuffle, for error messages
        return ds.map(lambda row, i: {"_lp_row": i + 1}, with_indices=True)
    except Exception as e:  # network, missing config, unreadable file: one line, named
        raise LpError(f"chat source {name!r}: cannot read {label}: {first_line(e)}") from None
    finally:
        quiet.setLevel(level)


def _checked(rows, label: str, limit: int | None) -> Iterator[list[dict]]:
    try:
        for row in itertools.islice(rows, limit):
            where = f"{label} row {row.pop('_lp_row')}"
            yield conversation(row, where)
    except LpError:
        raise
    except Exception as e:  # a file datasets cannot parse
        raise LpError(f"cannot read {label}: {first_line(e)}") from None


def _shuffled(name: str, cfg: dict, streams: list, labels: list[str]) -> Conversations:
    from datasets import concatenate_datasets

    ds = concatenate_datasets(streams) if len(streams) > 1 else streams[0]
    buffer = int(cfg.get("shuffle_buffer", 10_000))
    label = labels[0] if len(labels) == 1 else f"{len(labels)} files of {name!r}"

    def conversations(seed: int, start: int) -> Iterator[list[dict]]:
        # datasets' streaming shuffle (shard order and a buffer), reseeded every pass
        for epoch in itertools.count():
            stream = ds.shuffle(seed=source_seed(seed, name), buffer_size=buffer)
            stream.set_epoch(epoch)
            found = False
            for messages in _checked(stream, label, None):
                found = True
                if start > 0:
                    start -= 1
                else:
                    yield messages
            if not found:
                raise LpError(f"chat source {name!r}: a pass over it yielded no conversations")

    return conversations


KINDS = {"generated": _generated, "files": _files, "hf": _hub}


def build_chat_source(name: str, cfg: dict, common: dict) -> ChatSource:
    """A chat source from its settings (``common``: the general corpus, eval_fraction and
    cache_dir the generated set needs); any problem is one LpError line naming it."""
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise LpError(f"chat source {name!r}: kind={kind!r} is unknown; allowed: {', '.join(KINDS)}")
    weight = cfg.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise LpError(f"chat source {name!r}: weight={weight!r} must be a positive number")
    return ChatSource(name, str(cfg.get("domain", name)), float(weight), KINDS[kind](name, cfg, common))
