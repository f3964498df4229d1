"""The typed eval config: YAML, flags and key=value overrides in that order, one-line range errors."""

import re
import typing

import pytest

from alignkit.configs import ConfigError
from alignkit.eval.config import FLAGS, EvalConfig, load_eval_config


def test_file_then_flags_then_overrides(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("model: from-file\ndata: {path: synthetic, max_examples: 5}\n"
                    "preferences: {beta: 0.3, alpha: 0.6}\ngeneration: {enabled: true, kl_samples: 2}\n")
    config = load_eval_config(path)
    assert (config.model, config.data.max_examples, config.preferences.beta) == ("from-file", 5, 0.3)
    assert config.generation.kl_samples == 2 and config.preferences.max_length == 512  # defaults fill the rest
    config = load_eval_config(path, ["preferences.beta=0.4"], {"model": "m", "preferences.beta": 0.2,
                                                                "preferences.alpha": None})
    assert config.model == "m" and config.preferences.beta == 0.4  # the override beats the flag
    assert config.preferences.alpha == 0.6  # a flag that was not given leaves the file's value
    assert load_eval_config(path, flags={"preferences.beta": 0.2}).preferences.beta == 0.2


@pytest.mark.parametrize("overrides, message", [
    (["preferences.alpha=1.0"], r"preferences\.alpha \(--alpha\) must be < 1"),
    (["preferences.beta=0"], r"preferences\.beta \(--beta\) must be > 0"),
    (["data.max_examples=-1"], r"data\.max_examples \(--max-examples\) must be >= 1 \(got -1\)"),
    (["generation.tie_margin=0.5"], r"--tie-margin\) must be < 0\.5"),
    (["generation.top_p=1.5"], r"--top-p\) must be <= 1"),
    (["preferences.max_prompt_length=600"], r"max_prompt_length \(600\) must be < max_length \(512\)"),
    (["preferences.bta=0.1"], r"preferences\.bta: unknown key \(accepted: beta, alpha,"),
    (["generation.judge=j"], r"--judge.*give --baseline"),
    (["before=b", "data.path=null", "generation.enabled=true", "generation.prompts=p.txt"],
     r"--before compares rankings"),
    (["data.path=null"], r"nothing to evaluate"),
    (["data.column_map={a: b}"], r"--column-map.*does not apply to --data synthetic"),
])
def test_errors_are_one_line_and_name_key_and_flag(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_eval_config(None, ["model=m", "data.path=synthetic", *overrides])
    assert "\n" not in str(info.value)


def test_yaml_errors_are_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_eval_config(path)
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        (tmp_path / "list.yaml").write_text("- a\n")
        load_eval_config(tmp_path / "list.yaml")


def _default(key: str):
    section = EvalConfig
    *parents, last = key.split(".")
    for name in parents:
        section = section.model_fields[name].annotation
    return section.model_fields[last].default


def test_every_flag_maps_to_a_config_key_and_its_help_shows_the_config_default():
    from alignkit.eval.command import eval_command

    hints = typing.get_type_hints(eval_command, include_extras=True)
    words = {"on": True, "off": False, "greedy": False}
    seen = set()
    for name, hint in hints.items():
        info = getattr(hint, "__metadata__", [None])[0]
        # typer keeps a lone declaration ("--format") in `default`, further ones in `param_decls`
        names = [getattr(info, "default", None), *(getattr(info, "param_decls", ()) or ())]
        decls = [d.split("/")[0] for d in names if isinstance(d, str) and d.startswith("--")]
        flag = decls[0] if decls else "--" + name.replace("_", "-")
        if flag not in FLAGS:
            continue
        seen.add(flag)
        shown = re.search(r"\(default ([^)]+)\)", info.help or "")
        if shown:
            value = words.get(shown.group(1), shown.group(1))
            assert str(_default(FLAGS[flag])) == str(value), flag
    assert seen == set(FLAGS)  # no flag without a parameter, no parameter without a key
