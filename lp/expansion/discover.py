"""Find a family's expansion facts from the model itself, on a tiny random copy.

The copy is built from the family's own config class with the widths shrunk
(depth and every flag kept), so it has the same kinds of blocks as the real
model at a few kilobytes. On it lp:

1. expands two blocks with every tensor of the new blocks zeroed and requires
   the logits to equal the base model's exactly (else: refused, the block is no
   residual update, e.g. a norm after the residual add);
2. restores the tensors one at a time, norms first, and keeps zeroed only those
   whose restoration breaks the identity: what writes into the residual stream
   (output projections and their biases, expert and shared-expert down
   projections, a norm after a sub-layer where nothing else can be zeroed);
3. proves the result again from the *rebuilt* config (per-layer fields
   remapped) and with a KV cache (layer-index attributes renumbered), and finds
   the names the zeroed tensors have in saved checkpoints.

What cannot be done safely is refused with a one-line reason. Results are
cached per config in-process.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lp.core.errors import LpError, first_line
from lp.expansion.arch import ArchFacts, init_value
from lp.expansion.blocks import insert_blocks
from lp.expansion.plan import make_plan


class Refused(LpError):
    """The family is a causal LM, but lp cannot expand it with a proven identity."""


class NotBuildable(LpError):
    """No tiny model of the family can be built from its config class (e.g. multimodal)."""


# canonical name -> tiny value; set only where the config has the field (not None)
SHRINK = {
    "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 8, "vocab_size": 99, "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4,
    "num_experts_per_tok": 2, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 32,
    "n_group": 1, "topk_group": 1, "q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8, "v_head_dim": 8, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "d_model": 32, "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
    "sliding_window": 4, "attention_chunk_size": 4, "ffn_hidden_size": 64, "n_inner": 64, "rotary_dim": 4,
}  # fmt: skip
TOKENS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id")
MAX_PARAMS = 1_000_000  # a family that stays bigger than this once shrunk is no tiny copy
DEPTH = 4  # layers of a family's default tiny copy
SEQ = 12


def tiny_config(config: Any, layers: int | None = None):
    """A tiny copy of ``config`` (a model_type, a ``PretrainedConfig`` or a config dict):
    widths shrunk, flags kept; depth kept too unless ``layers`` is given (a model_type
    alone gets ``DEPTH`` layers)."""
    try:
        return _tiny_config(config, layers)
    except LpError:
        raise
    except Exception as e:  # a config class that does not fit the usual field names
        raise NotBuildable(f"no tiny config: {first_line(e)}") from None


def _tiny_config(config: Any, layers: int | None):
    from transformers import CONFIG_MAPPING

    if isinstance(config, str):
        cls = CONFIG_MAPPING[config]
        try:
            d, layers = cls().to_dict(), layers or DEPTH
        except Exception as e:  # a config class without usable defaults
            raise NotBuildable(f"its config class has no valid default: {first_line(e)}") from None
    else:
        d = dict(config) if isinstance(config, dict) else config.to_dict()
        cls = CONFIG_MAPPING[d["model_type"]]
    if getattr(cls, "sub_configs", None):
        raise NotBuildable("a composite (multimodal) config, not one decoder")
    names = getattr(cls, "attribute_map", {})
    for key, value in SHRINK.items():
        real = names.get(key, key)
        if d.get(real) is not None:
            d[real] = value
    if layers is not None:
        depth = names.get("num_hidden_layers", "num_hidden_layers")
        old = [k for k, v in d.items() if isinstance(v, list) and len(v) == d[depth] and "token" not in k]
        for key in old:
            del d[key]  # per-layer lists of the old depth: the config class derives them again
        d[depth] = layers
    for i, key in enumerate(TOKENS):  # embeddings must hold the special ids
        if isinstance(d.get(key), int) and d[key] >= SHRINK["vocab_size"]:
            d[key] = i
        elif isinstance(d.get(key), list):
            d[key] = [t if t < SHRINK["vocab_size"] else i for t in d[key]]
    if isinstance(d.get("max_position_embeddings"), int):
        d["max_position_embeddings"] = min(d["max_position_embeddings"], 256)
    d["dtype"] = "float32"
    try:
        return cls.from_dict(d)
    except Exception as e:  # the config class's own validation of the shrunk widths
        raise NotBuildable(f"the shrunk config is invalid: {first_line(e)}") from None


def build(cfg, seed: int = 0) -> nn.Module:
    """A randomly initialised model of ``cfg`` in float32 with no tensor left at zero,
    so that zeroing anything is visible."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
        if n > MAX_PARAMS:
            raise NotBuildable(f"{n / 1e6:.0f}M parameters once shrunk (widths not found in its config)")
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    except LpError:
        raise
    except Exception as e:  # any failure of a family's own code: not buildable tiny
        raise NotBuildable(f"building a tiny model failed: {first_line(e)}") from None
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def discover(config: Any) -> ArchFacts:
    """The expansion facts of ``config``'s family (see the module docstring)."""
    mt = _model_type(config)
    try:
        cfg = tiny_config(config, layers=DEPTH if isinstance(config, str) else None)
    except NotBuildable as e:
        if not isinstance(config, str):  # this model's own values do not shrink: the family's defaults
            return discover(mt)
        raise NotBuildable(f"model_type {mt!r} cannot be expanded: {e}") from None
    return _discover_cached(json.dumps(cfg.to_dict(), sort_keys=True, default=str))


