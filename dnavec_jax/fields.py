"""Settings dataclasses: each default and its help written once, as field metadata.

`setting(default, help)` declares a field; `add_arguments` turns a dataclass's
fields into argparse flags (same names, or a prefix, a rename, a bare switch, a
required or repeated flag), `values_from_args` reads them back, `from_args` builds
the dataclass from them (the one place an argparse Namespace becomes settings), and
`from_mapping` builds it from a plain dict (a config section) with one-line errors.
docs/training.md and the tools' --help show the same texts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dnavec_jax.errors import DNAVecError


def setting(default: Any, help: str, *, choices: Sequence[Any] | None = None, flag: bool = True,
            flag_name: str | None = None, switch: bool = False, required: bool = False, repeated: bool = False,
            parse: Callable[[str], Any] | None = None) -> Any:
    """A dataclass field with its help text (and allowed values); flag=False keeps it off the command line.

    flag_name: the flag's name when it is not the field's (before add_arguments' prefix). switch: a bool
    set by a bare flag (store_true for a False default, store_false for a True one, e.g. --no_retokenize)
    instead of `--NAME {true,false}`. required: the flag must be given (the default serves Python callers
    and tests only). repeated: a tuple field, one item per use of the flag (`--fasta A --fasta B`).
    parse: the flag's parser where the default's type does not say it (an int setting that defaults to None).
    """
    if switch and not isinstance(default, bool):
        raise TypeError("switch=True needs a bool default")
    if repeated and not isinstance(default, tuple):
        raise TypeError("repeated=True needs a tuple default")
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag,
                "flag_name": flag_name, "switch": switch, "required": required, "repeated": repeated,
                "parse": parse}
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


def flag_fields(cls, names: Sequence[str] | None = None, skip: Sequence[str] = ()) -> list[dataclasses.Field]:
    """The fields of `cls` that are flags: all (field order) or `names` (in that order), less `skip`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    chosen = [fields[name] for name in names] if names is not None else list(fields.values())
    return [f for f in chosen if f.name not in skip and f.metadata.get("flag", True)]


def add_arguments(parser: argparse.ArgumentParser, cls, *, names: Sequence[str] | None = None,
                  skip: Sequence[str] = (), prefix: str = "", defaults: Any = None,
                  types: Mapping[str, Callable[[str], Any]] | None = None,
                  helps: Mapping[str, str | None] | None = None, show_default: bool = True,
                  parse_defaults: bool = False) -> None:
    """One --PREFIXNAME flag per field of `cls` (or of `names`, in that order), help and choices from its metadata.

    The value lands in args.PREFIXNAME (PREFIX + the field's name, also for a renamed flag).
    show_default: append "(default: X)" to the help; False renders the help as written, which may
    say `%(default)s` itself. parse_defaults: flags default to the dataclass's values (the tools' way);
    otherwise to None, so values_from_args keeps only what the user gave. `defaults` (an instance)
    shows and uses other defaults than the dataclass's own. types: parsers for fields whose type is not
    int, float, str or bool (e.g. comma-separated tuples). helps: a tool's own help for some fields
    (None: no help), where its flag means the field in that tool's terms.
    """
    shown = defaults if defaults is not None else cls()
    for field in flag_fields(cls, names, skip):
        default = getattr(shown, field.name)
        text = helps[field.name] if helps and field.name in helps else field.metadata.get("help", "")
        if show_default:
            text = f"{text} (default: {default})"
        kwargs: dict[str, Any] = {"dest": prefix + field.name, "default": default if parse_defaults else None,
                                  "help": text}
        if field.metadata.get("required"):
            kwargs.update(required=True, default=None)
        if field.metadata.get("switch"):
            kwargs["action"] = "store_false" if field.default else "store_true"
        elif field.metadata.get("repeated"):
            kwargs["action"] = "append"
            kwargs["default"] = None  # argparse appends to a default list: none, so the user's uses alone count
        elif types and field.name in types:
            kwargs["type"] = types[field.name]
        elif field.metadata.get("parse"):
            kwargs["type"] = field.metadata["parse"]
        elif isinstance(field.default, bool):
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "{true,false}"
        elif isinstance(field.default, (int, float, str)):
            kwargs["type"] = type(field.default)
        if field.metadata.get("choices"):
            kwargs["choices"] = field.metadata["choices"]
        parser.add_argument(f"--{prefix}{field.metadata.get('flag_name') or field.name}", **kwargs)


def values_from_args(cls, args: argparse.Namespace, *, names: Sequence[str] | None = None, skip: Sequence[str] = (),
                     prefix: str = "") -> dict[str, Any]:
    """The fields of `cls` set on the command line (flags added by add_arguments with the same prefix)."""
    return {f.name: getattr(args, prefix + f.name) for f in flag_fields(cls, names, skip)
            if getattr(args, prefix + f.name, None) is not None}


def from_args(cls, args: argparse.Namespace, *, prefix: str = "", **values: Any):
    """cls built from the flags add_arguments made for it (every flag field; those not on the command line keep
    their defaults), plus `values` for the fields that are not flags (nested settings): what an entry point does
    once, so that nothing below it reads the Namespace. Repeated flags become tuples."""
    given = values_from_args(cls, args, prefix=prefix)
    for field in flag_fields(cls):
        if field.metadata.get("repeated") and field.name in given:
            given[field.name] = tuple(given[field.name])
    return cls(**given, **values)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
