import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import lightning  # noqa: F401
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

import lp.schemas  # noqa: F401  (registers the config groups' schemas with Hydra, as the commands do)

# Lightning and transformers give their loggers a stream handler bound to sys.stderr when
# first imported or used; bind them to the real stderr now, not to the stream of whichever
# test first captures it (closed afterwards: in-process entry points would log into it)
hf_logging.get_logger("transformers")

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


def hydra_cli(module: str, args: list[str], monkeypatch) -> int:
    """``python -m module args`` in this process; returns the exit status. An
    exception that escapes (a traceback) fails the test."""
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", [module, *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    GlobalHydra.instance().clear()
    try:  # as `python -m`: the module runs as __main__, its last line calls run_cli(main)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code
    finally:
        GlobalHydra.instance().clear()
        # Hydra's logging handlers hold this test's captured stderr, closed after the test
        logging.getLogger().handlers.clear()
    return 0


def check_one_line(code: int, err: str, message: str) -> None:
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    progress = ("it/s]", "s/it]")  # tqdm bars of loads and saves before the refusal are not messages
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not any(p in ln for p in progress)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err[-2000:]
