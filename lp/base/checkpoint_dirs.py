"""Recognising Hugging Face checkpoint directories, cheaply.

No torch or transformers at import time, so ``python -m lp.expand`` starts in a
blink and bad input is refused before anything heavy loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from lp.core.errors import LpError
from lp.core.weights import check_weight_files
from lp.expansion.arch import ARCHS
from lp.expansion.plan import EXPANSION_FILE, ExpansionPlan

WEIGHTS = ("*.safetensors", "pytorch_model*.bin")  # what transformers loads weights from


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "tokenizer.tiktoken")  # fmt: skip


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
    if tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise LpError(f"{label}={name_or_path} has weights but no tokenizer ({', '.join(TOKENIZER_FILES)}); "
                      "copy the base's tokenizer files next to them")  # fmt: skip


def written_by_lp(path: Path) -> bool:
    """Whether a directory is an lp export or expansion (it holds ``lp_expansion.json``):
    the only non-empty directory lp replaces."""
    return (Path(path) / EXPANSION_FILE).is_file()


def is_causal_lm(model_type: str | None) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def read_expansion(name_or_path: str) -> ExpansionPlan | None:
    """The plan recorded next to an already expanded checkpoint, if any."""
    f = Path(name_or_path).expanduser() / EXPANSION_FILE
    return ExpansionPlan.from_dict(json.loads(f.read_text())) if f.is_file() else None
