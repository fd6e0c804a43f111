"""The family table (docs/families.md), lp/expansion/families.json and the code agree."""

import json

import pytest
import transformers

from lp.expansion import ARCHS
from lp.expansion.family_table import DATA, dump, family_line, sweep, table, table_block
from tests.conftest import ROOT

DOC = ROOT / "docs/families.md"
REGENERATE = (
    "run `python -m lp.families --json lp/expansion/families.json --table docs/families.md` and commit both"
)


def committed() -> dict:
    return json.loads(DATA.read_text())


def test_the_docs_table_is_rendered_from_families_json():
    data = committed()
    assert table_block(DOC.read_text(), str(DOC)) == table(data), REGENERATE
    assert DATA.read_text() == dump(data)  # one line per family, as written
    assert all(line.count("\n") == 0 and len(line) < 200 for line in data["families"].values())


def test_every_archs_family_is_listed_as_expanded():
    lines = committed()["families"]
    assert all(lines[mt].startswith("expand: ") for mt in ARCHS)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "olmo2", "qwen2_moe", "bert", "gemma3"])
def test_the_code_still_finds_what_families_json_says(model_type):
    data = committed()
    if data["transformers"] != transformers.__version__:
        pytest.skip(f"families.json is for transformers {data['transformers']}; {REGENERATE}")
    assert family_line(model_type) == data["families"][model_type], REGENERATE


@pytest.mark.slow
def test_every_causal_lm_family_is_expanded_or_refused_with_a_reason():
    data = sweep()
    for mt, line in data["families"].items():
        kind, _, detail = line.partition(": ")
        assert kind in ("expand", "refused", "not buildable") and detail, (mt, line)
    assert sum(line.startswith("expand: ") for line in data["families"].values()) >= 100
    assert data == committed(), REGENERATE
