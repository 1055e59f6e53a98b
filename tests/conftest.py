"""Test set-up: four simulated CPU devices, TensorFlow kept off accelerators.

The environment must be set before jax (or tensorflow) is imported anywhere.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

DEMO_FASTA = Path(__file__).resolve().parents[1] / "dnavec_jax" / "data" / "human_chr22_20-21M.fa.gz"


@pytest.fixture(scope="session")
def chr22_fasta() -> Path:
    """1 Mbp of real human chr22 with a 100 kb N gap (the embedded demo corpus)."""
    assert DEMO_FASTA.exists(), DEMO_FASTA
    return DEMO_FASTA
