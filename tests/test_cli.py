"""The `dnavec` flags generated from the settings dataclasses: their defaults are the dataclasses'."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from dnavec_jax import cli
from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.errors import DNAVecError
from dnavec_jax.fields import add_arguments, flag_fields, setting, values_from_args
from dnavec_jax.tools.classify.settings import (
    PROBE_FLAGS,
    PROBE_PREFIX,
    ClassifySettings,
    FinetuneSettings,
    TokenProbeSettings,
)
from dnavec_jax.tools.settings import (
    TFIDF_PREP_FLAGS,
    AttentionSettings,
    EmbedSettings,
    NeighborsSettings,
    PredictSettings,
    TfidfSettings,
    VectorsSettings,
)

CLASSIFY = ["classify", "--model", "m", "--train", "a.csv", "--dev", "b.csv", "--test", "c.csv", "--output_dir", "o"]
CLASSIFY_IO = dict(model="m", train="a.csv", dev="b.csv", test="c.csv", output_dir="o")


def _parse(argv):
    return cli.build_parser().parse_args(argv)


def _flag_dests(command: str) -> set[str]:
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in subparsers.choices[command]._actions if a.dest != "help"}


def test_classify_flag_defaults_are_the_dataclass_defaults():
    settings = cli.classify_settings(_parse(CLASSIFY))
    assert settings == ClassifySettings(**CLASSIFY_IO)  # the nested fits' settings included
    assert settings.token_probe == TokenProbeSettings() and settings.finetune == FinetuneSettings()


def test_classify_flags_set_the_settings():
    settings = cli.classify_settings(_parse([
        *CLASSIFY, "--no_retokenize", "--probe_epochs", "7", "--learning_rate", "0.5", "--tfidf",
        "--random_init_control", "--seed", "3", "--methods", "probe, baseline,probe", "--step", "12"]))
    assert (settings.finetune.retokenize, settings.finetune.learning_rate, settings.finetune.seed) == (False, 0.5, 3)
    assert settings.token_probe.epochs == 7
    assert settings.tfidf and settings.random_init_control and settings.step == 12
    assert settings.methods == ("probe", "baseline")


@pytest.mark.parametrize("flags, message", [
    (["--methods", "probe,nope"], r"--methods 'probe,nope': expected a comma list of baseline, probe, finetune"),
    (["--probe_features", ""], r"--probe_features '': expected a comma list"),
    (["--seeds", "0"], r"--seeds must be at least 1, got 0"),
    (["--baseline_k", "9-3"], r"--baseline_k '9-3'"),
    (["--probe_epochs", "0"], r"--probe_epochs must be at least 1"),
    (["--batch_size", "0"], r"--batch_size must be at least 1"),
])
def test_classify_settings_are_checked_once_built(flags, message):
    with pytest.raises(DNAVecError, match=message):
        cli.classify_settings(_parse([*CLASSIFY, *flags]))


def test_every_optional_classify_flag_comes_from_a_dataclass():
    generated = ({f.name for f in dataclasses.fields(ClassifySettings) if f.metadata["flag"]}
                 | {PROBE_PREFIX + name for name in PROBE_FLAGS}
                 | {f.name for f in dataclasses.fields(FinetuneSettings) if f.metadata["flag"]})
    assert _flag_dests("classify") == generated


TOOLS = [
    (["vectors", "--model", "m", "--output_dir", "o"], VectorsSettings),
    (["neighbors", "--model", "m", "--kmer", "ACGT"], NeighborsSettings),
    (["embed", "--model", "m", "--fasta", "f.fa", "--output", "x.npz"], EmbedSettings),
    (["tfidf", "--fasta", "a.fa", "--fasta", "b.fa", "--output_dir", "o"], TfidfSettings),
    (["attention", "--model", "m", "--fasta", "a.fa", "--output_dir", "o"], AttentionSettings),
    (["predict", "--model", "c", "--input", "i.csv", "--output", "p.csv"], PredictSettings),
]


@pytest.mark.parametrize("argv, settings_class", TOOLS, ids=[argv[0] for argv, _ in TOOLS])
def test_tool_flags_are_their_settings_dataclass(argv, settings_class, monkeypatch):
    """Every flag of a tool is a field of its settings dataclass, with the dataclass's default, and the handler
    hands the tool that dataclass, built once (no argparse Namespace below the command line)."""
    assert _flag_dests(argv[0]) == {f.name for f in flag_fields(settings_class)}
    repeated = {f.name for f in flag_fields(settings_class) if f.metadata["repeated"]}
    given: dict = {}
    for flag, value in zip(argv[1::2], argv[2::2]):
        name = flag[2:]
        given[name] = (*given.get(name, ()), value) if name in repeated else value
    calls = []
    monkeypatch.setattr(cli, "_call", lambda module, function, settings: calls.append((module, function, settings)))
    args = _parse(argv)
    assert cli.run_cli(lambda: args.handler(args)) == 0
    (module, function, settings), = calls
    assert settings == settings_class(**given)
    assert function.startswith("run_") and isinstance(settings, settings_class)


def test_tool_settings_errors_are_one_line(capsys):
    assert cli.main(["neighbors", "--model", "m", "--kmer", "ACG", "--top", "0"]) == 2
    assert capsys.readouterr().err == "error: --top must be at least 1, got 0\n"


def test_tfidf_flag_defaults_are_data_prep_defaults():
    args = _parse(["tfidf", "--fasta", "x.fa", "--output_dir", "o"])
    for name in TFIDF_PREP_FLAGS:
        assert getattr(args, name) == getattr(PrepSettings(), name), name
    assert _flag_dests("tfidf") == {*TFIDF_PREP_FLAGS, "fasta", "output_dir", "top", "overwrite"}


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


def test_dnavec_caps_malloc_arenas_first_unless_the_user_set_them(monkeypatch):
    """`dnavec` caps glibc's arenas before any thread starts (tools/malloc.py: XLA's threads otherwise grew
    classify's peak memory with the task); MALLOC_ARENA_MAX in the environment wins."""
    import platform

    from dnavec_jax.tools import malloc

    calls = []
    monkeypatch.setattr(cli, "build_parser", lambda: calls.append("parser") or pytest.fail("stop here"))
    monkeypatch.setattr(malloc, "limit_arenas", lambda: calls.append("arenas"))
    with pytest.raises(pytest.fail.Exception):
        cli.main(["tfidf", "--help"])
    assert calls == ["arenas", "parser"]
    monkeypatch.undo()
    glibc = platform.libc_ver()[0] == "glibc"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert malloc.limit_arenas() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert malloc.limit_arenas() is glibc
