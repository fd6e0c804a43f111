import pytest

from lp.core.errors import LpError
from lp.expansion import ExpansionPlan, make_plan


def test_paper_layout_32_to_40():
    p = make_plan(32, 8)
    assert p.new_layers == (4, 9, 14, 19, 24, 29, 34, 39)
    assert [p.layer_map[j] for j in p.new_layers] == [3, 7, 11, 15, 19, 23, 27, 31]
    assert [p.layer_map[j] for j in p.original_layers] == list(range(32))
    assert p.num_layers == 40 and p.blocks == 8


def test_interleave_uneven_puts_larger_groups_first():
    p = make_plan(10, 4)
    assert p.layer_map == (0, 1, 2, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 9)
    assert p.new_layers == (3, 6, 10, 13)


def test_interleave_more_blocks_than_layers():
    p = make_plan(2, 5)
    # tops: ceil(2/5)-1=0, ceil(4/5)-1=0, ceil(6/5)-1=1, 1, 1
    assert p.layer_map == (0, 0, 0, 1, 1, 1, 1)
    assert p.new_layers == (1, 2, 4, 5, 6)


def test_top_and_bottom_stacking():
    top = make_plan(4, 2, "top")
    assert top.layer_map == (0, 1, 2, 3, 3, 3) and top.new_layers == (4, 5)
    bottom = make_plan(4, 2, "bottom")
    # group_top of the one group above index 0 is the last base layer
    assert bottom.layer_map == (3, 3, 0, 1, 2, 3) and bottom.new_layers == (0, 1)
    assert make_plan(4, 2, "bottom", "group_bottom").layer_map == (0, 0, 0, 1, 2, 3)


def test_explicit_positions_and_sources():
    assert make_plan(4, 2, [1, 3]).layer_map == (0, 0, 1, 2, 2, 3)
    assert make_plan(4, 2, [1, 3], "neighbour_above").layer_map == (0, 1, 1, 2, 3, 3)
    assert make_plan(4, 2, [1, 3], "group_bottom").layer_map == (0, 0, 1, 2, 1, 3)
    assert make_plan(6, 2, [2, 6], "group_bottom").layer_map == (0, 1, 0, 2, 3, 4, 5, 2)


def test_zero_blocks_is_the_base_layout():
    p = make_plan(5, 0)
    assert p.layer_map == (0, 1, 2, 3, 4) and p.new_layers == ()


def test_json_round_trip():
    p = make_plan(6, 2, [0, 6], "group_top", "zero_norm")
    d = p.to_dict()
    assert d["position"] == [0, 6] and d["new_layers"] == [0, 7]
    assert ExpansionPlan.from_dict(d) == p


@pytest.mark.parametrize(
    "args, message",
    [
        ((8, -1), "expansion.blocks=-1"),
        ((8, 1.5), "not an integer"),
        ((8, "4"), "not an integer"),
        ((8, 2, "middle"), "expansion.position='middle' is unknown"),
        ((8, 2, [1, 9]), "out of range"),
        ((8, 2, [1]), "lists 1 insertion indices"),
        ((8, 1, "bottom", "neighbour_below"), "no layer below"),
        ((8, 1, "top", "neighbour_above"), "no layer above"),
        ((8, 1, "top", "random"), "expansion.source='random' is unknown"),
        ((8, 1, "top", "group_top", "noise"), "expansion.init='noise' is unknown"),
    ],
)
def test_bad_input_is_one_clear_line(args, message):
    with pytest.raises(LpError, match=message) as e:
        make_plan(*args)
    assert "\n" not in str(e.value)
