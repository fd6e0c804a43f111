"""Loading base models and tokenizers: local Hugging Face directories or hub ids."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from lp.errors import LpError
from lp.expansion import ExpansionPlan

EXPANSION_FILE = "lp_expansion.json"


def attn_implementation(requested: str = "auto") -> str:
    """flash_attention_2 only when it is importable and a CUDA device is present."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def check_checkpoint(name_or_path: str) -> None:
    """Fail in one line, before any loading, on a path that is no causal-LM checkpoint."""
    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if not looks_local:
        return  # a hub id: transformers reports network or name problems itself
    if not path.is_dir():
        raise LpError(
            f"model.name_or_path={name_or_path} does not exist; give a Hugging Face checkpoint directory"
        )
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise LpError(
            f"model.name_or_path={name_or_path} has no config.json; it is not a Hugging Face checkpoint"
        )
    model_type = json.loads(cfg_file.read_text()).get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise LpError(
            f"model.name_or_path={name_or_path} is a {model_type!r} model, not a causal language model"
        )


def load_model(name_or_path: str, attn: str = "auto", dtype: str | torch.dtype = "float32"):
    check_checkpoint(name_or_path)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise LpError(f"model.name_or_path={name_or_path} is a {config.model_type!r} model, not a causal LM")
    return AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=dtype, attn_implementation=attn_implementation(attn)
    )


def load_tokenizer(name_or_path: str):
    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.eos_token_id is None:
        raise LpError(f"the tokenizer of {name_or_path} has no EOS token; lp joins documents with it")
    return tok


def read_expansion(name_or_path: str) -> ExpansionPlan | None:
    """The plan recorded next to an already expanded checkpoint, if any."""
    f = Path(name_or_path).expanduser() / EXPANSION_FILE
    return ExpansionPlan.from_dict(json.loads(f.read_text())) if f.is_file() else None
