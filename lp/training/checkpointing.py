"""Runs that survive a crash: periodic checkpoints, written atomically, holding what
trains plus a reference to the base, and continuing from the newest one exactly.

- ``StepCheckpoint`` (Lightning's ``ModelCheckpoint``) writes
  ``<run dir>/checkpoints/step-N.ckpt`` every ``every_n_steps`` optimizer steps and
  at the end of training, keeps the ``keep`` newest, and writes each one only once
  the step's metrics and validation are logged and the loggers flushed (below).
- ``AtomicCheckpointIO`` writes a file in the checkpoint's own directory and renames
  it: a crash while writing leaves the previous checkpoint as it was.
- ``Resumable`` adds to each checkpoint what a resume must compare (the settings
  that cannot change, the base's content hash, the world size) and the random
  number generators' states, restored when the resumed run takes its next batch.
- ``drop_frozen`` / ``fill_frozen``: frozen parameters are not saved; the resumed
  run rebuilds them from the base (whose hash is checked) and loads strictly.
- ``find_checkpoint``, ``check_resume``: ``resume=auto|<file>|null`` to a file,
  and the refusals, each one line, before any model loads.

The data stream (``lp.data``'s stateful loader), optimizer, scheduler, loop
progress and the step-0 forgetting baseline (a module buffer) are Lightning's
ordinary checkpoint content.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from lp.base.checkpoint_dirs import WEIGHTS
from lp.core.config import boolean, integer, setting
from lp.core.errors import LpError
from lp.core.files import atomic_file, remove_stale

KEY = "lp"  # the checkpoint entry this module writes
NAME = re.compile(r"step-(\d+)\.ckpt")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


@dataclass
class CheckpointConfig:
    """``callbacks.checkpoint``: how often a resumable checkpoint is written, how many stay."""

    enabled: Any = setting(boolean)
    every_n_steps: int = setting(integer(1))
    keep: int | None = setting(integer(1, optional=True))


class Checkpoints:
    """Everything about a run's checkpoints and resuming it: which checkpoint to continue
    (``resume=auto|<file>|null``), each refusal before any model loads (a fixed setting
    that changed, another base or world size, an older checkpoint where newer ones are),
    the callbacks and the plugin that write them (``callbacks.checkpoint``), and the step a
    resumed run continues from. ``settings``: the run's fixed settings (``lp.schemas``)."""

    def __init__(self, resume, run_dir: Path, settings: Mapping[str, Any], config) -> None:
        self.run_dir, self.settings, self.config = Path(run_dir), dict(settings), config
        self.path = find_checkpoint(resume, self.run_dir)
        self.saved = read_saved(self.path) if self.path else None
        self.base: dict | None = None
        if self.saved:
            check_resume(self.saved, self.settings, self.path)
            check_no_newer(self.saved, self.run_dir, self.path)

    @property
    def step(self) -> int:
        """The step the run continues from (0: a fresh start)."""
        return self.saved["global_step"] if self.saved else 0

    def check_base(self, name: str) -> None:
        """The base's path and content hash: recorded in checkpoints, compared on resume."""
        if self.saved or self.config.enabled:
            self.base = base_reference(name)
        if self.saved:
            check_base(self.saved, self.base, self.path)

    def check_world_size(self, trainer) -> None:
        if self.saved:  # the Trainer knows the world size before any model loads
            check_world_size(self.saved, trainer.num_nodes * trainer.num_devices, self.path)
            resumed_note(self.path, self.step)

    def callbacks(self) -> list:
        if not self.config.enabled:
            return []
        steps = StepCheckpoint(checkpoint_dir(self.run_dir), self.config.every_n_steps, self.config.keep)
        return [steps, Resumable(self.settings, self.base or {})]

    def plugins(self) -> list:
        return [AtomicCheckpointIO()]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the target's directory, fsync, rename.

    Lightning's own save stages the bytes in memory and then in the system temporary
    directory (fsspec's local transaction) and moves the file into place: a copy, not
    a rename, when that directory is on another file system, so a crash can leave a
    truncated checkpoint under the final name. Here the final name only ever points
    to a complete file. Hand-written: Lightning has no such plugin.

    While ``held`` (``StepCheckpoint`` sets it), saves and removals wait, in order,
    for ``release()``."""

    def __init__(self) -> None:
        self.held, self.waiting = False, []

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        if self.held:
            self.waiting.append((checkpoint, path))
            return
        with atomic_file(Path(path), durable=True) as f:
            torch.save(checkpoint, f)

    def remove_checkpoint(self, path) -> None:
        if self.held:
            self.waiting.append((None, path))
        else:
            super().remove_checkpoint(path)

    def release(self) -> None:
        """Carry out what waited (saves, then the removals they allow), in order."""
        waiting, self.waiting, held = self.waiting, [], self.held
        self.held = False
        try:
            for checkpoint, path in waiting:
                if checkpoint is None:
                    self.remove_checkpoint(path)
                else:
                    self.save_checkpoint(checkpoint, path)
        finally:
            self.held = held


class StepCheckpoint(ModelCheckpoint):
    """``step-N.ckpt`` every ``every_n_steps`` optimizer steps and after the last one;
    the ``keep`` newest stay (``None``: all), plus the one a resumed run started from
    (Lightning's rule). Lightning's documented recipe: top-k on ``step``.

    Lightning saves at the end of a step, then logs that step's metrics and runs its
    validation; a checkpoint on disk before those reach the event file would let a
    crash lose them for good (the resumed run continues after that step). So with an
    ``AtomicCheckpointIO`` the file is written at the next quiet point (the next
    batch, or the end of training), after the loggers are flushed. The state written
    is the one taken at the save: nothing changes weights or optimizer state before
    the next batch."""

    def __init__(self, dirpath: Path, every_n_steps: int = 6, keep: int | None = 2):
        super().__init__(
            dirpath=dirpath,
            filename="step-{step}",  # not step=N: a path with "=" is not one Hydra override value
            auto_insert_metric_name=False,
            monitor="step",
            mode="max",
            save_top_k=-1 if keep is None else keep,
            every_n_train_steps=every_n_steps,
            enable_version_counter=False,  # a step's file is that step's state: replaced, not versioned
        )

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            trainer.strategy.checkpoint_io.held = True
        if trainer.is_global_zero and self.dirpath:  # writes a crash cut short
            remove_stale(Path(self.dirpath) / "step-0.ckpt", every=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.commit(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step > 0 and trainer.global_step != self._last_global_step_saved:
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
        self.commit(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        io = trainer.strategy.checkpoint_io
        if isinstance(io, AtomicCheckpointIO):
            io.waiting.clear()  # the failed step's state is no state to resume from

    def commit(self, trainer) -> None:
        """Flush the loggers, then write (and prune) what the last step saved."""
        io = trainer.strategy.checkpoint_io
        if isinstance(io, AtomicCheckpointIO) and io.waiting:
            for logger in trainer.loggers:
                logger.save()
            io.release()


class Resumable(Callback):
    """Adds to every checkpoint (``checkpoint["lp"]``) the settings that cannot change
    across a resume, the base reference and the world size, and the random number
    generators' states (numpy's as a tensor, so a ``weights_only`` load reads it).

    On resume the generators are restored when the first batch starts: the data
    loaders draw their seeds from their own generators (``lp.data``), so from the
    checkpoint to the next batch nothing else draws from them in either run."""

    def __init__(self, settings: Mapping[str, Any], base: Mapping[str, Any]):
        self.settings, self.base = dict(settings), dict(base)
        self._rng: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[KEY] = {
            "settings": self.settings,
            "base": self.base,
            "world_size": trainer.world_size,
            "rng": rng_states(),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._rng = checkpoint.get(KEY, {}).get("rng")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._rng is not None:
            set_rng_states(self._rng)
            self._rng = None


def rng_states() -> dict:
    states = {
        "python": random.getstate(),
        "numpy": _numpy_state_out(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping) -> None:
    random.setstate(_tuples(states["python"]))
    np.random.set_state(_numpy_state_in(states["numpy"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _numpy_state_out(state: tuple) -> dict:
    name, keys, pos, has_gauss, gauss = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip


def _numpy_state_in(s: Mapping) -> tuple:
    return (s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# -- what a checkpoint holds of the model ------------------------------------------------


def frozen_names(module: torch.nn.Module) -> list[str]:
    """State-dict names of frozen parameters; every name of a shared one (a tied head)."""
    return [n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad]


def drop_frozen(module: torch.nn.Module, checkpoint: dict) -> None:
    """Leave frozen parameters out of ``checkpoint["state_dict"]``: they are the base's
    (hash recorded) or built from it deterministically (the expansion plan)."""
    state = checkpoint["state_dict"]
    dropped = [n for n in frozen_names(module) if n in state]
    for name in dropped:
        del state[name]
    checkpoint.setdefault(KEY, {})["frozen"] = dropped


def fill_frozen(module: torch.nn.Module, checkpoint: dict) -> None:
    """Put back the parameters ``drop_frozen`` left out, from the rebuilt model, so that
    Lightning's strict load still catches any other missing or unexpected key."""
    dropped = checkpoint.get(KEY, {}).get("frozen", [])
    frozen = set(frozen_names(module))
    params = dict(module.named_parameters(remove_duplicate=False))
    for name in dropped:
        if name not in frozen:
            raise LpError(f"the checkpoint left out {name} as frozen, but this run trains it")
        checkpoint["state_dict"][name] = params[name].detach()


# -- resume=auto|<file>|null ----------------------------------------------------------


def find_checkpoint(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to continue: ``auto`` the newest in ``<run dir>/checkpoints``
    (None when there is none: a fresh start, so one command serves the first start and
    every requeue), else the file named; ``None`` (null) a fresh start."""
    found = steps(checkpoint_dir(run_dir))
    if resume is None:
        if found:
            raise LpError(
                f"resume=null but {found[-1][1]} exists; resume=auto continues it, "
                "or choose another hydra.run.dir for a fresh run"
            )
        return None
    if resume == "auto":
        return found[-1][1] if found else None
    path = Path(str(resume)).expanduser()
    if not path.is_file():
        raise LpError(f"resume={resume} is not a file; give a step-N.ckpt, auto or null")
    return path


def steps(directory: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints in ``directory``, oldest first (a file being written has
    a temporary name, so every ``step-N.ckpt`` is complete)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := NAME.fullmatch(p.name))]
    return sorted(found)


def read_saved(path: Path) -> dict:
    """``checkpoint["lp"]`` plus its ``global_step``, read without loading the tensors' bytes."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated or foreign file: say which, in one line
        raise LpError(f"resume: {path} cannot be read as a checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or KEY not in ckpt or "settings" not in ckpt[KEY]:
        raise LpError(f"resume: {path} is not a checkpoint of lp.train")
    return {**ckpt[KEY], "global_step": int(ckpt.get("global_step", 0))}


def check_resume(saved: Mapping, settings: Mapping[str, Any], path: Path) -> None:
    """Refuse, naming the first, a fixed setting that differs from the checkpoint's. A
    setting one side lacks counts as null there: a checkpoint of an lp that had fewer
    settings resumes where the new ones are left unset."""
    old = saved["settings"]
    for key in sorted(set(old) | set(settings)):
        if old.get(key) != settings.get(key):
            raise LpError(
                f"{key}={_show(settings.get(key, _MISSING))} differs from {_show(old.get(key, _MISSING))} in "
                f"{path}; it cannot change across a resume (a new hydra.run.dir starts afresh)"
            )


def check_no_newer(saved: Mapping, run_dir: Path, path: Path) -> None:
    """Continuing an older checkpoint in a run directory that holds newer ones would mix
    two histories there (``resume=auto`` would later pick the newer, abandoned one)."""
    newer = [p for step, p in steps(checkpoint_dir(run_dir)) if step > saved["global_step"]]
    if newer:
        raise LpError(
            f"resume={path} is at step {saved['global_step']} but {newer[-1]} is newer; "
            "resume=auto continues that, or delete the newer checkpoints, or choose another hydra.run.dir"
        )


def check_world_size(saved: Mapping, world_size: int, path: Path) -> None:
    if int(saved["world_size"]) != world_size:
        raise LpError(
            f"{path} was written by {saved['world_size']} processes, this run has {world_size} "
            "(trainer.devices x trainer.num_nodes); resume with the same number"
        )


def check_base(saved: Mapping, base: Mapping, path: Path) -> None:
    if saved["base"].get("sha256") != base.get("sha256"):
        raise LpError(
            f"the base model {base['path']} is not the one {path} was trained from "
            f"({saved['base']['path']}): its weight files differ (SHA-256)"
        )


def base_reference(name_or_path: str) -> dict:
    """Where the base is and the SHA-256 of each of its weight files (None for a hub id)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return {"path": name_or_path, "sha256": None}
    files = sorted({f for pattern in WEIGHTS for f in path.glob(pattern)})
    return {"path": str(path.resolve()), "sha256": {f.name: _sha256(f) for f in files}}


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while chunk := fh.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


_MISSING = object()


def _show(v) -> str:
    return "(not set)" if v is _MISSING else repr(v) if isinstance(v, str) else str(v)


def resumed_note(path: Path, step: int) -> None:
    rank_zero_info(f"lp: resuming from {path} (step {step})")
