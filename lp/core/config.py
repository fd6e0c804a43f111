"""Typed configs: every config group's schema is a dataclass beside the code that owns
the group (``lp.schemas`` lists them and registers them with Hydra); the YAML files in
``conf/`` keep the values.

A field made with ``setting`` carries what is allowed (``check``: a function that
returns None, or a text saying what is allowed) and whether a resumed run must keep it
(``fixed``). ``validate`` walks a composed config against its schemas and refuses the
first value outside what is allowed in one line naming it, e.g.
``data.seq_len=0 is not allowed; allowed: an integer >= 2``; ``fixed_keys`` lists the
settings a resume compares. Hydra itself refuses unknown keys and values of the wrong
type (``lp.core.errors.refusal`` says those in one line too).

The checks are strict where OmegaConf's own conversion is lenient: a switch must be
``true`` or ``false`` (OmegaConf would read ``1`` as true), so switches are typed ``Any``
and checked here.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from omegaconf import MISSING

from lp.core.errors import LpError

Check = Callable[[Any], str | None]  # None: fine; else what is allowed


def setting(check: Check | None = None, *, fixed: bool = False, default: Any = MISSING, factory=None) -> Any:
    """A schema field: its ``check`` and whether it is ``fixed`` across a resume. No
    default by design: the value lives in the group's YAML file."""
    metadata = {"check": check, "fixed": fixed}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def fixed(default: Any = MISSING) -> Any:
    """A schema field that a resumed run must keep, with no check of its own."""
    return setting(fixed=True, default=default)


# -- checks ------------------------------------------------------------------------------


def integer(lo: int | None = None, hi: int | None = None, optional: bool = False) -> Check:
    def check(v):
        if v is None and optional:
            return None
        if (
            isinstance(v, bool)
            or not isinstance(v, int)
            or (lo is not None and v < lo)
            or (hi is not None and v > hi)
        ):
            text = "an integer" + _range(lo, hi, ">=", "<=")
            return f"{text}, or null" if optional else text
        return None

    return check


def number(lo: float | None = None, hi: float | None = None, open_lo: bool = False, open_hi: bool = False,
           optional: bool = False) -> Check:  # fmt: skip
    def check(v):
        if v is None and optional:
            return None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok and lo is not None:
            ok = v > lo if open_lo else v >= lo
        if ok and hi is not None:
            ok = v < hi if open_hi else v <= hi
        if ok:
            return None
        text = "a number" + _range(lo, hi, ">" if open_lo else ">=", "<" if open_hi else "<=")
        return f"{text}, or null" if optional else text

    return check


def choice(*allowed) -> Check:
    def check(v):
        if v in allowed and type(v) in {type(a) for a in allowed}:
            return None
        return ", ".join(dict.fromkeys(map(_show, allowed)))

    return check


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def pair(inner: Check) -> Check:
    def check(v):
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(inner(x) is None for x in v):
            return None
        return f"two values, each {inner(float('nan'))}"

    return check


def strings(v) -> str | None:
    ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
    return None if ok else "a list of strings ([] for none)"


def _range(lo, hi, lo_op: str, hi_op: str) -> str:
    parts = [f"{lo_op} {lo}" if lo is not None else "", f"{hi_op} {hi}" if hi is not None else ""]
    return (" " + " and ".join(p for p in parts if p)) if any(parts) else ""


def _show(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def show_value(v) -> str:
    return _show(v) if not isinstance(v, str) else repr(v)


# -- walking a config against its schemas ---------------------------------------------------


def validate(cfg: Mapping, schemas: Mapping[str, type]) -> None:
    """Raise ``LpError`` for the first setting outside its allowed values; ``schemas``:
    config path (``""`` for the root) -> dataclass. A setting a config does not have (a
    group, or a group's option, without it: absent or ``???``) is not checked; null is."""
    for prefix, schema in schemas.items():
        node = _select(cfg, prefix)
        if node is _ABSENT or node is None:
            continue
        for key, value, check in _checked(node, schema, prefix):
            allowed = check(value)
            if allowed is not None:
                raise LpError(f"{key}={show_value(value)} is not allowed; allowed: {allowed}")


def _checked(node, schema: type, prefix: str) -> Iterator[tuple[str, Any, Check]]:
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        nested = nested_schema(hints[f.name])
        if nested is None and f.metadata.get("check") is None:
            continue  # nothing to check: not even resolved (its interpolation may need a run)
        value = _select(node, f.name)
        if value is _ABSENT or value is MISSING:
            continue
        if nested is not None and value is not None:
            yield from _checked(value, nested, key)
        elif f.metadata.get("check") is not None:
            yield key, _plain(value), f.metadata["check"]


def fixed_keys(schemas: Mapping[str, type]) -> list[str]:
    """Every setting marked ``fixed``, as a dotted key (a fixed nested section: its path)."""
    out = []
    for prefix, schema in schemas.items():
        out += _fixed(schema, prefix)
    return out


def _fixed(schema: type, prefix: str) -> list[str]:
    out = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        nested = nested_schema(hints[f.name])
        if f.metadata.get("fixed"):
            out.append(key)
        elif nested is not None:
            out += _fixed(nested, key)
    return out


def nested_schema(annotation) -> type | None:
    """The dataclass a field's type names (``Optional[X]`` included), if any."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


_ABSENT = object()


def _select(node, key: str):
    from omegaconf import DictConfig, OmegaConf

    if not key:
        return node
    if isinstance(node, DictConfig):
        if key not in node:
            return _ABSENT
        return MISSING if OmegaConf.is_missing(node, key) else node[key]
    return node.get(key, _ABSENT) if isinstance(node, Mapping) else _ABSENT


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def plain(cfg) -> dict:
    """A plain dict from a config node (OmegaConf or already plain), interpolations resolved."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
