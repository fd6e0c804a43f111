"""The offline default chat set, generated here in the domains of the new blocks.

- ``math``: problems of ``lp.corpus.mathgen`` as the question, its worked steps as the answer.
- ``code``: "write a function that ..." requests made from the docstrings of real
  functions of the installed standard library, answered with the function itself.
- ``general``: questions on passages of the general corpus's *training* side
  (what comes next, which word is missing), so nothing of the held-out general
  text that forgetting and the benchmarks read is ever trained on.

Same seed, same conversations, in the same order. Built once into the lp cache
(``<cache>/chat``), never committed. The held-out split is the text hash of
``lp.corpus.sources.is_eval`` over each conversation, as for every chat source.
"""

from __future__ import annotations

import ast
import itertools
import random
import re
from collections.abc import Iterator

from lp.core.files import cached_rows
from lp.corpus.mathgen import math_problems
from lp.corpus.sources import build_source, split, stdlib_python_files

SIZES = {"math": 2000, "code": 900, "general": 1000}  # conversations per part, at most
PARTS = tuple(SIZES)
FORMAT = 1  # bump when what a builder writes changes
MAX_FUNCTION_LINES = 30  # longer functions make poor, overlong answers
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def chat_set(
    part: str, seed: int, general: dict, eval_fraction: float, cache_dir: str | None
) -> list[list[dict]]:
    """The conversations of one part (``math``, ``code``, ``general``), cached."""
    key = {"part": part, "seed": seed, "sizes": SIZES, "format": FORMAT}
    if part == "general":
        key |= {"general": general, "eval_fraction": eval_fraction}
    build = {
        "math": lambda: math_chats(seed),
        "code": lambda: code_chats(seed),
        "general": lambda: general_chats(seed, general, eval_fraction),
    }[part]
    rows = cached_rows(
        cache_dir, f"chat-{part}", key, lambda: [{"messages": m} for m in build()], folder="chat"
    )
    return [r["messages"] for r in rows]


def _chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def math_chats(seed: int, n: int = SIZES["math"]) -> list[list[dict]]:
    out, seen = [], set()
    for text in itertools.islice(math_problems(seed), 20 * n):
        problem, _, steps = text.partition("\n")
        if problem in seen:
            continue
        seen.add(problem)
        out.append(_chat(problem.removeprefix("Problem: "), steps.removeprefix("Solution: ")))
        if len(out) == n:
            break
    return out


def code_chats(seed: int, n: int = SIZES["code"]) -> list[list[dict]]:
    """Files read in a seeded order until ``n`` distinct requests are found."""
    files = stdlib_python_files()
    random.Random(seed).shuffle(files)
    found: dict[str, str] = {}
    for path in files:
        for name, signature, doc, source in _documented_functions(path.read_text("utf-8", errors="replace")):
            request = f"Write a Python function `{name}{signature}` that does the following:\n\n{doc}"
            found.setdefault(request, f"```python\n{source}\n```")
        if len(found) >= n:
            break
    return [_chat(q, a) for q, a in itertools.islice(found.items(), n)]


def _documented_functions(code: str) -> Iterator[tuple[str, str, str, str]]:
    """(name, signature, first paragraph of the docstring, source) of short public top-level functions."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.decorator_list:
            continue
        doc = ast.get_docstring(node)
        source = ast.get_source_segment(code, node)
        if not doc or not source or len(source.splitlines()) > MAX_FUNCTION_LINES:
            continue
        first = doc.split("\n\n")[0].strip()
        if len(first) >= 20:
            yield node.name, f"({ast.unparse(node.args)})", first, source


def general_chats(
    seed: int, general: dict, eval_fraction: float, n: int = SIZES["general"]
) -> list[list[dict]]:
    source = build_source("general", {"domain": "general", **dict(general)})
    rng = random.Random(seed)
    out, seen = [], set()
    for doc in split(itertools.islice(source.documents(seed, 0), 50 * n), eval_fraction, want_eval=False):
        if doc in seen:  # the stream began its next pass
            break
        seen.add(doc)
        sentences = [" ".join(s.split()) for s in SENTENCE.split(doc)]
        sentences = [s for s in sentences if 20 <= len(s) <= 300]
        if len(sentences) < 4:
            continue
        i = rng.randrange(len(sentences) - 3)
        out.append(_next_sentence(sentences[i : i + 3], sentences[i + 3]) if rng.random() < 0.5
                   else _missing_word(sentences[i], rng))  # fmt: skip
        if len(out) == n:
            break
    return [c for c in out if c is not None]


def _next_sentence(passage: list[str], following: str) -> list[dict]:
    return _chat(
        "Here is a passage from a book:\n\n" + " ".join(passage) + "\n\nWhat is the next sentence?",
        f"The next sentence is: {following}",
    )


def _missing_word(sentence: str, rng: random.Random) -> list[dict] | None:
    words = [m for m in re.finditer(r"\b[A-Za-z]{5,}\b", sentence)]
    if not words:
        return None
    w = rng.choice(words)
    blanked = sentence[: w.start()] + "____" + sentence[w.end() :]
    return _chat(
        f"Which word fills the blank in this sentence from a book?\n\n{blanked}",
        f'The missing word is "{w.group()}": {sentence}',
    )