def _model_type(config: Any) -> str:
    if isinstance(config, str):
        return config
    return config["model_type"] if isinstance(config, dict) else config.model_type


@functools.cache
def _discover_cached(key: str) -> ArchFacts:
    from transformers import CONFIG_MAPPING

    d = json.loads(key)
    cfg = CONFIG_MAPPING[d["model_type"]].from_dict(d)
    try:
        return _discover(cfg)
    except LpError as e:
        raise type(e)(f"model_type {d['model_type']!r} cannot be expanded: {e}") from None
    except Exception as e:  # the family's own code failed on the expanded copy
        raise Refused(
            f"model_type {d['model_type']!r} cannot be expanded: the copy fails: {first_line(e)}"
        ) from None


def _discover(cfg) -> ArchFacts:
    base = build(cfg)
    L = cfg.num_hidden_layers
    ids = torch.randint(3, SHRINK["vocab_size"], (2, SEQ), generator=torch.Generator().manual_seed(0))
    try:
        ref = logits(base, ids)
    except Exception as e:
        raise NotBuildable(f"the tiny model does not run: {first_line(e)}") from None
    layers = find_layers(base, L)
    facts = ArchFacts(
        layers=layers,
        residual_out=(),
        norms=(),
        layer_index=layer_index_attributes(base.get_submodule(layers)),
        per_layer_config=per_layer_fields(cfg, L),
        layer_index_lists=layer_index_lists(cfg, L),
    )
    zeroed = residual_outputs(base, facts, ids, ref)
    facts = _with(facts, residual_out=zeroed, **norm_facts(base.get_submodule(layers)[0], cfg))
    check_rebuilt(base, facts, ids, ref)
    check_cache(base, facts, ids)
    saved_prefix, saved = saved_names(base, facts)
    saved_layers = None if saved_prefix == layers else saved_prefix
    return _with(facts, residual_out=tuple(dict.fromkeys((*zeroed, *saved))), saved_layers=saved_layers)


def _with(facts: ArchFacts, **kw) -> ArchFacts:
    return ArchFacts(**{**facts.__dict__, **kw})


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def find_layers(model: nn.Module, n: int) -> str:
    """The path of the decoder block list: the largest ModuleList of ``n`` modules."""
    lists = [
        (sum(p.numel() for p in m.parameters()), name)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n and name
    ]
    if not lists:
        raise Refused(f"no list of num_hidden_layers={n} decoder blocks (cross-layer sharing?)")
    path = max(lists)[1]
    seen: set[int] = set()
    for block in model.get_submodule(path):
        ids = {id(p) for p in block.parameters()}
        if ids & seen:
            raise Refused("blocks share parameters across layers; a copy would not be independent")
        seen |= ids
    return path


