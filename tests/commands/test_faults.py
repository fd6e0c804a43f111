"""Faults injected into every entry point (lp.train, lp.expand, lp.eval, lp.data, lp.report):
damaged and zero-byte weight files, outputs that are, hold or lie inside the input,
read-only and full locations (small tmpfs mounts, where this machine allows them), a
SIGKILL while writing. Each case: one ``error:`` line naming the file or setting, exit
status 2, no traceback, nothing under a final name, no temporary left, and the input
directory byte-identical afterwards (every file hashed). Each case has a time limit: a
hang is a failure."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, check_one_line, hydra_cli, tiny_llama

LIMIT = pytest.mark.timeout(120)


# -- inputs -----------------------------------------------------------------------------


def base_dir(tmp: Path, name: str = "base") -> Path:
    """A small Llama checkpoint with a tokenizer file (~200 KB)."""
    d = tmp / name
    tiny_llama(4).save_pretrained(d)
    (d / "tokenizer_config.json").write_text('{"model_max_length": 128}')
    return d


def weights(d: Path) -> Path:
    return d / "model.safetensors"


def truncate(d: Path) -> Path:
    f = weights(d)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return f


def zero_bytes(d: Path) -> Path:
    weights(d).write_bytes(b"")
    return weights(d)


def bad_header_length(d: Path) -> Path:
    f = weights(d)
    data = f.read_bytes()
    f.write_bytes((1 << 40).to_bytes(8, "little") + data[8:])
    return f


def header_not_json(d: Path) -> Path:
    f = weights(d)
    data = bytearray(f.read_bytes())
    data[8:12] = b"#!?x"
    f.write_bytes(bytes(data))
    return f


def unknown_dtype(d: Path) -> Path:
    f = weights(d)
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + n].replace(b'"F32"', b'"Q99"', 1)
    f.write_bytes(data[:8] + header + data[8 + n :])
    return f


def missing_shard(d: Path) -> Path:
    f = d / "model.safetensors.index.json"
    f.write_text(
        json.dumps({"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})
    )
    return f


DAMAGES = {
    "truncated": (truncate, "truncated"),
    "zero bytes": (zero_bytes, "is empty (0 bytes)"),
    "header length": (bad_header_length, "its header claims"),
    "header not json": (header_not_json, "header is not valid JSON"),
    "unknown dtype": (unknown_dtype, "dtype 'Q99', unknown"),
    "missing shard": (missing_shard, "shard(s) that are missing"),
}


def tree(d: Path) -> dict[str, str]:
    """Every file under ``d``, by relative path, with its SHA-256."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def no_temporaries(d: Path) -> list[str]:
    return sorted(str(p) for p in d.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


# -- places that cannot be written --------------------------------------------------------


def _mount(path: Path, size: str, read_only: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'mount failed'}): not tested here")
    if read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


@pytest.fixture
def read_only(tmp_path):
    """A directory on a read-only file system (a tmpfs remounted read-only; as root, file
    permissions would not stop a write)."""
    d = tmp_path / "ro"
    _mount(d, "1m", read_only=True)
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def full(tmp_path):
    """A directory on a 64 KB file system: anything larger fills it."""
    d = tmp_path / "full"
    _mount(d, "64k", read_only=False)
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


# -- lp.expand ----------------------------------------------------------------------------


def expand(capsys, *args) -> tuple[int, str]:
    from lp.expand import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@LIMIT
@pytest.mark.parametrize("damage", DAMAGES)
def test_lp_expand_names_a_damaged_weight_file_before_writing(damage, tmp_path, capsys):
    src = base_dir(tmp_path)
    make, message = DAMAGES[damage]
    bad = make(src)
    before = tree(src)
    code, err = expand(capsys, src, tmp_path / "dst", "--blocks", "2")
    check_one_line(code, err, message)
    assert bad.name in err
    assert tree(src) == before and not (tmp_path / "dst").exists() and not no_temporaries(tmp_path)


def _inside(t: Path) -> tuple[Path, Path]:
    src = base_dir(t)
    return src, src / "out"


def _parent(t: Path) -> tuple[Path, Path]:
    src = base_dir(t / "p")
    return src, t / "p"


def _same(t: Path) -> tuple[Path, Path]:
    src = base_dir(t)
    return src, src


