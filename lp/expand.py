"""``python -m lp.expand SRC DST --blocks P``: expand a checkpoint directory, streamed.

Reads a local Hugging Face checkpoint (safetensors, sharded or not, or .bin) and
writes the expanded one: sharded safetensors with an index, the updated
config, the tokenizer and generation files, and ``lp_expansion.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lp.base.checkpoint_dirs import EXPANSION_FILE, check_checkpoint, written_by_lp
from lp.core.errors import LpError, refused_status
from lp.core.files import check_output
from lp.expansion.plan import INITS, POSITIONS, SOURCES, make_plan
from lp.expansion.streamed import TORCH_NAMES, depth_key, expand_checkpoint

FLAGS = {"blocks": "--blocks", "position": "--position", "source": "--source", "init": "--init"}
UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lp.expand", description=__doc__.split("\n")[0])
    p.add_argument("src", type=Path, help="local Hugging Face checkpoint directory")
    p.add_argument("dst", type=Path, help="output directory (must not exist unless --force)")
    p.add_argument("--blocks", type=int, required=True, help="number of new blocks P (0: none)")
    p.add_argument(
        "--position", default="interleave",
        help=f"{' | '.join(POSITIONS)} | comma-separated insertion indices (default interleave)",
    )  # fmt: skip
    p.add_argument(
        "--source", default="group_top", choices=SOURCES, help="which base block a new block copies"
    )
    p.add_argument("--init", default="zero_out", choices=INITS, help="how a new block starts")
    p.add_argument("--shard-size", default="5GB", help="largest shard, e.g. 5GB, 500MB (default 5GB)")
    p.add_argument("--dtype", choices=sorted(TORCH_NAMES), help="convert floating tensors (default: keep)")
    p.add_argument(
        "--force", action="store_true",
        help="replace DST if it is a directory lp wrote (it holds lp_expansion.json) or an empty one; "
        "never a file, another directory, the input or a folder that holds it",
    )  # fmt: skip
    p.add_argument(
        "--no-verify", action="store_true",
        help="skip the check that the expanded logits equal the base's (it loads both models)",
    )  # fmt: skip
    p.add_argument(
        "--gguf-file",
        help="SRC holds this GGUF file: convert it first (once; cached in $LP_CACHE, lp.base.gguf)",
    )
    return p.parse_args(argv)


def parse_size(text: str) -> int:
    t = text.strip().upper()
    for unit in sorted(UNITS, key=len, reverse=True):
        if t.endswith(unit) and t[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * UNITS[unit])
    if t.isdigit():
        return int(t)
    raise LpError(f"--shard-size {text!r} is not a size; use e.g. 5GB, 500MB or a byte count")


def parse_position(text: str) -> str | list[int]:
    if text in POSITIONS:
        return text
    try:
        return [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        raise LpError(
            f"--position {text!r} is unknown; allowed: {', '.join(POSITIONS)} or comma-separated indices"
        ) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        src, dst = args.src.expanduser(), args.dst.expanduser()
        if args.gguf_file:
            from lp.base.gguf import converted_base, default_cache, locate

            src = converted_base(locate(str(src), args.gguf_file), default_cache())
        if not src.is_dir():
            raise LpError(f"{src} does not exist or is not a directory; give a local Hugging Face checkpoint")
        check_checkpoint(str(src), label="SRC")
        if (src / EXPANSION_FILE).is_file():
            raise LpError(f"{src} is already expanded ({EXPANSION_FILE}); expand its base model instead")
        dst = check_output(dst, "dir", "DST", inputs=[src], replace=args.force, owned=written_by_lp)
        config = json.loads((src / "config.json").read_text())
        layers = config.get(depth_key(config))
        plan = make_plan(
            layers, args.blocks, parse_position(args.position), args.source, args.init, names=FLAGS
        )
        size, verify = parse_size(args.shard_size), not args.no_verify
        out = expand_checkpoint(src, dst, plan, size, args.dtype, args.force, verify, written_by_lp)
    except Exception as e:  # bad input or an unwritable place: one line
        return refused_status(e)
    new = list(plan.new_layers)
    print(f"lp: expanded {src} ({plan.base_layers} layers) -> {out} ({plan.num_layers} layers, new {new})")
    print(f"lp: train its new blocks with:\n  python -m lp.train model=hf model.name_or_path={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
