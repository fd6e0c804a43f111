"""Expand a checkpoint directory into another, one tensor at a time.

Public expansion scripts load the whole model; this reads each tensor from the
source only when it is written and never holds more than one in memory, so a
70B checkpoint expands on an ordinary machine. safetensors sources are copied
byte for byte (``os.copy_file_range``: the data need not pass through Python);
``.bin`` sources are memory-mapped. The safetensors *writer* is hand-written
because the library's ``save_file`` needs every tensor of a shard in memory at
once; the format (8-byte header length, JSON header, raw little-endian data)
is small and stable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lp.core.errors import LpError
from lp.core.files import staged_dir
from lp.core.weights import BITS, SIZES, check_weight_files, read_header
from lp.expansion.arch import ArchFacts, check_init, depth_fields, init_value
from lp.expansion.facts import arch_facts
from lp.expansion.plan import EXPANSION_FILE, ExpansionPlan

INDEX = "model.safetensors.index.json"
WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|pt|pth)$|.*\.(safetensors|bin)\.index\.json$")
# safetensors dtype codes to torch's names (torch loads only when a tensor must be converted
# or computed, keeping the byte-copy path free of it); their sizes: lp.core.weights.SIZES
TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}  # fmt: skip
TORCH_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # what --dtype accepts
CHUNK = 64 << 20


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    offset: int | None  # byte offset of the data in a safetensors file; None for .bin

    @property
    def nbytes(self) -> int:
        return _nbytes_of(self.dtype, self.shape)


# ---- reading ------------------------------------------------------------------------


def source_tensors(src: Path) -> dict[str, TensorInfo]:
    """Every tensor of a checkpoint directory, without loading any data; every weight
    file is checked first (``lp.core.weights``: a damaged one is refused in one line)."""
    check_weight_files(src, "SRC")
    files = sorted(src.glob("*.safetensors"))
    if files:
        out = {}
        for f in files:
            header, base = read_header(f)
            for name, h in header.items():
                if name != "__metadata__":
                    out[name] = TensorInfo(h["dtype"], tuple(h["shape"]), f, base + h["data_offsets"][0])
        return out
    bins = sorted(p for p in src.glob("*.bin") if p.name != "training_args.bin")
    if not bins:
        raise LpError(f"{src} holds no *.safetensors or *.bin weights")
    import torch

    codes = {getattr(torch, v): k for k, v in TORCH_DTYPES.items()}
    out = {}
    for f in bins:
        for name, t in torch.load(f, mmap=True, weights_only=True, map_location="cpu").items():
            out[name] = TensorInfo(codes[t.dtype], tuple(t.shape), f, None)
    return out


_BIN_CACHE: dict[Path, dict] = {}


def _bin_tensor(info: TensorInfo, name: str):
    import torch

    if info.file not in _BIN_CACHE:  # memory-mapped: pages are read on demand, not held
        _BIN_CACHE.clear()
        _BIN_CACHE[info.file] = torch.load(info.file, mmap=True, weights_only=True, map_location="cpu")
    return _BIN_CACHE[info.file][name]


# ---- the output layout --------------------------------------------------------------

BLOCK_INDEX = re.compile(r"\.(\d+)\.")


def block_tensor(name: str, prefix: str) -> tuple[str, int, str] | None:
    """(prefix as written, block index, name below the block) of a checkpoint tensor
    of the block list ``prefix``, also when a checkpoint omits the leading part
    (GPT-2's ``h.0.`` for ``transformer.h.0.``); None for any other tensor."""
    for m in BLOCK_INDEX.finditer(name):
        head = name[: m.start()]
        if head == prefix or prefix.endswith("." + head):
            return head, int(m.group(1)), name[m.end() :]
    return None


@dataclass(frozen=True)
class OutTensor:
    name: str
    source: str
    dtype: str
    fill: float | None  # a constant (new block, zeroed tensor) instead of the source data


def output_tensors(
    tensors: dict[str, TensorInfo], plan: ExpansionPlan, facts: ArchFacts, dtype: str | None
) -> list[OutTensor]:
    prefix = facts.saved_layers or facts.layers
    by_layer: dict[int, list[int]] = {}
    for j, src in enumerate(plan.layer_map):
        by_layer.setdefault(src, []).append(j)
    new = set(plan.new_layers)
    out = []
    for name, info in tensors.items():
        block = block_tensor(name, prefix)
        to = TORCH_NAMES[dtype] if (dtype and info.dtype in ("F64", "F32", "F16", "BF16")) else info.dtype
        if block is None:
            out.append(OutTensor(name, name, to, None))
            continue
        head, i, rest = block
        for j in by_layer.get(i, []):
            fill = init_value(rest, plan.init, facts) if j in new else None
            out.append(OutTensor(f"{head}.{j}.{rest}", name, to, fill))
    return sorted(out, key=lambda t: natural_key(t.name))


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically (layers.2 before layers.10)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def shards(out: list[OutTensor], tensors: dict[str, TensorInfo], shard_size: int) -> list[list[OutTensor]]:
    groups, cur, size = [], [], 0
    for t in out:
        n = _nbytes(t, tensors)
        if cur and size + n > shard_size:
            groups.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += n
    return [*groups, cur] if cur else groups


def _nbytes(t: OutTensor, tensors: dict[str, TensorInfo]) -> int:
    return _nbytes_of(t.dtype, tensors[t.source].shape)


# ---- writing ------------------------------------------------------------------------


def write_shard(path: Path, group: list[OutTensor], tensors: dict[str, TensorInfo]) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for t in group:
        n = _nbytes(t, tensors)
        header[t.name] = {
            "dtype": t.dtype,
            "shape": list(tensors[t.source].shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in group:
            _write_tensor(f, t, tensors[t.source])


def _write_tensor(f: BinaryIO, t: OutTensor, info: TensorInfo) -> None:
    n = _nbytes_of(t.dtype, info.shape)
    if t.fill is not None:
        one = _constant_bytes(t.fill, t.dtype)
        block = one * (min(n, CHUNK) // len(one))
        for start in range(0, n, len(block)):
            f.write(block[: n - start])
    elif t.dtype == info.dtype and info.offset is not None:
        _copy_range(info.file, info.offset, n, f)
    else:
        import torch

        tensor = _load(info, t.source).to(getattr(torch, TORCH_DTYPES[t.dtype])).contiguous()
        f.write(tensor.view(-1).view(torch.uint8).numpy().tobytes())


def _constant_bytes(value: float, dtype: str) -> bytes:
    if value == 0:
        return b"\0" * SIZES.get(dtype, 1)  # zero is all-zero bytes in every dtype (packed ones too)
    import torch

    one = torch.full((1,), value, dtype=getattr(torch, TORCH_DTYPES[dtype]))
    return one.view(torch.uint8).numpy().tobytes()


def _nbytes_of(dtype: str, shape: tuple[int, ...]) -> int:
    n = BITS[dtype]
    for d in shape:
        n *= d
    return -(-n // 8)


def _load(info: TensorInfo, name: str):
    import torch

    if info.offset is None:
        return _bin_tensor(info, name)
    with open(info.file, "rb") as f:
        f.seek(info.offset)
        data = bytearray(f.read(info.nbytes))
    dtype = getattr(torch, TORCH_DTYPES[info.dtype])
    return (
        torch.frombuffer(data, dtype=dtype).view(info.shape) if data else torch.empty(info.shape, dtype=dtype)
    )


def _copy_range(src: Path, offset: int, n: int, dst: BinaryIO) -> None:
    dst.flush()
    with open(src, "rb") as s:
        done = 0
        try:  # in-kernel copy on Linux; falls back to plain reads elsewhere
            while done < n:
                k = os.copy_file_range(s.fileno(), dst.fileno(), n - done, offset + done)
                if k == 0:
                    break
                done += k
        except (AttributeError, OSError):
            pass
        if done < n:
            s.seek(offset + done)
            dst.seek(0, os.SEEK_END)
            while done < n:
                chunk = s.read(min(CHUNK, n - done))
                if not chunk:  # the file changed since its header was checked
                    raise LpError(f"{src} ends before byte {offset + n:,}; it is truncated")
                dst.write(chunk)
                done += len(chunk)
    dst.seek(0, os.SEEK_END)


# ---- the whole directory ------------------------------------------------------------


def expand_checkpoint(
    src: Path,
    dst: Path,
    plan: ExpansionPlan,
    shard_size: int,
    dtype: str | None = None,
    force: bool = False,
    verify: bool = True,
    owned=None,
) -> Path:
    """Write the expanded checkpoint to ``dst`` (built beside it, renamed at the end);
    with ``verify``, only once its logits are proved equal to the base's. ``force``: an
    existing ``dst`` is replaced if it is empty or ``owned(dst)`` (asked at the swap)."""
    config = json.loads((src / "config.json").read_text())
    facts = arch_facts(config)
    check_init(plan, facts)
    tensors = source_tensors(src)
    out = output_tensors(tensors, plan, facts, dtype)
    with staged_dir(dst, replace=force, owned=owned) as tmp:
        groups = shards(out, tensors, shard_size)
        weight_map = {}
        for k, group in enumerate(groups, 1):
            name = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
            write_shard(tmp / name, group, tensors)
            weight_map.update({t.name: name for t in group})
        total = sum(_nbytes(t, tensors) for t in out)
        (tmp / INDEX).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
        _copy_side_files(src, tmp)
        (tmp / "config.json").write_text(
            json.dumps(expanded_config(config, plan, facts, dtype), indent=2) + "\n"
        )
        plan.write(tmp, base_model=str(src))
        if verify:
            from lp.expansion.verify import verify_expansion  # torch: only when checking

            verify_expansion(src, tmp, plan, dtype)
    return dst


def depth_key(config: dict) -> str:
    """The config.json key of the depth (GPT-2's ``n_layer`` for ``num_hidden_layers``)."""
    if "num_hidden_layers" in config:
        return "num_hidden_layers"
    from transformers import CONFIG_MAPPING  # configuration classes only: no torch

    cls = CONFIG_MAPPING[config.get("model_type")]
    return getattr(cls, "attribute_map", {}).get("num_hidden_layers", "num_hidden_layers")


def expanded_config(config: dict, plan: ExpansionPlan, facts: ArchFacts, dtype: str | None) -> dict:
    fields = depth_fields(config.get, plan, facts)
    fields[depth_key(config)] = fields.pop("num_hidden_layers")
    config = {**config, **fields}
    if dtype:
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = dtype
    return config


def _copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, generation config and any other non-weight file, as they are."""
    for p in src.iterdir():
        if p.is_file() and not WEIGHT_FILE.match(p.name) and p.name not in ("config.json", EXPANSION_FILE):
            shutil.copy2(p, dst / p.name)
