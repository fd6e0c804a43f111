"""Block expansion: pure torch + transformers, no Lightning, no Hydra.

Exports resolve lazily so that the checkpoint path (``lp.expand``) starts
without importing torch."""

from importlib import import_module

_EXPORTS = {
    "ARCHS": "arch", "ArchFacts": "arch", "arch_facts": "facts", "init_value": "arch",
    "INITS": "plan", "POSITIONS": "plan", "SOURCES": "plan", "ExpansionPlan": "plan", "make_plan": "plan",
    "decoder_layers": "inplace", "expand_model": "inplace",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lp.expansion' has no attribute {name!r}")
    return getattr(import_module(f"lp.expansion.{_EXPORTS[name]}"), name)