def layer_index_attributes(blocks: nn.ModuleList) -> tuple[tuple[str, str, int], ...]:
    """Every integer attribute below a block that equals the block's index plus a
    constant in every block: the KV-cache slot and its kin."""
    values: dict[tuple[str, str], list[int]] = {}
    for k, block in enumerate(blocks):
        for path, module in block.named_modules():
            for attr, v in vars(module).items():
                if type(v) is int and not attr.startswith("_"):
                    values.setdefault((path, attr), [None] * len(blocks))[k] = v
    found = []
    for (path, attr), vs in values.items():
        offsets = {v - k for k, v in enumerate(vs) if v is not None}
        if len(offsets) == 1 and None not in vs and len(blocks) > 2:
            found.append((path, attr, offsets.pop()))
    return tuple(sorted(found))


def per_layer_fields(cfg, n: int) -> tuple[str, ...]:
    return tuple(
        k
        for k, v in sorted(cfg.to_dict().items())
        if isinstance(v, (list, tuple)) and len(v) == n and "token" not in k
    )


def layer_index_lists(cfg, n: int) -> tuple[str, ...]:
    per_layer = set(per_layer_fields(cfg, n))
    return tuple(
        k
        for k, v in sorted(cfg.to_dict().items())
        if "layer" in k and k not in per_layer and isinstance(v, (list, tuple))
        and all(type(i) is int and 0 <= i < n for i in v)
    )  # fmt: skip


def expanded(base: nn.Module, facts: ArchFacts, init: str = "zero_out") -> tuple[nn.Module, tuple[int, ...]]:
    """A copy of ``base`` with two new blocks (interleaved) and the new blocks' indices."""
    plan = make_plan(base.config.num_hidden_layers, 2, init=init)
    return insert_blocks(copy.deepcopy(base), plan, facts), plan.new_layers


def residual_outputs(base: nn.Module, facts: ArchFacts, ids, ref) -> tuple[str, ...]:
    """Names (below a block) of the tensors that must be zero for a new block to be
    an identity, found by zeroing all and restoring one at a time."""
    model, new_layers = expanded(base, facts, init="copy")
    layers = model.get_submodule(facts.layers)
    new = [dict(layers[j].named_parameters()) for j in new_layers]  # blocks may differ in kind
    kept = [{n: t.detach().clone() for n, t in p.items()} for p in new]
    order = execution_order(model, layers[new_layers[0]], ids)
    names = list(dict.fromkeys(n for p in new for n in p))

    def put(name: str, restore: bool) -> None:
        for p, values in zip(new, kept, strict=True):
            if name in p:
                p[name].copy_(values[name]) if restore else p[name].zero_()

    with torch.no_grad():
        for name in names:
            put(name, restore=False)
        if not torch.equal(logits(model, ids), ref):
            raise Refused(
                "a block is no identity even with all its tensors zeroed (a norm after the residual add?)"
            )
        zeroed = []
        # norms first, then in the order the block runs its modules, so that what stays
        # zeroed is the last write before the residual add (o_proj, not a fused qkv)
        for name in sorted(names, key=lambda n: ("norm" not in n, rank(order, n))):
            put(name, restore=True)
            if not torch.equal(logits(model, ids), ref):
                zeroed.append(name)
                put(name, restore=False)
    if not zeroed:
        raise Refused("a copied block already adds nothing to the residual stream")
    return tuple(zeroed)


def execution_order(model: nn.Module, block: nn.Module, ids) -> dict[str, int]:
    """Module path (below ``block``) -> the rank of its first call in a forward pass."""
    order: dict[str, int] = {}
    handles = [
        m.register_forward_pre_hook(lambda *_, n=name: (order.setdefault(n, len(order)), None)[1])
        for name, m in block.named_modules()
    ]
    try:
        logits(model, ids)
    finally:
        for h in handles:
            h.remove()
    return order


def rank(order: dict[str, int], name: str) -> int:
    """When the tensor ``name``'s module first runs; a module used only through its
    weights (Mamba's conv1d) runs when its nearest calling ancestor does."""
    path = name.rpartition(".")[0]
    while path not in order and path:
        path = path.rpartition(".")[0]
    return order.get(path, 0)


