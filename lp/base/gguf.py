"""GGUF files as base models: converted once into an ordinary Hugging Face checkpoint.

transformers loads a GGUF file by dequantising it, but marks the result as
quantised (it refuses ``save_pretrained``) and dequantises again on every load.
lp converts a GGUF file once into a cached checkpoint directory (safetensors +
config + tokenizer) keyed by the file's content hash, so that everything
downstream (expansion, training, ``lp.expand``, export) sees a plain directory,
and "frozen layers bit-identical to the base" means to that directory. The
converted float32 weights are exactly what transformers' GGUF load gives.

``model.name_or_path`` is the directory holding the file (or a hub id, or
``pkg://<package>``: the directory of an installed Python package, as
``model=smollm2`` uses), ``model.gguf_file`` its file name. A missing, non-GGUF,
truncated or unsupported file is refused in one line before anything is written.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lp.core.errors import LpError, first_line
from lp.core.files import cache_root, staged_dir
from lp.expansion.arch import ARCHS

MAGIC = b"GGUF"
MARKER = "lp_base.json"  # written last into a converted checkpoint: its presence means complete
FORMAT = 1  # bump when the conversion changes: older cache entries are then rebuilt
PACKAGE = "pkg://"
# GGUF architecture names that differ from transformers' model_type
MODEL_TYPES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str  # as the file names it (general.architecture)
    model_type: str  # transformers' name for it
    layers: int


def default_cache() -> str:
    return str(cache_root())


def locate(name_or_path: str | None, gguf_file: str, install: str | None = None) -> Path:
    """The GGUF file: ``gguf_file`` inside the directory ``name_or_path`` (a local
    directory, ``pkg://<package>`` or a hub id), or ``gguf_file`` itself when it is
    a path and ``name_or_path`` is empty."""
    label = f"model.gguf_file={gguf_file}"
    if not name_or_path:
        path = Path(gguf_file).expanduser()
    elif str(name_or_path).startswith(PACKAGE):
        path = package_dir(str(name_or_path)[len(PACKAGE) :], label, install) / gguf_file
    elif Path(name_or_path).expanduser().is_dir() or str(name_or_path).startswith((".", "/", "~")):
        path = Path(name_or_path).expanduser() / gguf_file
    else:
        path = _hub_file(str(name_or_path), gguf_file, label)
    if not path.is_file():
        raise LpError(f"{label}: {path} does not exist; give the GGUF file's name inside model.name_or_path")
    return path


def package_dir(package: str, label: str, install: str | None) -> Path:
    """Directory of an installed package, found without importing it (its
    ``__init__`` may import things lp does not need)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        how = f"; install it with: {install}" if install else ""
        raise LpError(f"{label} lives in the Python package {package!r}, which is not installed{how}")
    return Path(list(spec.submodule_search_locations)[0])


def _hub_file(repo: str, filename: str, label: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    except Exception as e:  # offline, unknown repo or file: transformers' own message, on one line
        first = first_line(e)
        raise LpError(f"{label}: cannot fetch it from {repo!r} ({first})") from None


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:  # ~0.1 s for 100 MB; cached per (path, size, mtime) in the process
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def content_hash(path: Path) -> str:
    st = path.stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)


def cache_entry(path: Path, cache_dir: str) -> Path:
    """Where the conversion of ``path`` lives: named by its content and the conversion format."""
    key = hashlib.sha256(f"{content_hash(path)}:{FORMAT}".encode()).hexdigest()[:16]
    stem = path.name.removesuffix(".gguf")
    return Path(os.path.expanduser(str(cache_dir))) / f"gguf-{stem}-{key}"


def inspect(path: Path) -> GGUFInfo:
    """Architecture and depth from the file's header, refusing in one line what lp
    cannot convert; no tensor is dequantised."""
    st = path.stat()
    return _inspect(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _inspect(path: str, size: int, mtime_ns: int) -> GGUFInfo:
    label = f"model.gguf_file={path}"
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise LpError(f"{label} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise LpError(
            f"{label}: reading GGUF files needs the gguf package: pip install 'gguf>=0.10'"
        ) from None
    try:  # parses every field and checks that each tensor's data lies inside the file (~2 s)
        reader = GGUFReader(path)
        arch = _field(reader, "general.architecture")
        layers = int(_field(reader, f"{arch}.block_count"))
    except Exception as e:
        raise LpError(f"{label} is not a readable GGUF file (truncated or corrupt: {e})") from None
    model_type = MODEL_TYPES.get(arch, arch)
    supported = supported_model_types()
    if model_type not in supported:
        raise LpError(
            f"{label} holds a {arch!r} model; lp converts GGUF files of {', '.join(sorted(supported))}"
        )
    return GGUFInfo(arch, model_type, layers)


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"no {key} field")
    return field.contents()


def supported_model_types() -> set[str]:
    """Families that transformers can load from GGUF and that lp can expand: the ``ARCHS``
    overrides and every family ``families.json`` lists as expanding."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from lp.expansion.family_table import expandable

    return set(GGUF_SUPPORTED_ARCHITECTURES) & (set(ARCHS) | expandable())


def declared_layers(path: Path, cache_dir: str) -> int:
    """Depth of the GGUF model, cheaply: from the converted checkpoint when there is
    one, else from the file's header (which also validates the file)."""
    config = cache_entry(path, cache_dir) / "config.json"
    if (config.parent / MARKER).is_file():
        return int(json.loads(config.read_text())["num_hidden_layers"])
    return inspect(path).layers


def converted_base(path: Path, cache_dir: str) -> Path:
    """The cached Hugging Face checkpoint converted from the GGUF file ``path``,
    converting it first when this content has not been converted before."""
    target = cache_entry(path, cache_dir)
    if (target / MARKER).is_file():
        return target
    info = inspect(path)  # refuses bad files before anything is written
    what = f"{path.name} ({info.architecture}, {info.layers} layers)"
    print(f"lp: converting {what} once into a Hugging Face checkpoint: {target}", flush=True)
    start = time.time()
    with staged_dir(target, keep_existing=True) as tmp:  # a concurrent converter may win the race
        convert(path, tmp)
        meta = {"gguf_file": str(path), "sha256": content_hash(path), "architecture": info.architecture}
        meta.update(format=FORMAT, convert_seconds=round(time.time() - start, 1))
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"lp: converted in {time.time() - start:.0f}s; later runs reuse it", flush=True)
    return target


def convert(path: Path, out: Path) -> None:
    """Dequantise ``path`` with transformers (float32) and save it as safetensors +
    config + tokenizer in ``out``.

    transformers keeps a ``quantization_config`` on a GGUF-loaded model and refuses
    to save it; the same architecture rebuilt from the config without it, given the
    loaded tensors (tied ones stay tied), saves and gives identical logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(out)
