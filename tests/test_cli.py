"""The `dnavec` flags generated from the settings dataclasses: their defaults are the dataclasses'."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from dnavec_jax import cli
from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.fields import add_arguments, setting, values_from_args
from dnavec_jax.tools.classify.settings import (
    PROBE_FLAGS,
    PROBE_PREFIX,
    ClassifySettings,
    FinetuneSettings,
    TokenProbeSettings,
)

CLASSIFY = ["classify", "--model", "m", "--train", "a.csv", "--dev", "b.csv", "--test", "c.csv", "--output_dir", "o"]
# The classify flags written by hand in cli.py: required or shared ones, no dataclass default to repeat.
CLASSIFY_HAND_WRITTEN = {"model", "step", "train", "dev", "test", "output_dir", "overwrite"}


def _parse(argv):
    return cli.build_parser().parse_args(argv)


def _flag_dests(command: str) -> set[str]:
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in subparsers.choices[command]._actions if a.dest != "help"}


def test_classify_flag_defaults_are_the_dataclass_defaults():
    args = _parse(CLASSIFY)
    run_names = [f.name for f in dataclasses.fields(ClassifySettings)]
    assert ClassifySettings(**values_from_args(ClassifySettings, args)) == ClassifySettings()
    assert {name: getattr(args, name) for name in run_names} == dataclasses.asdict(ClassifySettings())
    probe = TokenProbeSettings(**values_from_args(TokenProbeSettings, args, names=PROBE_FLAGS, prefix=PROBE_PREFIX))
    assert probe == TokenProbeSettings()
    for name in PROBE_FLAGS:
        assert getattr(args, PROBE_PREFIX + name) == getattr(TokenProbeSettings(), name)
    finetune = FinetuneSettings(**values_from_args(FinetuneSettings, args), seed=args.seed)
    assert finetune == FinetuneSettings()


def test_classify_flags_set_the_settings():
    args = _parse([*CLASSIFY, "--no_retokenize", "--probe_epochs", "7", "--learning_rate", "0.5", "--tfidf",
                   "--random_init_control", "--seed", "3"])
    finetune = FinetuneSettings(**values_from_args(FinetuneSettings, args), seed=args.seed)
    assert (finetune.retokenize, finetune.learning_rate, finetune.seed) == (False, 0.5, 3)
    probe = TokenProbeSettings(**values_from_args(TokenProbeSettings, args, names=PROBE_FLAGS, prefix=PROBE_PREFIX))
    assert probe.epochs == 7
    assert args.tfidf and args.random_init_control


def test_every_optional_classify_flag_comes_from_a_dataclass():
    generated = ({f.name for f in dataclasses.fields(ClassifySettings)}
                 | {PROBE_PREFIX + name for name in PROBE_FLAGS}
                 | {f.name for f in dataclasses.fields(FinetuneSettings) if f.metadata["flag"]})
    assert _flag_dests("classify") == generated | CLASSIFY_HAND_WRITTEN


def test_tfidf_flag_defaults_are_data_prep_defaults():
    args = _parse(["tfidf", "--fasta", "x.fa", "--output_dir", "o"])
    for name in cli.TFIDF_PREP_FLAGS:
        assert getattr(args, name) == getattr(PrepSettings(), name), name
    assert _flag_dests("tfidf") == {*cli.TFIDF_PREP_FLAGS, "fasta", "output_dir", "top", "overwrite"}


@dataclasses.dataclass(frozen=True)
class _Example:
    rate: float = setting(0.5, "a rate")
    fresh: bool = setting(True, "keep it stale", flag_name="stale", switch=True)
    hidden: int = setting(1, "not a flag", flag=False)


@pytest.mark.parametrize("parse_defaults", [False, True])
def test_add_arguments_prefix_rename_switch(parse_defaults):
    parser = argparse.ArgumentParser()
    add_arguments(parser, _Example, prefix="x_", show_default=not parse_defaults, parse_defaults=parse_defaults)
    given = parser.parse_args(["--x_rate", "2", "--x_stale"])
    assert values_from_args(_Example, given, prefix="x_") == {"rate": 2.0, "fresh": False}
    empty = values_from_args(_Example, parser.parse_args([]), prefix="x_")
    assert empty == ({"rate": 0.5, "fresh": True} if parse_defaults else {})
    assert "--x_hidden" not in parser.format_help()
    assert ("(default: 0.5)" in parser.format_help()) == (not parse_defaults)
