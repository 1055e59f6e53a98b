"""Settings dataclasses: each default and its help written once, as field metadata.

`setting(default, help)` declares a field; `add_arguments` turns a dataclass's
fields into argparse flags of the same names, `values_from_args` reads them back,
and `from_mapping` builds the dataclass from a plain dict (a config section) with
one-line errors. docs/training.md and the tools' --help show the same texts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dnavec_jax.errors import DNAVecError


def setting(default: Any, help: str, *, choices: Sequence[Any] | None = None, flag: bool = True) -> Any:
    """A dataclass field with its help text (and allowed values); flag=False keeps it off the command line."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults: use a tuple")
    return dataclasses.field(default=default, metadata=metadata)


def help_text(cls, name: str) -> str:
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("help", "")


def convert(name: str, value: Any, default: Any, choices: Sequence[Any] | None = None) -> Any:
    """Coerces a plain value (config or JSON: lists, ints given for floats) to the type of `default`."""
    if value is None:
        if default is None:
            return None
        raise DNAVecError(f"{name} must not be empty (default {default!r})")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise DNAVecError(f"{name} must be true or false, got {value!r}")
        converted = value
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise DNAVecError(f"{name} must be a string, got {value!r}")
        converted = value
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise DNAVecError(f"{name} must be an integer, got {value!r}")
        converted = int(value)
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise DNAVecError(f"{name} must be a finite number, got {value!r}")
        converted = float(value)
    elif isinstance(default, tuple) or default is None:
        converted = tuple(value) if isinstance(value, (list, tuple)) else value
    else:
        converted = value
    if choices and converted not in choices:
        raise DNAVecError(f"{name} must be one of {', '.join(map(str, choices))}, got {converted!r}")
    return converted


def from_mapping(cls, values: Mapping[str, Any], section: str, special: Mapping[str, Callable] | None = None):
    """cls(**values) with every value converted to its field's type; unknown names are a one-line error.

    special: per-field converters (name -> function(value)) for fields the generic rule cannot type.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise DNAVecError(f"unknown {section} setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    converted = {}
    for name, value in values.items():
        field = fields[name]
        where = f"{section}.{name}"
        if special and name in special:
            converted[name] = special[name](value)
        else:
            converted[name] = convert(where, value, field.default, field.metadata.get("choices"))
    return cls(**converted)


def add_arguments(parser: argparse.ArgumentParser, cls, *, skip: Sequence[str] = (), defaults: Any = None,
                  types: Mapping[str, Callable[[str], Any]] | None = None) -> None:
    """One --NAME flag per field of `cls` (help and choices from its metadata, default shown).

    Flags default to None, so values_from_args keeps only what the user gave; `defaults` (an instance)
    shows other defaults in the help than the dataclass's own. types: parsers for fields whose type
    is not int, float, str or bool (e.g. comma-separated tuples).
    """
    shown = defaults if defaults is not None else cls()
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.metadata.get("flag", True):
            continue
        default = getattr(shown, field.name)
        kwargs: dict[str, Any] = {"default": None, "help": f"{field.metadata.get('help', '')} (default: {default})"}
        if types and field.name in types:
            kwargs["type"] = types[field.name]
        elif isinstance(field.default, bool):
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "{true,false}"
        elif isinstance(field.default, (int, float, str)):
            kwargs["type"] = type(field.default)
        if field.metadata.get("choices"):
            kwargs["choices"] = field.metadata["choices"]
        parser.add_argument(f"--{field.name}", **kwargs)


def values_from_args(cls, args: argparse.Namespace, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The fields of `cls` the user set on the command line (flags added by add_arguments)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and getattr(args, f.name, None) is not None}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
