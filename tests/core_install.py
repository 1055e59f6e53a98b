"""Runs a script as __main__ as if only the core install were there (`pip install -e .`, no extras).

    python tests/core_install.py SCRIPT [ARGS...]
    CORE_INSTALL_ALSO_HIDE=pyfaidx python tests/core_install.py SCRIPT [ARGS...]   # and more packages

The packages of the extras (pyproject.toml: train, beam, hf, viz) become unimportable, and
importlib.util.find_spec reports them absent, as libraries probe for them that way
(transformers does for torch).
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import runpy
import sys

# The import names of the extras' packages: tests/test_install.py checks this list against pyproject.toml.
EXTRA_MODULES = ("tensorflow", "tensorflow_datasets", "google_crc32c", "simple_parsing", "apache_beam", "torch",
                 "sentence_transformers", "bertviz")


# More packages to hide, comma-separated (e.g. pyfaidx, which the GPU benchmark image lacks although the
# core install has it).
ALSO_HIDDEN = tuple(filter(None, os.environ.get("CORE_INSTALL_ALSO_HIDE", "").split(",")))


def _absent(name: str) -> bool:
    return name.split(".")[0] in EXTRA_MODULES + ALSO_HIDDEN


class _Missing(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ModuleNotFoundError(f"No module named {module.__name__!r}", name=module.__name__)


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, _Missing()) if _absent(name) else None


def _find_spec(name, package=None, _find=importlib.util.find_spec):
    return None if _absent(name) else _find(name, package)


if __name__ == "__main__":  # only then: the tests import EXTRA_MODULES from here
    sys.meta_path.insert(0, _NotInstalled())
    importlib.util.find_spec = _find_spec
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
