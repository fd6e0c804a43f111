"""Benchmarks through lm-evaluation-harness: suites (conf/eval/), lp's offline task
YAMLs and scorers (lp/measure/benchmarks/tasks, data.py, scorers.py), ``python -m lp.eval`` and
the in-training callback (``lp.measure.benchmarks.callback.BenchmarkCallback``).

Importing this package is cheap; the harness loads when a suite first runs.
"""

from lp.measure.benchmarks.suite import (
    Score,
    Suite,
    SuiteResult,
    bench_deltas,
    evaluate_lm,
    load_tasks,
    run_suite,
)

__all__ = ["Score", "Suite", "SuiteResult", "bench_deltas", "evaluate_lm", "load_tasks", "run_suite"]
