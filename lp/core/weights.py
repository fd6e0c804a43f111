"""A checkpoint's weight files, checked without loading them.

Every place that reads a checkpoint (``lp.expand``, ``lp.train model=hf``, the
instruction stage, ``lp.eval``) checks its weight files first, so a damaged
download or copy is one line naming the file and what is wrong, before anything
is written, instead of a loop that never ends (a truncated file read to its end)
or a parser's traceback:

- safetensors: the 8-byte header length fits the file, the header is a JSON
  object, every tensor's dtype is known, its byte range lies inside the data and
  matches its shape;
- a shard index (``*.index.json``): valid JSON whose shards all exist;
- ``.bin`` (torch pickles): loadable as weights (memory-mapped, nothing read).

No torch at import time (``lp.expand`` starts in a blink); the ``.bin`` check
imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

from lp.core.errors import LpError, first_line

# safetensors dtype codes: bits per element (every dtype the format defines; the sub-byte
# ones pack several elements per byte)
BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U8": 8,
        "BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "U16": 16, "U32": 32, "U64": 64, "C64": 64,
        "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4}  # fmt: skip
SIZES = {k: b // 8 for k, b in BITS.items() if b % 8 == 0}  # bytes per element, whole-byte dtypes
MAX_HEADER = 100 << 20  # the safetensors format's own limit on the header (100 MB)


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header and the offset of its data, checked: one ``LpError``
    naming the file and the fault for a file that is empty, truncated or not
    safetensors at all."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise LpError(f"{path} is empty (0 bytes); the download or copy is incomplete")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LpError(f"{path} is {size} bytes, too short for a safetensors header")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER or 8 + n > size:
            raise LpError(f"{path}: its header claims {n:,} bytes but the file has {size:,}; "
                          "it is truncated or not a safetensors file")  # fmt: skip
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise LpError(f"{path}: the safetensors header is not valid JSON; the file is damaged") from None
    if not isinstance(header, dict):
        raise LpError(f"{path}: the safetensors header is not a JSON object; the file is damaged")
    data = size - 8 - n
    for name, t in header.items():
        if name != "__metadata__":
            _check_tensor(path, name, t, data)
    return header, 8 + n


def _check_tensor(path: Path, name: str, t, data: int) -> None:
    if not isinstance(t, dict) or not {"dtype", "shape", "data_offsets"} <= set(t):
        raise LpError(f"{path}: tensor {name!r} lacks dtype, shape or data_offsets; the file is damaged")
    if t["dtype"] not in BITS:
        raise LpError(f"{path}: tensor {name!r} has dtype {t['dtype']!r}, unknown; "
                      f"known: {', '.join(BITS)}")  # fmt: skip
    offsets, shape = t["data_offsets"], t["shape"]
    if not _ints(offsets, 2) or not _ints(shape, None):
        raise LpError(f"{path}: tensor {name!r} has a malformed shape or byte range; the file is damaged")
    begin, end = offsets
    n = BITS[t["dtype"]]
    for d in shape:
        n *= d
    n = -(-n // 8)  # bytes
    if not 0 <= begin <= end or end - begin != n:
        raise LpError(f"{path}: tensor {name!r} has byte range {begin}-{end} for {n} bytes of data; "
                      "the file is damaged")  # fmt: skip
    if end > data:
        raise LpError(f"{path}: tensor {name!r} ends at byte {end:,} of data but the file holds {data:,}; "
                      "it is truncated (an interrupted download or copy?)")  # fmt: skip


def _ints(v, length: int | None) -> bool:
    ok = isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    return ok and (length is None or len(v) == length)


def check_weight_files(directory: Path, label: str) -> None:
    """Every weight file of a checkpoint directory, checked (see the module docstring)."""
    directory = Path(directory)
    for f in sorted(directory.glob("*.safetensors")):
        read_header(f)
    for f in sorted(directory.glob("*.index.json")):
        _check_index(f, label)
    for f in sorted(directory.glob("*.bin")):
        if f.name != "training_args.bin":
            _check_bin(f)


def _check_index(f: Path, label: str) -> None:
    try:
        index = json.loads(f.read_text())
        shards = set(index["weight_map"].values())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise LpError(f"{f}: not a valid shard index (JSON with a weight_map)") from None
    missing = sorted(s for s in shards if not (f.parent / s).is_file())
    if missing:
        raise LpError(f"{label}: {f.name} names {len(missing)} shard(s) that are missing, e.g. {missing[0]}")


def _check_bin(f: Path) -> None:
    if f.stat().st_size == 0:
        raise LpError(f"{f} is empty (0 bytes); the download or copy is incomplete")
    import zipfile

    import torch

    try:  # memory-mapped where the file is a zip archive (torch's format since 1.6), as transformers does
        torch.load(f, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(f))
    except Exception as e:
        raise LpError(f"{f} cannot be read as PyTorch weights ({first_line(e)[:120]})") from None
