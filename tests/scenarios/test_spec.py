"""The scenario schema: one-line errors naming file and field, templating, conditions, the builtin packs."""

from __future__ import annotations

import copy

import pytest

from alignkit.configs import ConfigError
from alignkit.scenarios.spec import PACKS, load_scenario, plan, render
from tests.scenarios.conftest import MINI


def test_unknown_key_is_one_line_naming_file_and_field(write_scenario):
    tree = copy.deepcopy(MINI)
    tree["conditons"] = tree.pop("conditions")
    path = write_scenario(tree)
    with pytest.raises(ConfigError) as error:
        load_scenario(path)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message and "conditons: unknown key" in message


def test_bad_value_inside_a_list_names_its_position(write_scenario):
    tree = copy.deepcopy(MINI)
    tree["measures"][0]["kind"] = "regexp"
    path = write_scenario(tree)
    with pytest.raises(ConfigError, match=r"mini\.yaml: measures\.0\.kind"):
        load_scenario(path)


@pytest.mark.parametrize("change, expected", [
    (lambda t: t["measures"].append({"name": "x", "kind": "regex", "pattern": "(", "field": "final"}), "invalid regex"),
    (lambda t: t["measures"].append({"name": "x", "kind": "contains", "any_of": ["a"], "field": "nope"}),
     "measures.1.field: 'nope' is not recorded"),
    (lambda t: t.update(differences=[{"name": "d", "measure": "said_answer", "minuend": "free",
                                      "subtrahend": "gold"}]), "unknown condition 'gold'"),
    (lambda t: t["conditions"].append({"name": "free"}), "name 'free' is used twice"),
    (lambda t: t.update(record=[{"name": "r", "tag": "A", "regex": "b"}]), "exactly one of 'tag' or 'regex'"),
])
def test_cross_field_errors(write_scenario, change, expected):
    tree = copy.deepcopy(MINI)
    change(tree)
    with pytest.raises(ConfigError) as error:
        load_scenario(write_scenario(tree))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_unknown_template_variable_names_item_condition_and_variable(write_scenario):
    tree = copy.deepcopy(MINI)
    tree["turns"] = ["{question} {missing_var}"]
    scenario, items = load_scenario(write_scenario(tree))
    with pytest.raises(ConfigError, match=r"item a, condition free, turn 1: unknown variable \{missing_var\}"):
        plan(scenario, items, 1, "m")


def test_conditions_render_their_variables_and_templates_over_item_fields(write_scenario):
    tree = copy.deepcopy(MINI)
    tree["conditions"] = [{"name": "x", "vars": {"tier": "t-{answer}"}}, {"name": "y", "vars": {"tier": "plain"}}]
    scenario, items = load_scenario(write_scenario(tree))
    planned = plan(scenario, items, 2, "m")
    assert len(planned) == 2 * 2 * 2  # items x conditions x samples
    systems = {(p.item_id, p.condition): p.system for p in planned}
    assert systems[("a", "x")] == "You talk to a t-4 user."
    assert systems[("b", "x")] == "You talk to a t-red user."
    assert systems[("b", "y")] == "You talk to a plain user."
    assert len({p.key for p in planned}) == 8  # samples of one conversation get distinct keys


def test_keys_ignore_measures_but_follow_prompts_and_sampling(write_scenario):
    tree = copy.deepcopy(MINI)
    keys = [p.key for p in plan(*load_scenario(write_scenario(tree)), 1, "m")]
    tree["measures"][0]["any_of"] = ["{question}"]
    assert [p.key for p in plan(*load_scenario(write_scenario(tree)), 1, "m")] == keys
    tree["generation"]["temperature"] = 0.5
    assert not set(p.key for p in plan(*load_scenario(write_scenario(tree)), 1, "m")) & set(keys)
    assert not set(p.key for p in plan(*load_scenario(write_scenario(MINI)), 1, "other-model")) & set(keys)


def test_per_condition_turns_and_items_where(write_scenario):
    tree = copy.deepcopy(MINI)
    tree["items"][0]["turns"] = {"free": ["one", "two"], "default": ["only"]}
    tree["items"][1]["split"] = "test"
    scenario, items = load_scenario(write_scenario(tree))
    turns = {(p.item_id, p.condition): p.turns for p in plan(scenario, items, 1, "m")}
    assert turns[("a", "free")] == ["one", "two"] and turns[("a", "paid")] == ["only"]
    assert turns[("b", "free")] == ["Name a colour."]
    scenario, items = load_scenario(write_scenario(tree), ["items_where.split=test"])
    assert [it["id"] for it in items] == ["b"]


def test_render_keeps_doubled_braces_literal():
    assert render("{{x}} {y}", {"y": 1}, "here") == "{x} 1"


@pytest.mark.parametrize("pack", sorted(p.stem for p in PACKS.glob("*.yaml")))
def test_builtin_packs_load_and_plan(pack):
    scenario, items = load_scenario(pack)
    planned = plan(scenario, items, 1, "m")
    assert len(planned) == len(items) * len(scenario.conditions)
    assert all(p.turns and all(t.strip() for t in p.turns) for p in planned)


def test_unknown_pack_lists_the_packs():
    with pytest.raises(ConfigError, match="no such scenario file or builtin pack .*alignment_faking"):
        load_scenario("no_such_pack")
