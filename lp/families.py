"""``python -m lp.families [--json FILE] [--table FILE]``: regenerate the family table.

Runs the discovery (``lp.expansion.family_table``) on every causal-LM family of the
installed transformers (about 10 min on 2 cores) and prints ``families.json``, or writes
it to ``--json`` and the markdown table into ``--table`` (between its markers, the rest
of that file kept). lp itself writes nothing of the repository's: a maintainer names the
files, after upgrading transformers::

    python -m lp.families --json lp/expansion/families.json --table docs/families.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lp.core.errors import refused_status
from lp.core.files import check_output, write_atomic
from lp.expansion.family_table import dump, sweep, table, table_block


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lp.families", description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, help="write families.json here")
    p.add_argument(
        "--table", type=Path, help="markdown file whose family table (between the markers) is replaced"
    )
    args = p.parse_args(argv)
    try:
        json_out = check_output(args.json, "file", "--json") if args.json else None
        text = None
        if args.table:
            check_output(args.table, "file", "--table")
            text = args.table.read_text() if args.table.is_file() else ""
            if text:
                table_block(text, str(args.table))  # a file without the markers is refused before the sweep
        data = sweep()
        if json_out is None and text is None:
            print(dump(data), end="")
        if json_out is not None:
            write_atomic(json_out, dump(data))
        if text is not None:
            block = table(data)
            write_atomic(
                args.table, text.replace(table_block(text, str(args.table)), block) if text else block + "\n"
            )
    except Exception as e:  # bad input or an unwritable place: one line
        return refused_status(e)
    print(f"lp: {len(data['families'])} families", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
