"""Typed configs (lp.core.config, lp.schemas): every group composes onto its schema, each
value is checked where its field says, the settings a resume keeps are the fields marked
fixed, and the facts that live in two places agree."""

import inspect
import re

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lp.core.errors import LpError, refusal
from lp.corpus import ChatDataModule, MixtureDataModule
from lp.schemas import DATA, GROUPS, RunSettings, check, fixed_settings
from tests.conftest import ROOT


def composed(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_every_group_composes_onto_its_schema(stage):
    cfg = composed(f"stage={stage}")
    for group, schema in [*GROUPS.items(), ("data", DATA["chat" if stage == "sft" else "text"])]:
        assert OmegaConf.get_type(cfg[group]) is schema, group
    check(cfg, {"": RunSettings})


def test_a_typo_and_a_wrong_type_are_refused_while_composing():
    with pytest.raises(Exception) as e:
        composed("data.seq_lenn=3")
    assert "data.seq_lenn" in str(refusal(e.value))
    with pytest.raises(Exception) as e:
        composed("optim.lr=fast")
    assert str(refusal(e.value)) == "optim.lr='fast' is not allowed; allowed: a number > 0"


def test_a_value_outside_its_field_s_check_is_refused():
    with pytest.raises(LpError, match=r"^data.seq_len=1 is not allowed; allowed: an integer >= 2$"):
        check(composed("data.seq_len=1"), {"": RunSettings})


def test_the_fixed_settings_are_the_ones_docs_list():
    """docs/configuration.md lists the settings a resume keeps; the fields' ``fixed`` marks
    say which: every fixed setting is listed and every listed one is fixed."""
    keys = set(fixed_settings(composed("model=tiny"), {"": RunSettings})) | set(
        fixed_settings(composed("model=tiny", "stage=sft"), {"": RunSettings})
    )
    text = (ROOT / "docs/configuration.md").read_text()
    section = text[text.index("## Settings fixed across a resume") :].split("Settings that only say")[0]
    listed = set(re.findall(r"`([a-z_]+(?:\.[a-z_*]+)*)`", section))

    def covers(name: str, key: str) -> bool:
        stem = name.removesuffix(".*")
        return key == stem or key.startswith(stem + ".")

    assert [k for k in sorted(keys) if not any(covers(n, k) for n in listed)] == []
    assert [n for n in sorted(listed) if not any(covers(n, k) for k in keys)] == []


@pytest.mark.parametrize("module, preset", [(MixtureDataModule, "common"), (ChatDataModule, "chat_common")])
def test_the_data_modules_defaults_are_their_presets_values(module, preset):
    values = OmegaConf.load(ROOT / f"conf/data/{preset}.yaml")
    for name, p in inspect.signature(module).parameters.items():
        if (
            p.default is not inspect.Parameter.empty
            and name in values
            and not OmegaConf.is_interpolation(values, name)
        ):
            assert p.default == values[name], name