def _link(t: Path) -> tuple[Path, Path]:
    src = base_dir(t)
    (t / "link").symlink_to(src)
    return src, t / "link"


DATA_LOSS = {
    "equal": (_same, "is the input"),
    "inside": (_inside, "lies inside the input"),
    "above": (_parent, "contains the input"),
    "symlink to the input": (_link, "is the input"),
}


@LIMIT
@pytest.mark.parametrize("case", DATA_LOSS)
def test_lp_expand_never_writes_over_its_input_even_with_force(case, tmp_path, capsys):
    make, message = DATA_LOSS[case]
    src, dst = make(tmp_path)
    before = tree(tmp_path)
    code, err = expand(capsys, src, dst, "--blocks", "2", "--force")
    check_one_line(code, err, message)
    assert tree(tmp_path) == before and not no_temporaries(tmp_path)


@LIMIT
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d.write_text("mine"), "exists and is not a directory"),
        (lambda d: (d.mkdir(), (d / "notes.txt").write_text("mine")), "holds files lp did not write"),
    ],
    ids=["a file", "a foreign directory"],
)
def test_lp_expand_force_replaces_only_what_lp_wrote(make, message, tmp_path, capsys):
    src, dst = base_dir(tmp_path), tmp_path / "dst"
    make(dst)
    before = tree(tmp_path)
    code, err = expand(capsys, src, dst, "--blocks", "2", "--force")
    check_one_line(code, err, message)
    assert tree(tmp_path) == before and not no_temporaries(tmp_path)


@LIMIT
def test_lp_expand_force_replaces_an_expansion_or_an_empty_directory(tmp_path, capsys):
    src, dst = base_dir(tmp_path), tmp_path / "dst"
    dst.mkdir()
    check_one_line(*expand(capsys, src, dst, "--blocks", "1", "--no-verify"), "exists; pass --force")
    assert expand(capsys, src, dst, "--blocks", "1", "--no-verify", "--force")[0] == 0  # empty
    assert expand(capsys, src, dst, "--blocks", "2", "--no-verify", "--force")[0] == 0  # lp's own
    assert json.loads((dst / "lp_expansion.json").read_text())["new_layers"] == [2, 5]
    assert not no_temporaries(tmp_path)
    (dst / "notes.txt").write_text("mine")  # a file of the user's inside lp's directory: it stays
    before = tree(tmp_path)
    code, err = expand(capsys, src, dst, "--blocks", "1", "--no-verify", "--force")
    check_one_line(code, err, "holds files lp did not write")
    assert tree(tmp_path) == before


@LIMIT
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--blocks", "-1"], "--blocks -1 is too small"),
        (["--blocks", "2", "--position", "1,99"], "--position index 99"),
        (["--blocks", "x"], "--blocks: invalid int value"),
    ],
)
def test_lp_expand_names_its_flags_as_typed(flags, message, tmp_path, capsys):
    src = base_dir(tmp_path)
    if flags[1] == "x":  # argparse's own refusal: one line too (usage aside), exit 2
        with pytest.raises(SystemExit) as e:
            expand(capsys, src, tmp_path / "dst", *flags)
        assert e.value.code == 2 and message in capsys.readouterr().err
        return
    code, err = expand(capsys, src, tmp_path / "dst", *flags)
    check_one_line(code, err, message)
    assert "expansion." not in err and not (tmp_path / "dst").exists()


@LIMIT
def test_lp_expand_into_a_read_only_place_is_one_line(read_only, tmp_path, capsys):
    src = base_dir(tmp_path)
    code, err = expand(capsys, src, read_only / "dst", "--blocks", "2")
    check_one_line(code, err, "read-only file system")


@LIMIT
def test_lp_expand_onto_a_full_disk_is_one_line_and_leaves_nothing(full, tmp_path, capsys):
    src = base_dir(tmp_path)
    before = tree(src)
    code, err = expand(capsys, src, full / "dst", "--blocks", "2", "--no-verify")
    check_one_line(code, err, "No space left on device")
    assert str(full / "dst") in err
    assert list(full.iterdir()) == [] and tree(src) == before


