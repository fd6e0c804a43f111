"""Base models and tokenizers: which checkpoint a run starts from, and loading it
(local Hugging Face directories, hub ids, GGUF files converted once, or the tiny
base built here)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lp.base.checkpoint_dirs import check_checkpoint, is_causal_lm
from lp.core.errors import LpError, first_line


def attn_implementation(requested: str = "auto") -> str:
    """flash_attention_2 only when it is importable and a CUDA device is present."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_model(name_or_path: str, attn: str = "auto", dtype: str | torch.dtype = "float32"):
    check_checkpoint(name_or_path)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    config = AutoConfig.from_pretrained(name_or_path)
    if not is_causal_lm(config.model_type):
        raise LpError(f"model.name_or_path={name_or_path} is a {config.model_type!r} model, not a causal LM")
    return AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=dtype, attn_implementation=attn_implementation(attn)
    )


def load_tokenizer(name_or_path: str):
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError, KeyError) as e:  # missing or damaged tokenizer files
        raise LpError(f"the tokenizer of {name_or_path} cannot be loaded: {first_line(e)[:160]}") from None
    if tok.eos_token_id is None:
        raise LpError(f"the tokenizer of {name_or_path} has no EOS token; lp joins documents with it")
    return tok


def named_base(model: Mapping) -> str | None:
    """The checkpoint ``model`` names: the conversion of ``model.gguf_file`` (converted
    once and cached), else ``model.name_or_path``; None where neither is given (the tiny
    base, which ``lp.training.bases.resolve_base`` builds)."""
    if model.get("gguf_file"):
        from lp.base.gguf import converted_base

        return str(converted_base(gguf_source(model), gguf_cache(model)))
    if model.get("name_or_path"):
        return str(model["name_or_path"])
    return None


def gguf_source(model: Mapping) -> Path | None:
    """The GGUF file ``model.gguf_file`` names (inside ``model.name_or_path``), located;
    None when the model is no GGUF file. Refuses a missing file or package in one line."""
    if not model.get("gguf_file"):
        return None
    from lp.base.gguf import locate

    return locate(model.get("name_or_path"), str(model["gguf_file"]), model.get("install"))


def gguf_cache(model: Mapping) -> str:
    from lp.base.gguf import default_cache

    return str(model.get("cache_dir") or default_cache())


def declared_layers(model: Mapping) -> int | None:
    """The base's depth, known before loading it (to validate the expansion early):
    from a GGUF header or converted copy, a local config.json, or the tiny settings;
    None for a hub id."""
    gguf = gguf_source(model)
    if gguf is not None:
        from lp.base.gguf import declared_layers as gguf_layers

        return gguf_layers(gguf, gguf_cache(model))
    name = model.get("name_or_path")
    if not name:
        return int(model["tiny"]["num_layers"])
    config = Path(str(name)).expanduser() / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("num_hidden_layers")
    return None
