"""Typed objective parameters: every registered objective's Params model mirrors its function's keyword
parameters exactly, and configs are checked (unknown keys, ranges) before any model loads."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch
from pydantic_core import PydanticUndefined
from torch import Tensor

from alignkit.objectives import OBJECTIVES, PairLogps, UnpairedLogps, get_objective
from alignkit.objectives.params import PARAMETERS, ParamsError, UncheckedParams, params_dict, validate_params
from alignkit.train.config import load_config

# Supplied by the training loop to stateful objectives, never by a config.
LOOP_SUPPLIED = {"state", "training"}


def _is_tensor(annotation: object) -> bool:
    """Per-batch tensors (e.g. BCO's density-ratio ``weights``) are data for the Python API, not config."""
    return annotation is Tensor or Tensor in typing.get_args(annotation)


def config_parameters(name: str) -> list[inspect.Parameter]:
    """The keyword parameters of objective ``name`` that a config can set, in signature order."""
    signature = inspect.signature(OBJECTIVES[name].fn, eval_str=True)
    logps, *rest = signature.parameters.values()
    assert logps.name == "logps", name
    for parameter in rest:
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, (name, parameter.name)
    return [p for p in rest if p.name not in LOOP_SUPPLIED and not _is_tensor(p.annotation)]


# ---------------------------------------------------------------------------- models mirror the functions


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_params_model_matches_function_signature(name: str) -> None:
    model = OBJECTIVES[name].params
    assert PARAMETERS[name] is model
    fields = [(key, field.default, field.annotation) for key, field in model.model_fields.items()]
    wanted = [(p.name, p.default, p.annotation) for p in config_parameters(name)]
    assert fields == wanted
    for key, field in model.model_fields.items():
        assert field.default is not PydanticUndefined, f"{name}.{key} has no default"


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_params_are_declared_not_unchecked(name: str) -> None:
    model = OBJECTIVES[name].params
    assert not issubclass(model, UncheckedParams), name
    assert model.model_config.get("extra") == "forbid", name


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_parameter_has_a_one_line_description(name: str) -> None:
    for key, field in OBJECTIVES[name].params.model_fields.items():
        assert field.description and "\n" not in field.description, f"{name}.{key}"


def t(*xs: float) -> Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def _pair() -> PairLogps:
    return PairLogps(chosen=t(-10, -20), rejected=t(-12, -15), chosen_tokens=t(5, 4), rejected_tokens=t(3, 6),
                     ref_chosen=t(-11, -18), ref_rejected=t(-11, -16))


def _unpaired() -> UnpairedLogps:
    return UnpairedLogps(policy=t(-5, -8, -3, -9), tokens=t(4, 5, 3, 6), label=torch.tensor([True, False, True, True]),
                         ref=t(-6, -7, -4, -10), kl_policy=t(-7, -6, -5, -8), kl_ref=t(-7.5, -6, -5.5, -8))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_validated_defaults_are_valid_keyword_arguments(name: str) -> None:
    """What the loop passes (``params_dict`` of an empty config) gives exactly the function's defaults."""
    spec = get_objective(name)
    logps = _pair() if spec.inputs == "pair" else _unpaired()

    def loop_supplied() -> dict:  # a fresh state each call: BCO's running δ would carry over otherwise
        return {"state": {}, "training": True} if spec.stateful else {}

    with_params = spec.fn(logps, **params_dict(name, {}), **loop_supplied())
    plain = spec.fn(logps, **loop_supplied())
    torch.testing.assert_close(with_params.loss, plain.loss)


# ---------------------------------------------------------------------------------- config-load checks


def _config_error(override: str) -> str:
    with pytest.raises(ValueError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_unknown_key_names_objective_key_and_accepted_keys() -> None:
    message = _config_error("objectives=[{name: dpo, bta: 0.1}]")
    assert "dpo" in message and "'bta'" in message
    assert "accepted: beta, label_smoothing" in message


def test_negative_beta_is_rejected_with_its_range() -> None:
    message = _config_error("objectives=[{name: dpo, beta: -0.1}]")
    assert "dpo" in message and "beta must be > 0" in message and "-0.1" in message


def test_label_smoothing_above_half_is_rejected_with_its_range() -> None:
    message = _config_error("objectives=[{name: dpo, label_smoothing: 0.7}]")
    assert "label_smoothing must be <= 0.5" in message and "0.7" in message


def test_second_objective_is_checked_too() -> None:
    message = _config_error("objectives=[{name: dpo}, {name: sft, beta: 0.1}]")
    assert "objectives.1" in message and "sft" in message and "'beta'" in message and "accepted: none" in message


def test_valid_parameters_reach_the_objective_with_defaults_filled() -> None:
    config = load_config(None, ["objectives=[{name: rpo, eta: 2}, {name: kto, undesirable_weight: 1.33}]"])
    assert config.objectives[0].params == {"beta": 0.1, "eta": 2.0, "nll_reduction": "mean"}
    assert config.objectives[1].params == {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.33}


# -------------------------------------------------------------------------------- per-objective ranges


@pytest.mark.parametrize(("name", "raw", "expected"), [
    ("robust_dpo", {"label_smoothing": 0.5}, "label_smoothing must be < 0.5"),
    ("robust_dpo", {"beta": 0}, "beta must be > 0"),
    ("ipo", {"beta": 0.0}, "beta must be > 0"),
    ("hinge", {"beta": -1}, "beta must be > 0"),
    ("slic", {"delta": -1}, "delta must be >= 0"),
    ("slic", {"nll_weight": -0.5}, "nll_weight must be >= 0"),
    ("rpo", {"eta": -1}, "eta must be >= 0"),
    ("rpo", {"nll_reduction": "max"}, "nll_reduction: input should be 'mean' or 'sum'"),
    ("orpo", {"beta": -0.1}, "beta must be >= 0"),
    ("simpo", {"beta": 0}, "beta must be > 0"),
    ("simpo", {"gamma_beta_ratio": -0.5}, "gamma_beta_ratio must be >= 0"),
    ("simpo", {"label_smoothing": 0.6}, "label_smoothing must be <= 0.5"),
    ("kto", {"desirable_weight": -1}, "desirable_weight must be >= 0"),
    ("kto", {"undesirable_weight": -1}, "undesirable_weight must be >= 0"),
    ("bco", {"min_density_ratio": -1}, "min_density_ratio must be >= 0"),
    ("bco", {"min_density_ratio": 2.0, "max_density_ratio": 1.0}, "must be >= min_density_ratio (2.0)"),
    ("bco", {"weights": [1.0]}, "unknown parameter 'weights'"),
    ("bco_pair", {"beta": -0.1}, "beta must be > 0"),
    ("bco_pair", {"state": {}}, "unknown parameter 'state'"),
    ("sft", {"beta": 0.1}, "unknown parameter 'beta'"),
    ("dpo", {"beta": "big"}, "beta: input should be a valid number"),
])
def test_out_of_range_parameters_are_rejected(name: str, raw: dict, expected: str) -> None:
    with pytest.raises(ParamsError) as info:
        validate_params(name, raw)
    assert expected in str(info.value) and name in str(info.value)


@pytest.mark.parametrize(("name", "raw"), [
    ("robust_dpo", {"label_smoothing": 0.49}),
    ("dpo", {"label_smoothing": 0.5}),
    ("simpo", {"label_smoothing": 0.5, "gamma_beta_ratio": 0.0}),
    ("orpo", {"beta": 0.0}),
    ("slic", {"delta": 0.0, "nll_weight": 0.0}),
    ("rpo", {"nll_reduction": "sum", "eta": 0}),
    ("bco", {"min_density_ratio": 1.0, "max_density_ratio": 1.0}),
    ("bco_pair", {"use_running_delta": False}),
])
def test_boundary_values_are_accepted(name: str, raw: dict) -> None:
    assert params_dict(name, raw).items() >= raw.items()


@pytest.mark.parametrize("name", ["dpo", "robust_dpo", "simpo"])
@pytest.mark.parametrize("label_smoothing", [-0.1, 0.0, 0.25, 0.5, 0.7])
def test_config_ranges_agree_with_runtime_checks(name: str, label_smoothing: float) -> None:
    """The Python API keeps its own checks; a config value passes validation iff the function accepts it."""
    try:
        validate_params(name, {"label_smoothing": label_smoothing})
        config_ok = True
    except ParamsError:
        config_ok = False
    try:
        get_objective(name).fn(_pair(), label_smoothing=label_smoothing)
        runtime_ok = True
    except ValueError:
        runtime_ok = False
    assert config_ok == runtime_ok
