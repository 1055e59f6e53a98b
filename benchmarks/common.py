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


def random_model_export(config_path: str | Path, out_dir: Path) -> Path:
    """A randomly initialised model of a config, exported (HF layout) to out_dir/export: a model of that shape
    for benchmarks that do not depend on the weights."""
    import jax

    from dnavec_jax import export
    from dnavec_jax.model import init_params
    from dnavec_jax.training import settings

    config = load_config(config_path)
    model_config = settings.model_config_from(config)
    prep = config.data.prep
    tokenizer = export.tokenizer_from_train_config(config.to_dict())
    params = jax.device_get(init_params(model_config, jax.random.key(0)))
    return export.export_to_hf(params, model_config, tokenizer, out_dir / "export",
                                  train_config={"data": {"prep": {"k_min": prep.k_min, "k_max": prep.k_max,
                                                                  "seq_length": prep.seq_length}}})