def norm_facts(block: nn.Module, cfg) -> dict:
    """The block's own norms and the weight at which they output zeros (0, or -1 for
    Gemma's ``1 + weight``), for init=zero_norm; none when no such value exists."""
    norms = [n for n, m in block.named_children() if "norm" in type(m).__name__.lower()]
    if not norms:
        return {"norms": ()}
    module = copy.deepcopy(block.get_submodule(norms[0]))
    x = torch.randn(2, 3, cfg.hidden_size)
    with torch.no_grad():
        for value in (0.0, -1.0):
            for name, t in module.named_parameters():
                t.fill_(value if name == "weight" else 0.0)
            try:
                if torch.all(module(x) == 0):
                    return {"norms": tuple(norms), "norm_zero": value}
            except Exception:
                break
    return {"norms": ()}


def check_rebuilt(base: nn.Module, facts: ArchFacts, ids, ref) -> None:
    """The expanded model rebuilt from its own config (as a user reloads it) must be
    the same identity: catches block kinds placed by rules the config cannot state."""
    from transformers import AutoModelForCausalLM

    model, _ = expanded(base, facts)
    if not torch.equal(logits(model, ids), ref):
        raise Refused("zeroing the found tensors is no identity")
    cfg = type(model.config).from_dict(model.config.to_dict())
    rebuilt = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    try:
        rebuilt.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError:
        raise Refused("the expanded config builds different blocks (kinds placed by a rule)") from None
    if not torch.equal(logits(rebuilt, ids), ref):
        raise Refused("the model rebuilt from the expanded config is no identity (kinds placed by a rule)")


def check_cache(base: nn.Module, facts: ArchFacts, ids) -> None:
    """Incremental decoding through the KV cache must match the base's exactly."""
    model, _ = expanded(base, facts)

    def step(m):
        with torch.no_grad():
            out = m(input_ids=ids[:, :-1], use_cache=True)
            if out.past_key_values is None:
                return None
            return m(input_ids=ids[:, -1:], past_key_values=out.past_key_values, use_cache=True).logits

    try:
        want = step(base)
    except Exception:
        return  # the family has no usable cache; nothing to renumber for it
    if want is not None and not torch.equal(step(model), want):
        raise Refused("a copied block's KV-cache slot could not be renumbered (layer index not found)")


NUMBER = re.compile(r"(?<=\.)\d+(?=\.)")


def saved_names(base: nn.Module, facts: ArchFacts) -> tuple[str, tuple[str, ...]]:
    """The block list's prefix in a saved checkpoint and, below a block, the saved
    names of the zeroed tensors (expert indices as ``*``): saved by transformers
    with those tensors zeroed in block 1, read back, and the all-zero ones taken."""
    from safetensors.torch import load_file

    model = copy.deepcopy(base)
    block = model.get_submodule(facts.layers)[1]
    with torch.no_grad():
        for name, t in block.state_dict(keep_vars=True).items():
            if init_value(name, "zero_out", facts) is not None:
                t.zero_()
    with tempfile.TemporaryDirectory() as tmp, no_progress_bars():
        model.save_pretrained(tmp)
        tensors = {}
        for f in sorted(Path(tmp).glob("*.safetensors")):
            tensors.update(load_file(f))
    prefix = saved_prefix(tensors, model.config.num_hidden_layers)
    layer = {n[len(prefix) + 3 :]: t for n, t in tensors.items() if n.startswith(f"{prefix}.1.")}
    other = {n[len(prefix) + 3 :]: t for n, t in tensors.items() if n.startswith(f"{prefix}.0.")}
    zero = {n for n, t in layer.items() if not t.any() and n in other and other[n].any()}
    if not zero:
        raise Refused("the zeroed tensors cannot be found in a saved checkpoint")
    return prefix, tuple(sorted({NUMBER.sub("*", f".{n}")[1:] for n in zero}))


@contextlib.contextmanager
def no_progress_bars():
    """transformers' progress bars off for a while: a command's output stays its own lines."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def saved_prefix(tensors: dict, n: int) -> str:
    counts: dict[str, set[int]] = {}
    for name in tensors:
        for m in re.finditer(r"\.(\d+)\.", name):
            counts.setdefault(name[: m.start()], set()).add(int(m.group(1)))
    full = [p for p, idx in counts.items() if idx == set(range(n))]
    if not full:
        raise Refused(f"no tensors of {n} numbered blocks in a saved checkpoint")
    return min(full, key=len)
