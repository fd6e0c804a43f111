"""``python tests/killed_run.py WHEN [lp.train overrides]``: ``python -m lp.train`` that
kills itself with SIGKILL, as a preempted or crashed job dies (tests/training/test_checkpointing.py).

WHEN is ``step=K``: as step K+1 is about to start (K steps done), or as soon as a
checkpoint of step K or later is on disk, whichever comes first; or ``write``: halfway
through writing the first checkpoint file this process writes (bytes on disk, then death).
"""

import io
import os
import runpy
import signal
import sys

import torch

import lp.training.checkpointing


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_step(k: int) -> None:
    """Dead as step k+1 starts, or the moment a checkpoint of step k or later is on disk
    (the most a crash could lose if that file were written before its step's events)."""
    commit = lp.training.checkpointing.StepCheckpoint.on_train_batch_start
    write = lp.training.checkpointing.AtomicCheckpointIO.save_checkpoint

    def on_train_batch_start(self, trainer, *args):
        commit(self, trainer, *args)
        if trainer.global_step == k:
            die()

    def save_checkpoint(self, checkpoint, path, *args, **kwargs):
        write(self, checkpoint, path, *args, **kwargs)
        if not self.held and checkpoint["global_step"] >= k:
            die()

    lp.training.checkpointing.StepCheckpoint.on_train_batch_start = on_train_batch_start
    lp.training.checkpointing.AtomicCheckpointIO.save_checkpoint = save_checkpoint


def kill_while_writing() -> None:
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "loops" in obj and hasattr(f, "fileno"):
            buf = io.BytesIO()
            real(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            die()
        return real(obj, f, *args, **kwargs)

    torch.save = save


if __name__ == "__main__":
    when, *overrides = sys.argv[1:]
    if when.startswith("step="):
        kill_after_step(int(when.removeprefix("step=")))
    elif when == "write":
        kill_while_writing()
    else:
        raise SystemExit(f"unknown WHEN {when!r}")
    sys.argv = ["lp.train", *overrides]
    runpy.run_module("lp.train", run_name="__main__", alter_sys=True)  # as python -m lp.train
