"""The fused CPU attention kernel (dnavec_jax/kernels/cpu_attention.py): XLA's numbers and gradients on every
shape and mask inference meets, its build cache, and the fallback to XLA where it cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnavec_jax.kernels import cpu_attention


def xla_attention(query, key, value, mask):
    return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation="xla")


def random_inputs(seed, batch, length, heads, head_dim, scale=1.0):
    rng = np.random.default_rng(seed)
    return [scale * rng.standard_normal((batch, length, heads, head_dim), dtype=np.float32) for _ in range(3)]


HAS_COMPILER = cpu_attention._compiler() is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the kernel cannot be built here")


@needs_compiler
def test_the_kernel_builds_here():
    """Where a compiler is, the kernel must build (a machine without one runs XLA's path, tested below)."""
    assert cpu_attention.available()


@needs_compiler
@pytest.mark.parametrize("batch,length,heads,head_dim", [
    (3, 64, 2, 16),     # the tiny configs' heads
    (2, 130, 1, 64),    # base heads; keys past one register tile
    (1, 7, 3, 24),      # a head size no vector width divides
    (4, 1, 2, 8),       # one position
    (2, 300, 2, 128),   # head_dim of two output tiles; query blocks with a part-full last tile
])
def test_fused_attention_gives_xla_numbers(batch, length, heads, head_dim):
    q, k, v = random_inputs(batch * 1000 + length, batch, length, heads, head_dim)
    rng = np.random.default_rng(length)
    keep = np.ones((batch, length), bool)
    lengths = rng.integers(1, length + 1, size=batch)
    for row, real in enumerate(lengths):
        keep[row, real:] = False  # padding at the end, as inference packs windows
    if length > 4:
        keep[0, 1:3] = False      # and holes: the kernel takes any mask
    mask = keep[:, None, None, :]
    fused = jax.jit(cpu_attention.attention)
    np.testing.assert_allclose(fused(q, k, v, mask), xla_attention(q, k, v, mask), atol=1e-5)
    np.testing.assert_allclose(fused(q, k, v, None), xla_attention(q, k, v, None), atol=1e-5)


@needs_compiler
@pytest.mark.skipif("avx2" not in cpu_attention._cpu_flags().split(),
                    reason="builds the x86 vector widths: needs an AVX2 x86 CPU")
@pytest.mark.parametrize("march", ["haswell", "x86-64"])  # AVX2 (8 floats a vector), SSE (4)
def test_every_vector_width_gives_xla_numbers(march):
    """Users' CPUs build other widths than this one (-march=native): the AVX2 and SSE builds are checked here
    on shapes that leave part-full tiles at each width."""
    target = cpu_attention.register(march)
    for batch, length, heads, head_dim in ((2, 77, 2, 24), (1, 130, 1, 64)):
        q, k, v = random_inputs(length, batch, length, heads, head_dim)
        keep = np.ones((batch, length), bool)
        keep[0, length // 2:] = False
        mask = keep[:, None, None, :]
        out = jax.jit(lambda *a: cpu_attention.attention(*a, target=target))(q, k, v, mask)
        np.testing.assert_allclose(out, xla_attention(q, k, v, mask), atol=1e-5)


@needs_compiler
def test_a_row_without_real_keys_attends_uniformly_as_in_xla():
    """The filler rows of a part-full batch have no real key: XLA's mask gives them uniform weights."""
    q, k, v = random_inputs(1, 2, 40, 2, 16)
    keep = np.ones((2, 40), bool)
    keep[1] = False
    mask = keep[:, None, None, :]
    out = np.asarray(jax.jit(cpu_attention.attention)(q, k, v, mask))
    np.testing.assert_allclose(out, xla_attention(q, k, v, mask), atol=2e-6)
    np.testing.assert_allclose(out[1], np.broadcast_to(v[1].mean(axis=0), out[1].shape), atol=2e-6)


@needs_compiler
def test_large_scores_do_not_overflow():
    q, k, v = random_inputs(2, 2, 50, 2, 32, scale=30.0)  # scores in the thousands
    mask = np.ones((2, 1, 1, 50), bool)
    out = np.asarray(jax.jit(cpu_attention.attention)(q, k, v, mask))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, xla_attention(q, k, v, mask), atol=1e-4, rtol=1e-4)


@needs_compiler
def test_gradients_are_xla_attentions():
    q, k, v = random_inputs(3, 2, 20, 2, 16)
    keep = np.ones((2, 20), bool)
    keep[1, 12:] = False
    mask = keep[:, None, None, :]
    weights = np.random.default_rng(4).standard_normal(q.shape).astype(np.float32)

    def loss(function):
        return lambda *qkv: jnp.sum(function(*qkv, mask) * weights)

    fused = jax.grad(loss(cpu_attention.attention), argnums=(0, 1, 2))(q, k, v)
    xla = jax.grad(loss(xla_attention), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(fused, xla):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _available_in_subprocess(tmp_path, **env) -> subprocess.CompletedProcess:
    script = textwrap.dedent("""
        import warnings
        warnings.simplefilter("always")
        from dnavec_jax.kernels import cpu_attention
        print("available", cpu_attention.available())
        from dnavec_jax.model import BertConfig
        from dnavec_jax.tools.loaded_model import inference_config
        print("inference", inference_config(BertConfig()).attention_implementation)
    """)
    environment = {**os.environ, "DNAVEC_CACHE_DIR": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment,
                          timeout=600)


@needs_compiler
def test_build_is_cached_and_leaves_no_partial_file(tmp_path):
    first = _available_in_subprocess(tmp_path)
    assert "available True" in first.stdout and "inference cpu_fused" in first.stdout, first.stderr
    built = sorted((tmp_path / "cache").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so", built
    stamp = built[0].stat().st_mtime_ns
    again = _available_in_subprocess(tmp_path)
    assert "available True" in again.stdout and built[0].stat().st_mtime_ns == stamp
    assert sorted((tmp_path / "cache").iterdir()) == built


@pytest.mark.parametrize("env,reason", [
    ({"CXX": "/nonexistent/c++"}, "no C++ compiler (/nonexistent/c++ not found)"),
    ({"CXX": "false"}, "failed"),
    ({"DNAVEC_CPU_ATTENTION": "0"}, None),
])
def test_without_a_build_inference_keeps_xla(tmp_path, env, reason):
    """No compiler, a failing one, or the opt-out: one warning (none for the opt-out), False, and inference
    picks the per-head XLA path; nothing is left in the cache."""
    result = _available_in_subprocess(tmp_path, **env)
    assert "available False" in result.stdout and "inference xla_per_head" in result.stdout, result.stderr
    if reason is None:
        assert "fused CPU attention unavailable" not in result.stderr
    else:
        assert "fused CPU attention unavailable, using XLA's" in result.stderr and reason in result.stderr
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())


def test_the_kernel_source_ships_in_the_package():
    """A non-editable install compiles the .cc it carries: pyproject's package data must list it."""
    import fnmatch
    import tomllib

    from conftest import REPO

    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    relative = cpu_attention.SOURCE.relative_to(REPO / "dnavec_jax").as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data["dnavec_jax"]), relative
