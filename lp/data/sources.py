"""Where documents come from: the offline builtins and local files.

A source yields documents (strings). ``split`` decides, from a document's text
alone, whether it belongs to the held-out eval set, so train and eval are
disjoint by construction (a duplicate document always lands on the same side)
and identical across runs whatever the training settings.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.resources
import importlib.util
import json
import random
import re
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lp.data.mathgen import math_problems
from lp.errors import LpError


@dataclass
class Source:
    name: str
    domain: str
    weight: float
    # documents(seed) -> an endless stream; finite corpora reshuffle on each pass
    documents: Callable[[int], Iterator[str]] = field(repr=False)


def is_eval(text: str, eval_fraction: float) -> bool:
    """Stable split on the text itself (blake2b, not Python's salted hash)."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "big")
    return h / 2**64 < eval_fraction


def split(docs: Iterator[str], eval_fraction: float, want_eval: bool) -> Iterator[str]:
    return (d for d in docs if is_eval(d, eval_fraction) == want_eval)


# ---- document providers -----------------------------------------------------------


def _cycle_shuffled(load: Callable[[], list], seed: int, read: Callable = lambda x: x) -> Iterator[str]:
    items = load()
    rng = random.Random(seed)
    while True:
        order = list(items)
        rng.shuffle(order)
        for item in order:
            text = read(item)
            if text.strip():
                yield text


def stdlib_python_files() -> list[Path]:
    """The installed standard library's own Python modules (tests and vendored
    third-party code left out), sorted so every machine with the same Python
    sees the same list."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "ensurepip"}
    files = [p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts)]
    return sorted(files)


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


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


GUTENBERG_BODY = re.compile(r"^\*\*\* ?START OF[^\n]*\n(.*?)^\*\*\* ?END OF", re.S | re.M)


def gutenberg_bodies(text: str) -> list[str]:
    """The books' own text from Project Gutenberg files: what lies between the
    ``*** START OF`` and ``*** END OF`` markers (licence and headers dropped)."""
    return GUTENBERG_BODY.findall(text)


def unwrap(paragraph: str) -> str:
    """Join hard-wrapped lines, as prose appears in web-scale corpora."""
    return " ".join(line.strip() for line in paragraph.splitlines())


def package_text_files(package: str, pattern: str) -> list[Path]:
    if importlib.util.find_spec(package) is None:
        raise LpError(
            f"the general-text package {package!r} is not installed; run the install step "
            "(make install) or pip install it"
        )
    root = Path(str(importlib.resources.files(package)))
    files = sorted(root.glob(pattern))
    if not files:
        raise LpError(f"package {package!r} has no files matching {pattern!r}")
    return files


def read_local_documents(files: str | list[str], text_field: str, name: str) -> list[str]:
    """jsonl (one JSON object a line), json (a list of objects) or plain text files."""
    patterns = [files] if isinstance(files, str) else list(files)
    paths = sorted({p for pat in patterns for p in glob.glob(str(Path(pat).expanduser()))})
    if not paths:
        raise LpError(f"data source {name!r}: no file matches {patterns}")
    docs = []
    for p in paths:
        docs.extend(_read_one(Path(p), text_field, name))
    if not docs:
        raise LpError(f"data source {name!r}: the files {paths} hold no documents")
    return docs


def _read_one(path: Path, text_field: str, name: str) -> list[str]:
    if path.suffix in (".jsonl", ".json"):
        raw = path.read_text(encoding="utf-8")
        rows = (
            json.loads(raw)
            if path.suffix == ".json"
            else [json.loads(l) for l in raw.splitlines() if l.strip()]
        )
        try:
            return [str(r[text_field]) for r in rows]
        except (KeyError, TypeError):
            raise LpError(
                f"data source {name!r}: {path} has rows without the text field {text_field!r}"
            ) from None
    return paragraphs_chunks(path.read_text(encoding="utf-8", errors="replace"), 2000)


# ---- the registry that configs name by ``kind`` ------------------------------------


def _stdlib_code(cfg: dict) -> Callable[[int], Iterator[str]]:
    return lambda seed: _cycle_shuffled(stdlib_python_files, seed, _read_text)


def _math(cfg: dict) -> Callable[[int], Iterator[str]]:
    base = int(cfg.get("seed", 0))
    return lambda seed: math_problems(base * 1_000_003 + seed)


def _package_text(cfg: dict) -> Callable[[int], Iterator[str]]:
    package, pattern = cfg["package"], cfg.get("pattern", "**/*.txt")
    chars, gutenberg = int(cfg.get("chunk_chars", 2000)), bool(cfg.get("gutenberg", False))
    package_text_files(package, pattern)  # fail early if missing

    def load() -> list[str]:
        docs = []
        for f in package_text_files(package, pattern):
            text = _read_text(f)
            for body in gutenberg_bodies(text) if gutenberg else [text]:
                docs.extend(paragraphs_chunks(body, chars))
        return docs

    return lambda seed: _cycle_shuffled(load, seed)


def _files(cfg: dict) -> Callable[[int], Iterator[str]]:
    name = cfg.get("name", "files")
    docs = read_local_documents(cfg["files"], cfg.get("text_field", "text"), name)
    return lambda seed: _cycle_shuffled(lambda: docs, seed)


KINDS = {"stdlib_code": _stdlib_code, "math": _math, "package_text": _package_text, "files": _files}


def build_source(name: str, cfg: dict) -> Source:
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise LpError(f"data source {name!r}: kind={kind!r} is unknown; allowed: {', '.join(KINDS)}")
    weight = cfg.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or weight <= 0:
        raise LpError(f"data source {name!r}: weight={weight!r} must be a positive number")
    return Source(name, str(cfg.get("domain", name)), float(weight), KINDS[kind]({**cfg, "name": name}))
