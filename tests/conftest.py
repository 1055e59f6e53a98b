"""Test set-up: four simulated CPU devices, TensorFlow kept off accelerators.

The environment must be set before jax (or tensorflow) is imported anywhere.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import importlib
from pathlib import Path

# pytest assertion-rewrites every module of a plugin's distribution, hypothesis included. Its plugin
# imports hypothesis late, at session end, when no test file did: on Python 3.11.7 that rewrite once
# crashed a subset run after all tests passed (SystemError: AST constructor recursion depth mismatch).
# Importing it here does the rewrite at collection, as in a full run.
import hypothesis  # noqa: F401
import pytest

DEMO_FASTA = Path(__file__).resolve().parents[1] / "dnavec_jax" / "data" / "human_chr22_20-21M.fa.gz"


@pytest.fixture(scope="session")
def chr22_fasta() -> Path:
    """1 Mbp of real human chr22 with a 100 kb N gap (the embedded demo corpus)."""
    assert DEMO_FASTA.exists(), DEMO_FASTA
    return DEMO_FASTA


@pytest.fixture(scope="session")
def demo_prep():
    """The data-prep settings of configs/demo.py: the pretraining run a task generator is told about (its
    held-out blocks are the demo model's)."""
    from dnavec_jax.training.settings import RunSettings

    return RunSettings.from_config(load_config_file("demo")).prep


# ---- training-system fixtures (tests/test_train*.py, test_checkpoint*.py, test_input*.py) ----

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free localhost TCP port (a jax.distributed coordinator of a multi-process test)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def load_config_file(name: str):
    """get_config() of configs/<name>.py (an unlocked ml_collections ConfigDict)."""
    return importlib.import_module(f"configs.{name}").get_config()


def data_prep_script(name: str):
    """The module of data_prep/<name>.py (a script, not a package module), imported."""
    import sys

    sys.path.insert(0, str(REPO / "data_prep"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "data_prep"))


def train_and_evaluate(config, workdir, **kwargs):
    """What run_pretrain.py does with a config: RunSettings built once, TensorFlow configured, then the loop."""
    from dnavec_jax.tf_runtime import configure_tf
    from dnavec_jax.training import loop
    from dnavec_jax.training.settings import RunSettings

    settings = RunSettings.from_config(config)
    configure_tf(settings.data.tf_threads)
    return loop.train_and_evaluate(settings, workdir, **kwargs)


def optimizer_of(config):
    """optim.make_optimizer(...) of a config's train section."""
    from dnavec_jax.training import optim
    from dnavec_jax.training.settings import RunSettings

    return optim.make_optimizer(RunSettings.from_config(config).train.optimizer)


def set_dotted(config, overrides: dict):
    """Applies {"train.learning_rate": 1e-3, ...} to a ConfigDict (what --config.X=V flags do); returns it."""
    for key, value in overrides.items():
        section, name = key.rsplit(".", 1)
        target = config
        for part in section.split("."):
            target = target[part]
        target[name] = value
    return config


def jaxpr_equations(closed_jaxpr) -> list:
    """Every equation of a traced program, nested jaxprs (jit, custom_vjp, cond, scan) included."""
    from jax._src import core

    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            found.append(eqn)
            for value in eqn.params.values():
                for item in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(item, core.ClosedJaxpr):
                        walk(item.jaxpr)
                    elif isinstance(item, core.Jaxpr):
                        walk(item)

    walk(closed_jaxpr.jaxpr)
    return found


@pytest.fixture
def stub_cudnn(monkeypatch):
    """Lets jax.nn.dot_product_attention(implementation="cudnn") trace on the CPU: cuDNN's version and
    compute-capability checks are stubbed, so JAX's own argument checks (what a GPU meets first) run."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention

    monkeypatch.setattr(cudnn_attention, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(cudnn_attention, "check_compute_capability", lambda capability: True)
    monkeypatch.setattr(cudnn_attention, "is_cuda_compute_capability_equal", lambda capability: False)


@pytest.fixture
def tiny_config():
    """configs/tiny.py: a 2-layer, hidden-32 model on synthetic data (64 tokens, k 3..4)."""
    return load_config_file("tiny")


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """A persistent XLA compilation cache for the session (the same tiny programs compile many times).

    Returns the environment a subprocess needs to share it.
    """
    import jax

    path = tmp_path_factory.mktemp("jax_compile_cache")
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return {"JAX_COMPILATION_CACHE_DIR": str(path), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


TINY_PREP = dict(k_min=3, k_max=4, seq_length=64, max_predictions=10, validation_fraction=0.05,
                 validation_block_size=20_000, chunk_bases=100_000, shard_bases=200_000)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The chr22 demo corpus prepared for configs/tiny.py: k 3..4, 64 tokens, 6 train / 2 validation shards."""
    from dnavec_jax.data import PrepSettings, prepare_dataset

    data_dir = tmp_path_factory.mktemp("tiny_dataset")
    prepare_dataset(PrepSettings(**TINY_PREP), data_dir, progress=False)
    return data_dir


@pytest.fixture
def tiny_tfrecord_config(tiny_config, tiny_dataset):
    """configs/tiny.py reading the prepared chr22 shards of tiny_dataset."""
    tiny_config.data.update(source="tfrecord", data_dir=str(tiny_dataset))
    tiny_config.data.prep.update(**TINY_PREP)
    return tiny_config


# ---- a trained model for the export and analysis tests ----

@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, compile_cache, tiny_dataset) -> Path:
    """configs/tiny.py trained for 40 steps on the prepared chr22 shards (k 3..4, 64 tokens).

    A stand-in for a demo run: real data, real checkpoints, a metrics.jsonl whose
    last eval row covers the whole validation split.
    """
    config = load_config_file("tiny")
    config.data.update(source="tfrecord", data_dir=str(tiny_dataset), shuffle_buffer=256)
    config.data.prep.update(**TINY_PREP)
    config.train.update(num_train_steps=40, warmup_steps=5, log_every_steps=10, eval_every_steps=0,
                        checkpoint_every_steps=20, async_checkpointing=False)
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="session")
def trained_export(trained_workdir, tmp_path_factory) -> Path:
    """trained_workdir's latest checkpoint exported as a Hugging Face directory."""
    from dnavec_jax import export

    output_dir, _ = export.export_checkpoint(trained_workdir, tmp_path_factory.mktemp("export") / "hf")
    return Path(output_dir)
