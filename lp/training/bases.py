"""Which base a run starts from (the ``model`` config group: ``ModelConfig``): a checkpoint
directory or hub id, a GGUF file converted once, or the offline tiny base, pretrained
here once and cached.

No pretrained weights can be downloaded offline, yet forgetting is only
measurable if the base really knows a general domain. So lp trains a byte-level
BPE tokenizer and a transformers ``LlamaForCausalLM`` on the general corpus's
*training* split (the general eval set is never seen), saves them as an
ordinary Hugging Face checkpoint and reuses it on later runs. The cache key is
a hash of every setting that changes the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lp.base.models import named_base
from lp.core.config import choice, fixed, integer, number, plain, setting
from lp.core.errors import LpError
from lp.core.files import staged_dir
from lp.corpus import MixtureDataModule, build_source
from lp.corpus.sources import split
from lp.training.callbacks import FreezeCallback
from lp.training.module import CausalLMModule

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
ATTN = ("auto", "sdpa", "eager", "flash_attention_2")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class TinyConfig:
    """``model.tiny``: the tiny base's shape and pretraining (every field changes the base)."""

    cache_dir: str = setting()
    num_layers: int = setting(integer(1), fixed=True)
    hidden_size: int = setting(integer(1), fixed=True)
    num_heads: int = setting(integer(1), fixed=True)
    intermediate_size: int = setting(integer(1), fixed=True)
    vocab_size: int = setting(integer(260), fixed=True)  # above the byte alphabet and the specials
    tokenizer_chars: int = setting(integer(1), fixed=True)
    seq_len: int = setting(integer(2), fixed=True)
    batch_size: int = setting(integer(1), fixed=True)
    steps: int = setting(integer(1), fixed=True)
    lr: float = setting(number(0, open_lo=True), fixed=True)
    eval_tokens: int = setting(integer(1), fixed=True)
    seed: int = setting(integer(0), fixed=True)


@dataclass
class ModelConfig:
    """The ``model`` group: which checkpoint, and how it is loaded."""

    name_or_path: str | None = None
    gguf_file: str | None = fixed(None)
    install: str | None = None  # the command printed when the base's package is missing
    cache_dir: str | None = None
    attn: str = setting(choice(*ATTN))
    dtype: str = setting(choice(*DTYPES), fixed=True)
    tiny: TinyConfig | None = None


def resolve_base(model: Mapping, data: Mapping) -> str:
    """The checkpoint a run starts from: the one ``model`` names (``lp.base.models.named_base``:
    a directory, a hub id, a GGUF file converted once), or else the tiny offline base, built
    once on ``data``'s general corpus and cached."""
    named = named_base(model)
    if named is not None:
        return named
    if model.get("tiny") is None:
        raise LpError("model.name_or_path is empty and the model config has no tiny section to build from")
    return str(tiny_base(plain(model["tiny"]), plain(data["general"]), float(data["eval_fraction"])))


def tiny_base(tiny: dict, general: dict, eval_fraction: float) -> Path:
    """Path of the cached tiny base for these settings, building it if needed."""
    settings = {k: v for k, v in tiny.items() if k != "cache_dir"}
    key = {"tiny": settings, "general": general, "eval_fraction": eval_fraction, "format": 3}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(os.path.expanduser(str(tiny["cache_dir"])))
    target = cache / f"tiny-llama-{digest}"
    if (target / "lp_base.json").is_file():
        return target
    with staged_dir(target, keep_existing=True) as tmp:  # a concurrent builder may win the race
        info = build(settings, general, eval_fraction, tmp)
        (tmp / "lp_base.json").write_text(json.dumps({**key, **info}, indent=2))
    return target


def build(tiny: dict, general: dict, eval_fraction: float, out: Path) -> dict:
    start = time.time()
    source = build_source("general", {"domain": "general", **general})
    print(
        f"lp: building the tiny offline base once: tokenizer + {tiny['steps']} pretraining steps "
        f"on general text ({general.get('kind')}: {general.get('package', '')}); cached for later runs",
        flush=True,
    )
    tokenizer = train_tokenizer(source, tiny["vocab_size"], tiny["tokenizer_chars"], eval_fraction)
    torch.manual_seed(tiny["seed"])
    model = LlamaForCausalLM(llama_config(tiny, tokenizer))
    data = MixtureDataModule(
        tokenizer,
        sources={"general": {"domain": "general", **general}},
        general=None,
        seq_len=tiny["seq_len"],
        batch_size=tiny["batch_size"],
        eval_tokens=tiny["eval_tokens"],
        eval_fraction=eval_fraction,
        seed=tiny["seed"],
    )
    module = CausalLMModule(model, None, ("general",), "full_finetune", lr=tiny["lr"], weight_decay=0.1)
    trainer = L.Trainer(
        max_steps=tiny["steps"],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        val_check_interval=tiny["steps"],
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        inference_mode=False,
        gradient_clip_val=1.0,
        callbacks=[FreezeCallback()],
    )
    trainer.fit(module, datamodule=data)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    loss = float(trainer.callback_metrics.get("val/general/loss", float("nan")))
    print(f"lp: tiny base ready in {time.time() - start:.0f}s, general eval loss {loss:.3f}", flush=True)
    return {"general_eval_loss": loss, "build_seconds": round(time.time() - start, 1)}


def train_tokenizer(source, vocab_size: int, chars: int, eval_fraction: float) -> PreTrainedTokenizerFast:
    """Byte-level BPE on the training split of the general corpus."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def sample():
        seen = 0
        for doc in split(source.documents(0, 0), eval_fraction, want_eval=False):
            yield doc
            seen += len(doc)
            if seen >= chars:
                return

    tok.train_from_iterator(sample(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def llama_config(tiny: dict, tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny["hidden_size"],
        intermediate_size=tiny["intermediate_size"],
        num_hidden_layers=tiny["num_layers"],
        num_attention_heads=tiny["num_heads"],
        num_key_value_heads=tiny["num_heads"],
        max_position_embeddings=max(1024, tiny["seq_len"]),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
