"""Fused attention for float32 inference on a CPU: cpu_attention.cc through jax.ffi (docs/outputs.md,
"Speed on a CPU").

XLA:CPU runs attention as separate passes over each head's L x L scores; the kernel keeps them in cache
and ran 2.9x faster than model.per_head_attention, and 1.14x faster than torch's SDPA, at the base shape
(benchmarks/attention_cpu.py), with the same numbers to float rounding. It is compiled at first use with
the machine's C++ compiler (`$CXX`, else `c++`) and -march=native, and cached under $DNAVEC_CACHE_DIR
(default ~/.cache/dnavec_jax), keyed by the source, the compiler, jaxlib's version and the CPU's flags.
available() says whether it can run here; where it cannot (no compiler, no jaxlib FFI headers, an
unwritable cache, another platform) inference warns once and keeps XLA's path; DNAVEC_CPU_ATTENTION=0
keeps it without a warning. Its gradient is XLA's attention's (recomputed), so a model that uses it can
also be differentiated.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "dnavec_cpu_attention"
SOURCE = Path(__file__).with_name("cpu_attention.cc")
DISABLE_ENV = "DNAVEC_CPU_ATTENTION"  # "0": never build or use the kernel
COMPILE_TIMEOUT_S = 300


def cache_dir() -> Path:
    configured = os.environ.get("DNAVEC_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dnavec_jax"


def _cpu_flags() -> str:
    """The CPU's feature flags (-march=native code must not run on a CPU without them)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX") or "c++")


def _build(compiler: str, march: str) -> Path:
    """The shared library for `-march={march}`, compiled into the cache unless there already; written to a
    temporary name and renamed, so that concurrent builders (pytest workers) never load half a file. Raises
    RuntimeError."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    flags = ["-O3", f"-march={march}", "-std=c++17", "-shared", "-fPIC", "-isystem", jax.ffi.include_dir()]
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(flags), jax.__version__,
                                    _cpu_flags()]).encode()).hexdigest()[:16]
    library = cache_dir() / f"cpu_attention-{march}-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=library.name, suffix=".partial", dir=library.parent)
    os.close(handle)
    try:
        result = subprocess.run([compiler, *flags, "-o", partial, str(SOURCE)], capture_output=True, text=True,
                                timeout=COMPILE_TIMEOUT_S)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{compiler} failed ({last})")
        os.replace(partial, library)
    finally:
        Path(partial).unlink(missing_ok=True)
    return library


def register(march: str = "native") -> str:
    """Builds the kernel for `-march={march}` (cached) and registers it with XLA; returns its target name.
    Raises RuntimeError, OSError or SubprocessError. Inference uses "native" (available()); tests also build
    the narrower vector widths (e.g. "haswell": AVX2, "x86-64": SSE) to check them on one machine."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX') or 'c++'} not found)")
    library = ctypes.cdll.LoadLibrary(str(_build(compiler, march)))
    target = TARGET if march == "native" else f"{TARGET}_{march.replace('-', '_')}"
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(library.DnavecCpuAttention), platform="cpu")
    return target


@functools.cache
def available() -> bool:
    """Whether the kernel is built and registered for this process (builds it on the first call); warns once,
    with the reason, where it cannot be."""
    if os.environ.get(DISABLE_ENV, "1") == "0" or jax.default_backend() != "cpu":
        return False
    try:
        register()
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"fused CPU attention unavailable, using XLA's (slower on a CPU): {error}", stacklevel=2)
        return False
    return True


def _xla_attention(query, key, value, mask):
    """XLA's path, whose numbers the kernel keeps: the fallback and the gradient."""
    return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation="xla")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(target, query, key, value, keep):
    head_dim = query.shape[-1]
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(query.shape, jnp.float32))
    return call(query, key, value, keep, scale=np.float32(1.0 / head_dim ** 0.5))


def _fused_forward(target, query, key, value, keep):
    return _fused(target, query, key, value, keep), (query, key, value, keep)


def _fused_backward(target, residuals, cotangent):
    del target  # the gradient is XLA's, whatever the build
    query, key, value, keep = residuals
    mask = keep[:, None, None, :]
    _, pullback = jax.vjp(lambda q, k, v: _xla_attention(q, k, v, mask), query, key, value)
    return (*pullback(cotangent), None)


_fused.defvjp(_fused_forward, _fused_backward)


def attention(query, key, value, mask, target: str = TARGET):
    """softmax(Q K^T / sqrt(head_dim), masked) V for float32 (batch, L, heads, head_dim) inputs; mask
    (batch, 1, 1, keys) bool (True: a real key) or None. The numbers of jax.nn.dot_product_attention's XLA
    path (scores scaled after the product, masked keys at 0.7 x the float32 minimum). Where the kernel is
    not available(), that XLA path itself. `target`: another build's (register())."""
    if target == TARGET and not available():
        return _xla_attention(query, key, value, mask)
    batch, keys = query.shape[0], key.shape[1]
    keep = jnp.ones((batch, keys), bool) if mask is None else jnp.broadcast_to(mask, (batch, 1, 1, keys))
    keep = keep.reshape(batch, keys)
    as_f32 = [jnp.asarray(x, jnp.float32) for x in (query, key, value)]
    return _fused(target, *as_f32, keep)
