"""Loading base models and tokenizers: local Hugging Face directories or hub ids."""

from __future__ import annotations

import importlib.util

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
