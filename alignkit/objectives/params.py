"""Typed parameters for objectives and methods, checked when the config loads (before any model loads).

Every objective or method declares its parameters as a :class:`Params` subclass: names, types, defaults,
ranges (pydantic ``Field(ge=..., lt=...)``) and one line of description each. ``PARAMETERS`` maps every
registered name to its model; :func:`validate_params` turns a config's raw keys into a validated model or
one line naming the objective, the key and what is allowed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Params(BaseModel):
    """Base of every parameter model: unknown keys are rejected, values are range-checked."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class UncheckedParams(Params):
    """Parameters not declared yet: any key passes through unchecked (kept only while porting)."""

    model_config = ConfigDict(extra="allow", frozen=True)


PARAMETERS: dict[str, type[Params]] = {}


class ParamsError(ValueError):
    """A parameter that is unknown, of the wrong type or out of range; the message is one line."""


def register_params(name: str, model: type[Params]) -> None:
    if name in PARAMETERS and PARAMETERS[name] is not model:
        raise ValueError(f"parameters for {name!r} registered twice")
    PARAMETERS[name] = model


def accepted(model: type[Params]) -> str:
    return ", ".join(model.model_fields) or "none"


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown parameter {loc!r}"
    ctx = error.get("ctx") or {}
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
              "less_than_equal": "<= {le}"}
    if kind in bounds:
        return f"{loc} must be {bounds[kind].format(**ctx)} (got {error['input']!r})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{loc}: {message[:1].lower() + message[1:]} (got {error['input']!r})"


def validate_params(name: str, raw: dict[str, Any], where: str = "") -> Params:
    """The validated parameters of objective or method ``name``; :class:`ParamsError` (one line) if not."""
    model = PARAMETERS.get(name)
    prefix = f"{where} ({name})" if where else name
    if model is None:
        from difflib import get_close_matches

        close = get_close_matches(name, PARAMETERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(sorted(PARAMETERS))}"
        raise ParamsError(f"{where + ': ' if where else ''}unknown objective {name!r}{hint}")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(_describe(e) for e in error.errors())
        raise ParamsError(f"{prefix}: {problems} (accepted: {accepted(model)})") from None


def describe_all() -> list[tuple[str, list[tuple[str, str, Any, str]]]]:
    """(name, [(parameter, type, default, description), ...]) for every registered objective and method."""
    out = []
    for name in sorted(PARAMETERS):
        rows = []
        for key, field in PARAMETERS[name].model_fields.items():
            annotation = field.annotation
            annotation = (str(annotation) if getattr(annotation, "__args__", None)
                          else getattr(annotation, "__name__", None) or str(annotation))
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            rows.append((key, annotation.replace("typing.", ""), default, field.description or ""))
        out.append((name, rows))
    return out


def params_dict(name: str, raw: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Validated parameters as keyword arguments: every declared parameter, defaults filled in."""
    validated = validate_params(name, raw, where)
    return {**validated.model_dump(), **(validated.model_extra or {})}