@LIMIT
def test_lp_expand_killed_while_writing_leaves_no_output_and_the_next_run_cleans_up(tmp_path):
    src, dst = base_dir(tmp_path), tmp_path / "dst"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lp.expand", str(src), str(dst), "--blocks", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".dst.tmp-") and any(p.iterdir()) for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "lp.expand ended before it was killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # the shards are being written or verified
    proc.wait()
    assert not dst.exists() and no_temporaries(tmp_path)
    before = tree(src)
    from lp.expand import main

    assert main([str(src), str(dst), "--blocks", "2", "--no-verify"]) == 0
    assert no_temporaries(tmp_path) == [] and tree(src) == before


def test_a_stale_temporary_of_a_dead_writer_goes_and_a_live_one_stays(tmp_path):
    from lp.core.files import _host, remove_stale, write_atomic

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid, host = int(dead.stdout), _host()
    (tmp_path / f".report.md.tmp-{host}.{pid}-ab12.tmp").write_text("half")
    live = [
        f".report.md.tmp-{host}.{os.getppid()}-cd34.tmp",  # a live writer here
        f".report.md.tmp-{'0' * 8}.{pid}-ef56.tmp",
    ]  # one on another machine: no local check sees it
    for name in live:
        (tmp_path / name).write_text("a live writer's")
    (tmp_path / f".export.old-{host}.{pid}").mkdir()
    (tmp_path / f".export.old-{host}.{pid}/model.safetensors").write_text("the last complete export")
    write_atomic(tmp_path / "report.md", "new")
    remove_stale(tmp_path / "export")  # the export went missing mid-swap: its last version comes back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report.md", *live, "export"])
    assert (tmp_path / "export/model.safetensors").read_text() == "the last complete export"


# -- lp.train -----------------------------------------------------------------------------


def train(monkeypatch, capsys, lp_cache, *args) -> tuple[int, str]:
    monkeypatch.setenv("LP_CACHE", str(lp_cache))
    capsys.readouterr()
    code = hydra_cli("lp.train", ["debug=smoke", *map(str, args)], monkeypatch)
    return code, capsys.readouterr().err


@LIMIT
@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "unknown dtype"])
def test_lp_train_names_a_damaged_base_before_anything_runs(damage, lp_cache, tmp_path, monkeypatch, capsys):
    src = base_dir(tmp_path)
    make, message = DAMAGES[damage]
    make(src)
    before = tree(src)
    code, err = train(
        monkeypatch,
        capsys,
        lp_cache,
        "model=hf",
        f"model.name_or_path={src}",
        f"hydra.run.dir={tmp_path}/run",
    )
    check_one_line(code, err, message)
    assert tree(src) == before and not (tmp_path / "run").exists()


@LIMIT
def test_lp_train_refuses_a_base_without_a_tokenizer(lp_cache, tmp_path, monkeypatch, capsys):
    src = base_dir(tmp_path)
    (src / "tokenizer_config.json").unlink()
    code, err = train(
        monkeypatch,
        capsys,
        lp_cache,
        "model=hf",
        f"model.name_or_path={src}",
        "stage=sft",
        f"hydra.run.dir={tmp_path}/run",
    )
    check_one_line(code, err, "has weights but no tokenizer")
    assert not (tmp_path / "run").exists()


@LIMIT
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_lp_train_on_a_gpu_setting_without_a_gpu_is_one_line(lp_cache, tmp_path, monkeypatch, capsys):
    code, err = train(monkeypatch, capsys, lp_cache, "trainer=gpu", f"hydra.run.dir={tmp_path}/run")
    check_one_line(code, err, "trainer.accelerator=gpu needs a CUDA GPU")
    assert not (tmp_path / "run").exists()


@LIMIT
def test_lp_train_into_a_read_only_place_is_one_line(read_only, lp_cache, monkeypatch, capsys):
    code, err = train(monkeypatch, capsys, lp_cache, f"hydra.run.dir={read_only}/run")
    check_one_line(code, err, "Read-only file system")


@LIMIT
def test_lp_train_refuses_to_replace_a_foreign_export_before_training(
    lp_cache, tmp_path, monkeypatch, capsys
):
    (tmp_path / "run/export").mkdir(parents=True)
    (tmp_path / "run/export/notes.txt").write_text("mine")
    before = tree(tmp_path / "run")
    code, err = train(monkeypatch, capsys, lp_cache, f"hydra.run.dir={tmp_path}/run")
    check_one_line(code, err, "holds files lp did not write")
    assert {k: v for k, v in tree(tmp_path / "run").items() if not k.endswith(".log")} == before


