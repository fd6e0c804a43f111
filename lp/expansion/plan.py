"""The expansion plan: one pure value that every part of lp reads.

Given a base model of L blocks and P new blocks, the plan says, for every layer
of the expanded model, which base layer it is copied from and whether it is
new. Nothing else in lp re-derives a layout; the in-memory expansion, the
freeze callback, the identity check and ``lp_expansion.json`` all read this.

Layout rules (pinned by tests):

* Every new block has an *insertion index* ``i`` in ``[0, L]``: it sits between
  base layer ``i - 1`` and base layer ``i``. New blocks sharing an index are
  stacked in order.
* ``interleave`` (the paper): the L base layers form P contiguous groups; the
  top layer of group ``k`` is ``ceil((k + 1) * L / P) - 1`` and one new block is
  inserted right after it. When P does not divide L the larger groups come
  first (L=10, P=4 gives groups of 3, 2, 3, 2: tops 2, 4, 7, 9). When P > L some
  groups are empty and several new blocks follow the same base layer (L=8,
  P=32 gives four new blocks after every base layer).
* ``top`` (suffix stacking): all P new blocks above the last base layer.
* ``bottom`` (prefix stacking): all P new blocks below the first base layer.
* an explicit list of insertion indices, one per new block.

Sources (which base layer a new block copies):

* ``group_top`` (paper): the top layer of the block's group. Groups are the
  runs of base layers between consecutive distinct insertion indices; a block
  belongs to the group directly below it, or, at index 0, to the group directly
  above it. For ``interleave`` these are exactly the P groups above; for
  ``top`` and ``bottom`` the whole base is one group.
* ``group_bottom``: the bottom layer of that group.
* ``neighbour_below``: base layer ``i - 1`` (refused for blocks at index 0).
* ``neighbour_above``: base layer ``i`` (refused for blocks at index L).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lp.core.config import fixed
from lp.core.errors import LpError

EXPANSION_FILE = "lp_expansion.json"  # the plan, written next to every expanded checkpoint
POSITIONS = ("interleave", "top", "bottom")
SOURCES = ("group_top", "group_bottom", "neighbour_below", "neighbour_above")
INITS = ("zero_out", "zero_norm", "copy")


@dataclass
class ExpansionConfig:
    """The ``expansion`` group. Checked by ``make_plan`` against the base's depth, the
    only place that can tell whether a layout fits; a resumed run keeps all of it."""

    blocks: int = fixed()
    position: Any = fixed()  # interleave | top | bottom | a list of insertion indices
    source: str = fixed()
    init: str = fixed()


@dataclass(frozen=True)
class ExpansionPlan:
    """Where the new blocks go and where they come from.

    ``layer_map[j]`` is the base layer that layer ``j`` of the expanded model is
    (for an original layer) or was copied from (for a new layer).
    """

    base_layers: int
    layer_map: tuple[int, ...]
    new_layers: tuple[int, ...]
    position: str | tuple[int, ...]
    source: str
    init: str

    @property
    def num_layers(self) -> int:
        return len(self.layer_map)

    @property
    def blocks(self) -> int:
        return len(self.new_layers)

    @property
    def original_layers(self) -> tuple[int, ...]:
        new = set(self.new_layers)
        return tuple(j for j in range(self.num_layers) if j not in new)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_map"] = list(self.layer_map)
        d["new_layers"] = list(self.new_layers)
        if isinstance(self.position, tuple):
            d["position"] = list(self.position)
        return d

    def to_json(self, **extra) -> str:
        return json.dumps({**extra, **self.to_dict()}, indent=2)

    def write(self, directory: Path, **extra) -> None:
        """``lp_expansion.json`` in a checkpoint directory lp has just written, last: the plan,
        ``extra`` (base model, stages) and ``files``, every file lp wrote there, so that a
        directory is replaced later only if it holds nothing else (``lp.base.checkpoint_dirs``)."""
        files = sorted({p.name for p in Path(directory).iterdir()} | {EXPANSION_FILE})
        (Path(directory) / EXPANSION_FILE).write_text(self.to_json(**extra, files=files) + "\n")

    @classmethod
    def from_dict(cls, d: dict) -> ExpansionPlan:
        pos = d["position"]
        return cls(
            base_layers=int(d["base_layers"]),
            layer_map=tuple(d["layer_map"]),
            new_layers=tuple(d["new_layers"]),
            position=tuple(pos) if isinstance(pos, list) else pos,
            source=d["source"],
            init=d["init"],
        )


def make_plan(
    base_layers: int,
    blocks: int,
    position: str | Sequence[int] = "interleave",
    source: str = "group_top",
    init: str = "zero_out",
    names: Mapping[str, str] | None = None,
) -> ExpansionPlan:
    """Compute the plan; raises LpError with a one-line reason on bad input, naming each
    setting as the user gave it: ``names`` maps blocks, position, source and init to the
    caller's names (``lp.expand``'s flags); by default ``expansion.<name>`` (lp.train)."""
    _check_int(_name(names, "blocks"), blocks, minimum=0)
    _check_int("base layer count", base_layers, minimum=1)
    if source not in SOURCES:
        raise LpError(f"{_setting(names, 'source', source)} is unknown; allowed: {', '.join(SOURCES)}")
    if init not in INITS:
        raise LpError(f"{_setting(names, 'init', init)} is unknown; allowed: {', '.join(INITS)}")
    indices = insertion_indices(base_layers, blocks, position, names)
    sources = [_source_layer(i, indices, base_layers, source, names) for i in indices]
    layer_map, new_layers = [], []
    pending = sorted(zip(indices, sources, strict=True), key=lambda t: t[0])  # stable: keeps list order
    k = 0
    for base in range(base_layers + 1):
        while k < len(pending) and pending[k][0] == base:
            new_layers.append(len(layer_map))
            layer_map.append(pending[k][1])
            k += 1
        if base < base_layers:
            layer_map.append(base)
    pos = position if isinstance(position, str) else tuple(int(i) for i in position)
    return ExpansionPlan(base_layers, tuple(layer_map), tuple(new_layers), pos, source, init)


def _name(names: Mapping[str, str] | None, key: str) -> str:
    return (names or {}).get(key, f"expansion.{key}")


def _setting(names: Mapping[str, str] | None, key: str, value, quoted: bool = True) -> str:
    """``expansion.init='x'`` as lp.train's setting, ``--init x`` as a command-line flag."""
    name = _name(names, key)
    if name.startswith("-"):
        return f"{name} {value}"
    return f"{name}={value!r}" if quoted else f"{name}={value}"


