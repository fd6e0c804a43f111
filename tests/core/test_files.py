"""Writes that readers never see half done (lp.core.files), with ordinary permissions."""

import os
import stat

import pytest

from lp.core.errors import LpError
from lp.core.files import staged_dir, write_atomic


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    write_atomic(target, "old")
    write_atomic(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o666 & ~umask()  # not mkstemp's 0600

    def crash(*args):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomic(target, "half")
    monkeypatch.undo()
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_staged_dir_publishes_only_complete_directories(tmp_path):
    dst = tmp_path / "export"
    with pytest.raises(RuntimeError), staged_dir(dst) as tmp:
        (tmp / "model.safetensors").write_text("partial")
        raise RuntimeError("interrupted")
    assert not dst.exists() and list(tmp_path.iterdir()) == []
    with staged_dir(dst) as tmp:
        (tmp / "model.safetensors").write_text("v1")
    assert (dst / "model.safetensors").read_text() == "v1" and mode(dst) == 0o777 & ~umask()  # not 0700
    with pytest.raises(LpError, match="exists"), staged_dir(dst) as tmp:
        (tmp / "model.safetensors").write_text("v2")
    with staged_dir(dst, keep_existing=True) as tmp:  # a cache another builder filled first
        (tmp / "model.safetensors").write_text("v2")
    assert (dst / "model.safetensors").read_text() == "v1"
    with pytest.raises(LpError, match="lp did not write"), staged_dir(dst, replace=True) as tmp:
        (tmp / "model.safetensors").write_text("v3")  # not empty, and nothing says it is lp's
    assert (dst / "model.safetensors").read_text() == "v1"
    with staged_dir(dst, replace=True, owned=lambda d: True) as tmp:
        (tmp / "model.safetensors").write_text("v3")
    assert (dst / "model.safetensors").read_text() == "v3" and sorted(p.name for p in tmp_path.iterdir()) == [
        "export"
    ]
