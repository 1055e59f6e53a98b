"""TensorFlow next to JAX: kept off accelerators and to a few CPU threads (docs/training.md).

TensorFlow (tf.data, TFDS) must never take GPU/TPU memory from JAX, and with its
default thread pools it competes with XLA's CPU threads: on a 2-core machine that
doubled the demo's step time. The package imports TensorFlow only through
tensorflow(), the one place that hides accelerators from it; entry points call
configure_tf once, before any TensorFlow op runs, to size its thread pools.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

from dnavec_jax.errors import DNAVecError

# Data prep and training on prepared shards need the `train` extra (pyproject.toml); nothing else does.
TRAIN_INSTALL = 'pip install -e ".[train]"'
TRAIN_MODULES = ("tensorflow", "tensorflow_datasets", "google_crc32c", "simple_parsing")
# Data prep on Apache Beam (--beam_pipeline_options) needs the `beam` extra besides.
BEAM_INSTALL = 'pip install -e ".[beam]"'
BEAM_MODULES = ("apache_beam", "dask", "distributed")
_EXTRAS = {"train": (TRAIN_MODULES, TRAIN_INSTALL), "beam": (BEAM_MODULES, BEAM_INSTALL)}


def import_extra_module(name: str, purpose: str, extra: str = "train") -> ModuleType:
    """importlib.import_module(name), or a one-line DNAVecError naming the extra (pyproject.toml) where one of
    its packages is missing (the tools, the exports and synthetic training run without any)."""
    modules, install = _EXTRAS[extra]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in modules:
            raise
        raise DNAVecError(f"{purpose} needs {error.name.split('.')[0]}, which is not installed: {install}") \
            from None


def import_train_module(name: str, purpose: str) -> ModuleType:
    """import_extra_module for the `train` extra (TensorFlow, TensorFlow Datasets)."""
    return import_extra_module(name, purpose, "train")


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported (without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


_HIDDEN: list[bool] = []  # set once accelerators are hidden from this process's TensorFlow


def tensorflow(purpose: str = "reading the prepared shards") -> ModuleType:
    """The tensorflow module, with GPUs and TPUs hidden from it (once per process); a one-line DNAVecError
    naming the train extra where it is not installed. Every TensorFlow use in the package goes through here."""
    tf = import_train_module("tensorflow", purpose)
    if not _HIDDEN:
        hide_accelerators_from_tf(tf)
        _HIDDEN.append(True)
    return tf


def tf_thread_count(setting: int) -> int:
    """TensorFlow threads for the input pipeline: the setting, or (0) a quarter of the cores, 1 to 8."""
    return int(setting) if setting > 0 else max(1, min(8, (os.cpu_count() or 1) // 4))


def hide_accelerators_from_tf(tf) -> None:
    """Makes GPUs and TPUs invisible to the TensorFlow module `tf`, so it never takes their memory from JAX."""
    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            pass  # already initialised (then it was done earlier) or no such device type


def configure_tf(threads: int = 0) -> bool:
    """Hides accelerators from TensorFlow and sizes its thread pools; False where TensorFlow is not installed
    (the synthetic source and metrics.jsonl need none: an accelerator image with JAX alone can benchmark).
    Entry points call it once, first."""
    if not tensorflow_installed():
        return False
    tf = tensorflow()
    count = tf_thread_count(threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(count)
        tf.config.threading.set_inter_op_parallelism_threads(count)
    except RuntimeError:
        pass  # TF already running (e.g. several runs in one process): keep its pools
    return True
