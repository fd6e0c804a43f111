"""Where documents come from: offline builtins, local files, Hugging Face datasets.

A source is a deterministic, endless stream of documents (strings): finite
corpora are reshuffled on every pass. ``documents(seed, start)`` begins at the
``start``-th document of that stream, so a resumed run continues where it
stopped without re-reading what came before (O(1) for in-memory corpora).

``is_eval`` decides from a document's text alone whether it belongs to the
held-out eval set, so train and eval are disjoint by construction (a duplicate
document always lands on the same side) and identical across runs whatever the
training settings.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.resources
import importlib.util
import itertools
import logging
import os
import random
import re
import sysconfig
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lp.core.errors import LpError, first_line
from lp.corpus.mathgen import math_problems

Documents = Callable[[int, int], Iterator[str]]  # (seed, start) -> endless stream


@dataclass
class Source:
    name: str
    domain: str
    weight: float
    documents: Documents = field(repr=False)


def is_eval(text: str, eval_fraction: float) -> bool:
    """Stable split on the text itself (blake2b, not Python's salted hash)."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "big")
    return h / 2**64 < eval_fraction


def split(docs: Iterator[str], eval_fraction: float, want_eval: bool) -> Iterator[str]:
    return (d for d in docs if is_eval(d, eval_fraction) == want_eval)


# ---- streams ----------------------------------------------------------------------------


def shuffled_passes(items: list, seed: int, start: int, read: Callable = lambda x: x) -> Iterator[str]:
    """Endless passes over ``items``, each in its own seeded order; begins at ``start``."""
    if not items:
        return
    epoch, pos = divmod(start, len(items))
    while True:
        order = list(items)
        random.Random(f"{seed}/{epoch}").shuffle(order)
        for item in order[pos:]:
            yield read(item)
        epoch, pos = epoch + 1, 0


def generated(make: Callable[[int], Iterator[str]], seed: int, start: int) -> Iterator[str]:
    return itertools.islice(make(seed), start, None)


def source_seed(seed: int, name: str) -> int:
    """Each source shuffles with its own seed, so equal-sized corpora are not read in lockstep."""
    return zlib.crc32(f"{seed}/{name}".encode())


# ---- offline builtins -------------------------------------------------------------------


def stdlib_python_files() -> list[Path]:
    """The installed standard library's own Python modules (tests and vendored
    third-party code left out), sorted so every machine with the same Python
    sees the same list."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "ensurepip"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


GUTENBERG_BODY = re.compile(r"^\*\*\* ?START OF[^\n]*\n(.*?)^\*\*\* ?END OF", re.S | re.M)


def gutenberg_bodies(text: str) -> list[str]:
    """The books' own text from Project Gutenberg files: what lies between the
    ``*** START OF`` and ``*** END OF`` markers (licence and headers dropped)."""
    return GUTENBERG_BODY.findall(text)


def unwrap(paragraph: str) -> str:
    """Join hard-wrapped lines, as prose appears in web-scale corpora."""
    return " ".join(line.strip() for line in paragraph.splitlines())


def paragraphs_chunks(text: str, chars: int) -> list[str]:
    """Cut prose into documents of about ``chars`` characters at paragraph breaks."""
    out, cur, size = [], [], 0
    for para in (unwrap(p.strip()) for p in re.split(r"\n\s*\n", text)):
        if not para:
            continue
        cur.append(para)
        size += len(para)
        if size >= chars:
            out.append("\n\n".join(cur))
            cur, size = [], 0
    if cur:
        out.append("\n\n".join(cur))
    return out


def package_text_files(package: str, pattern: str, name: str) -> list[Path]:
    if importlib.util.find_spec(package) is None:
        raise LpError(
            f"data source {name!r}: the package {package!r} is not installed; run the install step "
            "(make install) or pip install it"
        )
    files = sorted(Path(str(importlib.resources.files(package))).glob(pattern))
    if not files:
        raise LpError(f"data source {name!r}: package {package!r} has no files matching {pattern!r}")
    return files


def _stdlib_code(name: str, cfg: dict) -> Documents:
    files = stdlib_python_files()
    return lambda seed, start: shuffled_passes(files, source_seed(seed, name), start, _read_text)


def _math(name: str, cfg: dict) -> Documents:
    base = int(cfg.get("seed", 0))
    return lambda seed, start: generated(math_problems, source_seed(seed, name) + base, start)


def _package_text(name: str, cfg: dict) -> Documents:
    chars, gutenberg = int(cfg.get("chunk_chars", 2000)), bool(cfg.get("gutenberg", False))
    docs = []
    for f in package_text_files(cfg["package"], cfg.get("pattern", "**/*.txt"), name):
        text = _read_text(f)
        for body in gutenberg_bodies(text) if gutenberg else [text]:
            docs.extend(paragraphs_chunks(body, chars))
    return lambda seed, start: shuffled_passes(docs, source_seed(seed, name), start)


# ---- datasets-backed: local files and the hub ---------------------------------------------

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".text": "text"}


def named_files(cfg: dict) -> list[str]:
    """The files ``cfg["files"]`` (a path or glob, or a list of them) names, sorted; none
    where no files are given."""
    patterns = cfg.get("files")
    if not patterns or patterns == "???":
        return []
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    return sorted({p for pat in patterns for p in glob.glob(os.path.expanduser(str(pat)), recursive=True)})


def matching_files(what: str, name: str, cfg: dict) -> list[str]:
    """``named_files``, where none, or an empty one, is refused in one line (text and chat
    sources)."""
    patterns = cfg.get("files")
    if not patterns or patterns == "???":
        raise LpError(f"{what}: no files given; set data.sources.{name}.files=/path/*.jsonl")
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    paths = named_files(cfg)
    if not paths:
        raise LpError(f"{what}: no file matches {', '.join(map(str, patterns))}")
    empty = [p for p in paths if os.path.getsize(p) == 0]
    if empty:
        raise LpError(f"{what}: {empty[0]} is empty")
    return paths


def _files(name: str, cfg: dict) -> Documents:
    """jsonl, json, parquet or plain-text files (globs allowed), streamed by ``datasets``."""
    paths = matching_files(f"data source {name!r}", name, cfg)
    kinds = {BUILDERS.get(Path(p).suffix) for p in paths}
    if None in kinds or len(kinds) > 1:
        raise LpError(
            f"data source {name!r}: files must share one format among {', '.join(BUILDERS)}; got {paths[:3]}"
        )
    builder = kinds.pop()
    kw = {"sample_by": "document"} if builder == "text" else {}
    field_ = "text" if builder == "text" else cfg.get("text_field", "text")
    return _hf_stream(name, cfg, field_, dict(path=builder, data_files=paths, **kw))


def _hub(name: str, cfg: dict) -> Documents:
    """A Hugging Face dataset (hub id or local dataset directory), streamed: no full download."""
    args = hub_args(f"data source {name!r}", cfg, "data=offline, local files (data=local)")
    return _hf_stream(name, cfg, cfg.get("text_field", "text"), args)


def hub_args(what: str, cfg: dict, offline_choices: str) -> dict:
    """``load_dataset`` arguments of a ``kind=hf`` source (text or chat); a hub id is
    refused up front when the hub is switched off (a local dataset directory is fine)."""
    path = str(cfg.get("path", ""))
    if not path:
        raise LpError(f"{what}: kind=hf needs a dataset path (hub id or directory)")
    offline = any(
        os.environ.get(v, "0").lower() in ("1", "true") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    if offline and not Path(path).expanduser().is_dir():
        raise LpError(
            f"{what}: the hub dataset {path!r} needs network, but HF_HUB_OFFLINE is set; "
            f"use {offline_choices} or unset HF_HUB_OFFLINE"
        )
    args = {k: cfg[k] for k in ("name", "data_dir", "data_files", "revision") if cfg.get(k) is not None}
    return dict(path=path, **args)


def _hf_stream(name: str, cfg: dict, text_field: str, load_args: dict) -> Documents:
    from datasets import load_dataset  # imported here: the offline default never needs it

    split_ = cfg.get("split", "train")
    buffer = int(cfg.get("shuffle_buffer", 10_000))
    quiet = logging.getLogger("datasets")  # a failure is reported below in one line, not also logged
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        ds = load_dataset(**load_args, split=split_, streaming=True)
        first = next(iter(ds), None)
    except LpError:
        raise
    except Exception as e:  # network, missing config, unreadable file: one line, named
        reason = first_line(e)
        raise LpError(f"data source {name!r}: cannot read {load_args.get('path')}: {reason}") from None
    finally:
        quiet.setLevel(level)
    if first is None:
        raise LpError(f"data source {name!r}: it holds no documents")
    if text_field not in first:
        raise LpError(
            f"data source {name!r}: rows have no text field {text_field!r} (fields: {', '.join(first)}); "
            f"set data.sources.{name}.text_field"
        )

    def documents(seed: int, start: int) -> Iterator[str]:
        # shard order and a buffer are shuffled per pass (datasets' streaming shuffle); .iter()
        # reads the whole stream even inside a dataloader worker, where lp shards itself
        for epoch in itertools.count():
            stream = ds.shuffle(seed=source_seed(seed, name), buffer_size=buffer)
            stream.set_epoch(epoch)
            found = False
            for rows in stream.iter(batch_size=256):
                for text in rows[text_field]:
                    found = True
                    if start > 0:
                        start -= 1
                    elif text:
                        yield str(text)
            if not found:
                raise LpError(f"data source {name!r}: a pass over it yielded no documents")

    return documents


KINDS = {
    "stdlib_code": _stdlib_code,
    "math": _math,
    "package_text": _package_text,
    "files": _files,
    "hf": _hub,
}


def build_source(name: str, cfg: dict) -> Source:
    """Build a source from its settings; any problem is one LpError line naming it."""
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise LpError(f"data source {name!r}: kind={kind!r} is unknown; allowed: {', '.join(KINDS)}")
    weight = cfg.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise LpError(f"data source {name!r}: weight={weight!r} must be a positive number")
    return Source(name, str(cfg.get("domain", name)), float(weight), KINDS[kind](name, cfg))
