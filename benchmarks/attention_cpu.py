"""Where XLA:CPU's attention loses to torch's: ways of writing it, timed against torch's SDPA. Not a test.

    python benchmarks/attention_cpu.py                 # 32 windows x 512 positions, 8 heads of 64

The fused kernel inference runs on a CPU (kernels/cpu_attention.py, through jax.ffi; also its AVX2 and
SSE builds, where this CPU runs them) and XLA's fallback path (model.per_head_attention, one (example,
head) at a time), beside the latter's parts: its two matrix
products alone and a bare softmax over scores of the same shape (what the time splits into), a version
that divides by the softmax's sum after the product with V (the 512 x 64 output, not the 512 x 512
scores), one that takes all heads of an example at once, and one over blocks of 128 queries; each
compiled with the inference options (loaded_model.compiler_options()) and with XLA's defaults, plus the
inference options with fast math. torch's scaled_dot_product_attention on every core (a flash-style CPU
kernel) is the reference. Best of --repeats; CPU time / wall time shows whether both cores are busy.
Prints one JSON line: (seconds, cpu/wall, max |difference| from per_head_attention) per variant.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import time

from common import torch_masked_attention, versions


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from dnavec_jax import model
    from dnavec_jax.kernels import cpu_attention
    from dnavec_jax.tools.loaded_model import compiler_options

    torch.set_num_threads(os.cpu_count() or 1)
    batch, length, heads, head_dim = 32, 512, 8, 64
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, length, heads, head_dim), dtype=np.float32)
    keep = np.ones((batch, length), bool)
    keep[:, 500:] = False  # windows of 498 k-mers, as in benchmarks/embed_throughput.py
    mask = keep[:, None, None, :]
    tx, tkeep = torch.from_numpy(x), torch.from_numpy(keep)
    x, mask = jax.device_put(x), jax.device_put(mask)  # on the device once: no copy inside the timings
    scale = 1.0 / head_dim ** 0.5
    masked = 0.7 * float(np.finfo(np.float32).min)

    def pairs(*arrays):  # (batch, L, heads, d) -> (batch x heads, L, d)
        return [jnp.transpose(a, (0, 2, 1, 3)).reshape(batch * heads, length, head_dim) for a in arrays]

    def pair_masks(m, repeat=1):
        return jnp.repeat(jnp.broadcast_to(m, (batch, heads, 1, length)).reshape(batch * heads, 1, length), repeat, 0)

    def unpairs(out):
        return jnp.transpose(out.reshape(batch, heads, length, head_dim), (0, 2, 1, 3))

    def products_only(q, k, v, m):
        return unpairs(jax.lax.map(lambda p: (p[0] @ p[1].T) @ p[2], tuple(pairs(q, k, v))))

    def softmax_only(q, k, v, m):  # scores of the attention's shape, without computing them
        scores = jnp.broadcast_to(q[:, :, :, :1], (batch, length, heads, length))
        return jax.lax.map(lambda s: jnp.sum(jax.nn.softmax(s, axis=-1), axis=0), scores.reshape(-1, heads, length))

    def divide_after(q, k, v, m):
        def one(p):
            logits = jnp.where(p[3], (p[0] @ p[1].T) * scale, masked)
            weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
            return (weights @ p[2]) / jnp.sum(weights, axis=-1, keepdims=True)
        return unpairs(jax.lax.map(one, (*pairs(q, k, v), pair_masks(m))))

    def per_example(q, k, v, m):
        def one(p):
            logits = jnp.where(p[3], jnp.einsum("qhd,khd->hqk", p[0], p[1]) * scale, masked)
            return jnp.einsum("hqk,khd->qhd", jax.nn.softmax(logits, axis=-1), p[2])
        return jax.lax.map(one, (q, k, v, m))

    def query_blocks(q, k, v, m, block=128):
        blocks = length // block
        qs = jnp.transpose(q, (0, 2, 1, 3)).reshape(batch * heads * blocks, block, head_dim)
        ks, vs = (jnp.repeat(a, blocks, 0) for a in pairs(k, v))

        def one(p):
            logits = jnp.where(p[3], (p[0] @ p[1].T) * scale, masked)
            return jax.nn.softmax(logits, axis=-1) @ p[2]
        return unpairs(jax.lax.map(one, (qs, ks, vs, pair_masks(m, blocks))))

    inference = compiler_options()
    assert cpu_attention.available(), "the fused kernel did not build (see the warning)"
    narrower = {}  # the kernel built for narrower vectors than this CPU's, as other users' CPUs build it
    for name, march in (("AVX2", "haswell"), ("SSE", "x86-64")):
        try:
            target = cpu_attention.register(march)
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:  # another architecture, say
            print(f"no {name} build: {error}", flush=True)
            continue
        narrower[f"fused kernel, {name} build (-march={march}) / inference"] = (
            functools.partial(cpu_attention.attention, target=target), inference)
    variants = {
        "fused kernel (kernels/cpu_attention) / inference": (cpu_attention.attention, inference),
        **narrower,
        "per_head_attention / inference": (model.per_head_attention, inference),
        "per_head_attention / XLA defaults": (model.per_head_attention, {}),
        "per_head_attention / inference + fast math": (model.per_head_attention,
                                                       {**inference, "xla_cpu_enable_fast_math": True}),
        "its two products only / inference": (products_only, inference),
        "a bare softmax of its scores / inference": (softmax_only, inference),
        "divide after the product with V / inference": (divide_after, inference),
        "all heads of an example at once / inference": (per_example, inference),
        "blocks of 128 queries / inference": (query_blocks, inference),
    }
    reference = np.asarray(jax.jit(model.per_head_attention)(x, x, x, mask))
    runs = {}
    for name, (function, options) in variants.items():
        compiled = jax.jit(function, compiler_options=options)
        out = np.asarray(compiled(x, x, x, mask))
        parts = function in (products_only, softmax_only)  # not attention: nothing to compare
        difference = None if parts else float(np.max(np.abs(out - reference)))
        runs[name] = (lambda c=compiled: jax.block_until_ready(c(x, x, x, mask)), difference)

    def torch_sdpa():
        with torch.no_grad():
            torch_masked_attention(tx, tx, tx, tkeep)
    runs["torch scaled_dot_product_attention"] = (torch_sdpa, None)

    results = {}
    for name, (run, difference) in runs.items():
        run()  # warm-up
        best, ratio = float("inf"), 0.0
        for _ in range(args.repeats):
            started, cpu = time.perf_counter(), cpu_seconds()
            run()
            wall = time.perf_counter() - started
            if wall < best:
                best, ratio = wall, (cpu_seconds() - cpu) / wall
        results[name] = [round(best, 4), round(ratio, 2), difference]
    print(json.dumps({"seconds_cpu_over_wall_difference": results, "shape": [batch, length, heads, head_dim],
                      "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
                      "versions": versions("jax", "jaxlib", "torch")}))


if __name__ == "__main__":
    main()