def insertion_indices(base_layers: int, blocks: int, position: str | Sequence[int],
                      names: Mapping[str, str] | None = None) -> list[int]:  # fmt: skip
    """The insertion index of every new block, in the order the blocks are listed."""
    if isinstance(position, str):
        if position == "interleave":
            if blocks == 0:
                return []
            return [math.ceil((k + 1) * base_layers / blocks) for k in range(blocks)]
        if position == "top":
            return [base_layers] * blocks
        if position == "bottom":
            return [0] * blocks
        raise LpError(
            f"{_setting(names, 'position', position)} is unknown; allowed: {', '.join(POSITIONS)} "
            f"or a list of insertion indices in [0, {base_layers}]"
        )
    indices = list(position)
    if len(indices) != blocks:
        raise LpError(
            f"{_name(names, 'position')} lists {len(indices)} insertion indices but "
            f"{_setting(names, 'blocks', blocks)}; "
            "give one index per new block"
        )
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= base_layers:
            raise LpError(
                f"{_name(names, 'position')} index {i!r} is out of range; "
                f"allowed: integers in [0, {base_layers}] for a base of {base_layers} layers"
            )
    return indices


def _source_layer(i: int, indices: list[int], base_layers: int, source: str,
                  names: Mapping[str, str] | None = None) -> int:  # fmt: skip
    if source == "neighbour_below":
        if i == 0:
            shown = _setting(names, "source", source, quoted=False)
            raise LpError(f"{shown} has no layer below a block inserted at index 0")
        return i - 1
    if source == "neighbour_above":
        if i == base_layers:
            shown = _setting(names, "source", source, quoted=False)
            raise LpError(f"{shown} has no layer above a block inserted at index {base_layers}")
        return i
    cuts = sorted({0, base_layers, *indices})
    if i == 0:  # nothing below: the group directly above
        lo, hi = 0, cuts[1] - 1
    else:
        lo, hi = max(c for c in cuts if c < i), i - 1
    return hi if source == "group_top" else lo


def _check_int(name: str, value, minimum: int) -> None:
    shown = f"{name} {value!r}" if name.startswith("-") else f"{name}={value!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise LpError(f"{shown} is not an integer; allowed: an integer >= {minimum}")
    if value < minimum:
        raise LpError(f"{shown} is too small; allowed: an integer >= {minimum}")
