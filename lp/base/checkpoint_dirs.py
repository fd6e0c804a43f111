"""Recognising Hugging Face checkpoint directories, cheaply.

No torch or transformers at import time, so ``python -m lp.expand`` starts in a
blink and bad input is refused before anything heavy loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lp.core.errors import LpError
from lp.core.weights import check_weight_files
from lp.expansion.arch import ARCHS
from lp.expansion.plan import EXPANSION_FILE, ExpansionPlan

WEIGHTS = ("*.safetensors", "pytorch_model*.bin")  # what transformers loads weights from


def check_checkpoint(name_or_path: str, label: str = "model.name_or_path", tokenizer: bool = False) -> None:
    """Fail in one line, before any loading, on a path that is no causal-LM checkpoint:
    no config, no weights, damaged weight files (``lp.core.weights``), or, with ``tokenizer``,
    no tokenizer files."""
    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if not looks_local:
        return  # a hub id: transformers reports network or name problems itself
    if not path.is_dir():
        raise LpError(f"{label}={name_or_path} does not exist; give a Hugging Face checkpoint directory")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise LpError(f"{label}={name_or_path} has no config.json; it is not a Hugging Face checkpoint")
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LpError(f"{label}={name_or_path}: config.json is not valid JSON ({e})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in ARCHS and not is_causal_lm(model_type):
        raise LpError(f"{label}={name_or_path} is a {model_type!r} model, not a causal language model")
    if not any(any(path.glob(pattern)) for pattern in WEIGHTS):
        raise LpError(
            f"{label}={name_or_path} has a config.json but no weights ({' or '.join(WEIGHTS)}); "
            "is the download or copy complete?"
        )
    check_weight_files(path, f"{label}={name_or_path}")
    if tokenizer:
        _check_tokenizer(path, f"{label}={name_or_path}")


def _check_tokenizer(path: Path, label: str) -> None:
    """The tokenizer transformers would load from ``path``: loaded now, so a checkpoint
    without one (weights copied alone) is refused before any work, whatever files its
    kind of tokenizer needs."""
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # missing files, a damaged tokenizer.json: one line
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise LpError(f"{label} has weights but no tokenizer that loads ({reason})") from None


# what an lp export or expansion of an earlier version (with no list of its files) holds
EARLIER = re.compile(r".*\.(safetensors|json|jinja|model|tiktoken)|merges\.txt|vocab\.txt")


def written_by_lp(path: Path) -> bool:
    """Whether a directory is one lp wrote whole (an export or an expansion): the only
    non-empty directory lp replaces. It holds ``lp_expansion.json`` and nothing but the
    files that lists (and an ``eval.json`` lp.eval put beside the model); one written
    before the list existed holds only what a Hugging Face checkpoint holds."""
    path = Path(path)
    try:
        record = json.loads((path / EXPANSION_FILE).read_text())
        entries = {p.name: p.is_file() and not p.is_symlink() for p in path.iterdir()}
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or not all(entries.values()):
        return False
    listed = record.get("files")
    if isinstance(listed, list):
        return set(entries) <= {*listed, "eval.json"}
    return all(EARLIER.fullmatch(name) for name in entries)


def is_causal_lm(model_type: str | None) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def read_expansion(name_or_path: str) -> ExpansionPlan | None:
    """The plan recorded next to an already expanded checkpoint, if any."""
    f = Path(name_or_path).expanduser() / EXPANSION_FILE
    return ExpansionPlan.from_dict(json.loads(f.read_text())) if f.is_file() else None