@pytest.fixture(scope="module")
def checkpointed(lp_cache, tmp_path_factory):
    """A finished smoke run with a checkpoint, and a stale export temporary a kill left."""
    run_dir = tmp_path_factory.mktemp("checkpointed") / "run"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "lp.train",
            "debug=smoke",
            "callbacks.checkpoint.enabled=true",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LP_CACHE": str(lp_cache), "HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return run_dir


@LIMIT
@pytest.mark.parametrize(
    "override, message",
    [
        ("expansion.blocks=2", "expansion.blocks=2 differs from 8"),
        ("data.seq_len=32", "data.seq_len=32 differs"),
        ("strategy=ddp trainer.devices=2 trainer.accelerator=cpu", "written by 1 processes"),
    ],
)
def test_a_refused_resume_leaves_the_run_directory_byte_identical(
    override, message, checkpointed, lp_cache, monkeypatch, capsys
):
    before = {k: v for k, v in tree(checkpointed).items() if not k.endswith(".log")}
    assert ".hydra/config.yaml" in before and ".hydra/overrides.yaml" in before
    code, err = train(
        monkeypatch,
        capsys,
        lp_cache,
        "callbacks.checkpoint.enabled=true",
        *override.split(),
        f"hydra.run.dir={checkpointed}",
    )
    check_one_line(code, err, message)
    assert {k: v for k, v in tree(checkpointed).items() if not k.endswith(".log")} == before


@LIMIT
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_no_partial_file(
    lp_cache, tmp_path, monkeypatch, capsys
):
    d = tmp_path / "small"
    _mount(d, "1m", read_only=False)  # the run's logs fit; a 4 MB checkpoint does not
    try:
        code, err = train(
            monkeypatch, capsys, lp_cache, "callbacks.checkpoint.enabled=true", f"hydra.run.dir={d}/run"
        )
        check_one_line(code, err, "No space left on device")
        assert "step-4.ckpt" in err
        assert not list((d / "run").rglob("*.ckpt")) and not no_temporaries(d)
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@LIMIT
def test_the_next_run_removes_what_a_killed_export_left(checkpointed, lp_cache, monkeypatch, capsys):
    from lp.core.files import _host

    stale = checkpointed / f".export.tmp-{_host()}.99999999-x1"  # no such process
    stale.mkdir()
    (stale / "model.safetensors").write_text("half an export")
    code, err = train(
        monkeypatch,
        capsys,
        lp_cache,
        "callbacks.checkpoint.enabled=true",
        "trainer.max_steps=5",
        f"hydra.run.dir={checkpointed}",
    )
    assert code == 0, err[-2000:]
    assert not stale.exists() and (checkpointed / "export/lp_expansion.json").is_file()


# -- lp.eval, lp.data, lp.report ------------------------------------------------------------


@LIMIT
@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda t: ["out=" + str((t / "file.txt", (t / "file.txt").write_text("mine"))[0])],
            "is not a directory",
        ),
        (lambda t: ["device=cuda"], "device=cuda needs a CUDA GPU"),
        (lambda t: ["device=cuda:3"], "device=cuda:3"),
        (
            lambda t: ["model=hf", f"model.name_or_path={(lambda d: (truncate(d), d)[1])(base_dir(t))}"],
            "truncated",
        ),
        (
            lambda t: ["model=hf", f"model.name_or_path={(lambda d: (zero_bytes(d), d)[1])(base_dir(t))}"],
            "is empty (0 bytes)",
        ),
    ],
    ids=["out is a file", "no cuda", "no such cuda device", "truncated weights", "zero-byte weights"],
)
def test_lp_eval_refuses_before_the_suite_runs(make, message, tmp_path, monkeypatch, capsys):
    import torch

    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("LP_CACHE", str(tmp_path / "cache"))
    args = make(tmp_path)
    before = tree(tmp_path)
    out = [] if any(a.startswith("out=") for a in args) else [f"out={tmp_path}/evalout"]
    code = hydra_cli("lp.eval", [*args, *out, f"hydra.run.dir={tmp_path}/run"], monkeypatch)
    check_one_line(code, capsys.readouterr().err, message)
    assert tree(tmp_path) == before and not (tmp_path / "cache").exists()


