"""One encoder layer's parts on XLA:CPU against torch, in one process, alternating. Not a test.

    python benchmarks/encoder_parts.py                 # base width, 32 windows x 512 positions

Times each part of a base layer (32 x 512 positions, width 512, 8 heads) the way inference compiles it
(loaded_model.compiler_options()) and the way XLA:CPU compiles it by default, against torch (2 threads):
the dense products, the exact GELU in both forms (model.gelu), and attention batched (XLA's path) or one
(example, head) at a time (model.per_head_attention) against torch's SDPA. Best of --repeats, rounds
alternating. Prints one JSON line: seconds per part and side, the load average, the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from common import torch_masked_attention, versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch

    from dnavec_jax import model
    from dnavec_jax.tools.loaded_model import compiler_options

    batch, length, width, heads, inner = 32, 512, 512, 8, 2048
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * length, width), dtype=np.float32)
    w_in, w_out = (rng.standard_normal(shape, dtype=np.float32) * 0.02 for shape in ((width, inner), (inner, width)))
    w_sq = rng.standard_normal((width, width), dtype=np.float32) * 0.02
    u = rng.standard_normal((batch * length, inner), dtype=np.float32)
    q = rng.standard_normal((batch, length, heads, width // heads), dtype=np.float32)
    keep = np.ones((batch, length), bool)
    keep[:, 500:] = False  # windows of 498 k-mers, as in benchmarks/embed_throughput.py
    mask = keep[:, None, None, :]

    def batched(q, k, v, m):
        return jax.nn.dot_product_attention(q, k, v, mask=m, implementation="xla")

    parts = {  # name: (jax function, its inputs, torch function, its inputs)
        "dense 512x512": (lambda a, b: a @ b, (x, w_sq), lambda a, b: a @ b, (x, w_sq)),
        "dense 512x2048": (lambda a, b: a @ b, (x, w_in), lambda a, b: a @ b, (x, w_in)),
        "dense 2048x512": (lambda a, b: a @ b, (u, w_out), lambda a, b: a @ b, (u, w_out)),
        "gelu erfc form": (lambda a: model.gelu(a, "erfc"), (u,), torch.nn.functional.gelu, (u,)),
        "gelu erf form": (lambda a: model.gelu(a, "erf"), (u,), torch.nn.functional.gelu, (u,)),
        "attention batched": (batched, (q, q, q, mask), torch_masked_attention, (q, q, q, keep)),
        "attention per head": (model.per_head_attention, (q, q, q, mask), torch_masked_attention, (q, q, q, keep)),
    }
    compiled = {}
    for name, (function, inputs, _, _) in parts.items():
        placed = [jax.device_put(value) for value in inputs]
        for options_name, options in (("inference", compiler_options()), ("default", {})):
            compiled[(name, options_name)] = (jax.jit(function, compiler_options=options), placed)

    def run_jax(function, inputs):
        jax.block_until_ready(function(*inputs))

    def run_torch(function, inputs):
        with torch.no_grad():
            function(*inputs)

    runs = {f"{name} / xla {options}": (run_jax, *compiled[(name, options)]) for name, options in compiled}
    runs.update({f"{name} / torch": (run_torch, parts[name][2], [torch.from_numpy(np.asarray(v))
                                                                  for v in parts[name][3]]) for name in parts})
    for runner, function, inputs in runs.values():  # compile, warm up
        runner(function, inputs)
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, (runner, function, inputs) in runs.items():
            started = time.perf_counter()
            runner(function, inputs)
            best[name] = min(best[name], time.perf_counter() - started)
    print(json.dumps({"seconds": {name: round(value, 4) for name, value in best.items()},
                      "shape": [batch, length, width, heads], "torch_threads": torch.get_num_threads(),
                      "load_average": os.getloadavg(), "versions": versions("jax", "jaxlib", "torch")}))


if __name__ == "__main__":
    main()
