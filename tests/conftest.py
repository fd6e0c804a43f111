import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]


def tiny_llama(layers: int = 4, seed: int = 0, **kw) -> LlamaForCausalLM:
    """transformers' tester scale: hidden 32, vocab 99, randomly initialised."""
    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    cfg.update(kw)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    # random init leaves o_proj/down_proj non-zero, norms at one; perturb norms too so
    # zero_norm and copies are exercised on non-trivial weights
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def lp_cache(tmp_path_factory) -> Path:
    """One tiny-base cache for the whole session, so the smoke base is built once."""
    return tmp_path_factory.mktemp("lp_cache")


def run_lp(args: list[str], cache: Path, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LP_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