@LIMIT
def test_lp_eval_into_a_read_only_place_is_one_line(read_only, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LP_CACHE", str(tmp_path / "cache"))
    code = hydra_cli("lp.eval", [f"out={read_only}/eval", f"hydra.run.dir={tmp_path}/run"], monkeypatch)
    check_one_line(code, capsys.readouterr().err, "read-only file system")
    assert not (tmp_path / "cache").exists()


@LIMIT
@pytest.mark.parametrize(
    "target, message",
    [
        (lambda t, ro: t.mkdir() or t, "is a directory"),
        (lambda t, ro: ro / "inspect.json", "read-only file system"),
        (lambda t, ro: (t.write_text("a file"), t / "inspect.json")[1], "is not a directory"),
    ],
    ids=["a directory", "read-only", "under a file"],
)
def test_lp_data_checks_where_its_json_goes_before_drawing(target, message, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    if "read-only" in message:
        _mount(ro, "1m", read_only=True)
    try:
        out = target(tmp_path / "inspect", ro)
        monkeypatch.setenv("LP_CACHE", str(tmp_path / "cache"))
        code = hydra_cli("lp.data", ["model=tiny", f"inspect.json={out}"], monkeypatch)
        check_one_line(code, capsys.readouterr().err, message)
        assert not (tmp_path / "cache").exists()  # refused before the tiny base was built
    finally:
        if "read-only" in message:
            subprocess.run(["umount", "-l", str(ro)], check=False)


def a_sweep(tmp: Path) -> Path:
    """A run directory as lp.report reads it: events and a Hydra config."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp / "sweep/0_run"
    with SummaryWriter(str(run / "tb")) as w:
        for step, (code, general) in enumerate([(2.0, 3.0), (1.5, 3.1)]):
            w.add_scalar("val/code/loss", code, step * 5)
            w.add_scalar("val/general/loss", general, step * 5)
            w.add_scalar("forgetting/general", general - 3.0, step * 5)
    (run / ".hydra").mkdir()
    (run / ".hydra/config.yaml").write_text("seed: 0\n")
    return tmp / "sweep"


@LIMIT
def test_lp_report_into_a_read_only_place_is_one_line(read_only, tmp_path, capsys):
    from lp.report import main

    sweep = a_sweep(tmp_path)
    before = tree(sweep)
    check_one_line(
        main([str(sweep), "--out", str(read_only / "rep")]), capsys.readouterr().err, "read-only file system"
    )
    assert tree(sweep) == before


@LIMIT
def test_lp_report_onto_a_full_disk_is_one_line_and_leaves_no_temporary(full, tmp_path, capsys):
    from lp.report import main

    sweep = a_sweep(tmp_path)
    check_one_line(main([str(sweep), "--out", str(full)]), capsys.readouterr().err, "No space left on device")
    assert not no_temporaries(full)
    for f in full.iterdir():  # what was written is whole: never a half file under a final name
        assert f.suffix in (".md", ".csv", ".png") and f.stat().st_size > 0


@LIMIT
def test_lp_report_names_a_damaged_run_config(tmp_path, capsys):
    from lp.report import main

    sweep = a_sweep(tmp_path)
    (sweep / "0_run/.hydra/config.yaml").write_text("seed: [unclosed\n")
    code = main([str(sweep), "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    check_one_line(code, err, "unreadable")
    assert ".hydra/config.yaml" in err and "event files" not in err


# -- chat data ------------------------------------------------------------------------------


@LIMIT
def test_chat_rows_with_only_empty_assistant_turns_are_refused(tmp_path, monkeypatch, capsys):
    f = tmp_path / "chat.jsonl"
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}
    f.write_text("\n".join(json.dumps(row) for _ in range(3)) + "\n")
    monkeypatch.setenv("LP_CACHE", str(tmp_path / "cache"))
    code = hydra_cli(
        "lp.train",
        [
            "model=tiny",
            "stage=sft",
            "data=chat_local",
            f"data.sources.chat.files={f}",
            f"hydra.run.dir={tmp_path}/run",
        ],
        monkeypatch,
    )
    check_one_line(code, capsys.readouterr().err, "every assistant turn in")
    assert not (tmp_path / "run").exists()
