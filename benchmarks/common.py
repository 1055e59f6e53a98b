"""What the benchmark scripts share: config loading, library versions, and one float32-matmul setting.

TF32 is the one numeric setting that differs between the frameworks' defaults (JAX lets XLA use
TF32 for float32 matmuls on NVIDIA GPUs, PyTorch does not), so every script sets it explicitly and
reports it: --matmul_precision tf32 (both sides may use TF32) or highest (both full float32).
bf16 matmuls are unaffected either way.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MATMUL_PRECISIONS = ("tf32", "highest")


def load_config(path: str | Path):
    """get_config() of a config file (configs/base.py, ...)."""
    spec = importlib.util.spec_from_file_location("bench_config", str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (and Python); "absent" for missing ones."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def set_jax_matmul_precision(precision: str) -> None:
    import jax

    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if precision == "tf32" else "highest")


def set_torch_matmul_precision(precision: str) -> None:
    import torch

    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
