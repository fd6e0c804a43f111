"""Base models and tokenizers: which checkpoint a run starts from, and loading it
(local Hugging Face directories, hub ids, or the tiny base built here)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lp.checkpoints import check_checkpoint, is_causal_lm
from lp.errors import LpError


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
    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.eos_token_id is None:
        raise LpError(f"the tokenizer of {name_or_path} has no EOS token; lp joins documents with it")
    return tok


def resolve_base(model: Mapping, data: Mapping) -> str:
    """The checkpoint a run starts from: ``model.name_or_path``, or else the tiny
    offline base, built once on ``data``'s general corpus and cached."""
    if model.get("name_or_path"):
        return str(model["name_or_path"])
    if model.get("tiny") is None:
        raise LpError("model.name_or_path is empty and the model config has no tiny section to build from")
    from lp.tiny import tiny_base

    return str(tiny_base(_plain(model["tiny"]), _plain(data["general"]), float(data["eval_fraction"])))


def _plain(cfg) -> dict:
    """A plain dict from a config node (OmegaConf or already plain), interpolations resolved."""
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    except ImportError:
        return dict(cfg)
