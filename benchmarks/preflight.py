"""The GPU suite's first row: can every part of it run here? Never fails; prints JSON lines. Not a test.

    python benchmarks/preflight.py

Imports every module a row of benchmarks/gpu_suite.sh needs, each on its own, and prints
  {"check": "versions", ...}   Python and the library versions (absent ones say so);
  {"check": "devices", ...}    JAX's backend and devices, and nvidia-smi's view of the GPU;
  {"check": "wheels", ...}     the .whl/ folder the device call carries (docs/benchmarks.md);
  {"check": "missing", ...}    one line per module that does not import: which rows need it, the error,
                               and how to bring it (a missing module is a row, not a crash).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

from common import REPO, versions

# module -> the suite rows that import it (what a missing module costs).
NEEDED = {
    "numpy": "all",
    "jax": "all JAX rows", "flax": "all JAX rows", "optax": "all JAX rows",
    "ml_collections": "all rows (the configs are ml_collections ConfigDicts)",
    "absl": "all JAX rows",
    "dnavec_jax.training.loop": "ours_* sweep and rows, base_dna",
    "dnavec_jax.data.memory": "base_dna (the in-memory chr22 source)",
    "torch": "torch_*, embed", "transformers": "torch_*, embed",
    "safetensors": "embed (the export)",
    "dnavec_jax.tools.embed": "embed",
    "orbax.checkpoint": "checkpoint_save (and the trainer's import)",
}
DISTRIBUTIONS = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint",
                 "ml-collections", "numpy", "torch", "transformers", "safetensors", "tensorflow", "tensorflow-cpu",
                 "pyfaidx")
WHEELS = REPO / ".whl"
DOWNLOAD = ("python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "
            "--platform manylinux_2_28_x86_64 -d .whl ml-collections==1.1.0")


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def main() -> None:
    emit({"check": "versions", **versions(*DISTRIBUTIONS)})
    missing = []
    for module, needed_by in NEEDED.items():
        try:
            importlib.import_module(module)
        except Exception as error:  # ImportError, or a module that fails while importing: both are a row
            missing.append(module)
            emit({"check": "missing", "module": module, "needed_by": needed_by,
                  "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}",
                  "fix": (f"carry its wheel: {DOWNLOAD}, then run(..., carry=['.whl'])"
                          if module == "ml_collections" else "install it on the device image")})
    wheels = sorted(path.name for path in WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
    emit({"check": "wheels", "folder": str(WHEELS), "wheels": wheels,
          "ok": "ml_collections" not in missing,
          **({} if wheels or "ml_collections" not in missing else {"fix": DOWNLOAD})})
    devices = {"check": "devices"}
    if "jax" not in missing:
        import jax

        try:
            devices.update(backend=jax.default_backend(), devices=[d.device_kind for d in jax.devices()])
        except Exception as error:
            devices["jax_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        devices["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[:200]
    except (OSError, subprocess.TimeoutExpired) as error:
        devices["nvidia_smi"] = f"unavailable ({type(error).__name__})"
    devices["python"] = sys.executable
    emit(devices)


if __name__ == "__main__":
    main()
