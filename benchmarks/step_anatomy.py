"""What the compiled train step does, read off XLA (no timing): memory, bytes, and the costly op kinds. Not a test.

    python benchmarks/step_anatomy.py --config configs/base.py --batch 64 --dtype bfloat16

Lowers and compiles the trainer's real step (steps.make_train_step, synthetic-batch
shapes, one device of the current backend) and prints one JSON line:
  temp_gib / argument_gib   XLA's memory analysis;
  gflops / gbytes_accessed  XLA's cost analysis (bytes read + written by all ops);
  scatters                  every scatter in the optimised HLO, with its buffer shape and dtype;
  vocab_f32_buffers         float32 arrays of at least (predictions x vocabulary) elements;
  rng_ops                   random-bit generators (threefry is a loop of integer ops; rbg one op).
It reads the post-optimisation HLO text and counts only the instructions outside fused
computations (the arrays that are written to memory), so the figures are those of the program
that runs on this backend: GPU and CPU fuse differently, and XLA:CPU upcasts bf16 dots to
float32, so compare like with like.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

from common import REPO, load_config, versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "base.py"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--prng_impl", default="threefry")
    args = parser.parse_args()

    import jax

    from dnavec_jax.model import BertForMaskedLM
    from dnavec_jax.training import optim, settings, steps

    config = load_config(args.config)
    config.model.update(dtype=args.dtype, attention_implementation=args.attention)
    config.train.prng_impl = args.prng_impl
    model_config = settings.model_config_from(config)
    model = BertForMaskedLM(model_config)
    tx, schedule = optim.make_optimizer(settings.RunSettings.from_config(config).train.optimizer)
    init_fn = steps.make_init_fn(model_config, tx, 0, args.prng_impl)
    prep = config.data.prep
    step = steps.make_train_step(model, tx, schedule, prng_impl=args.prng_impl, accuracy_every=100, padded=False)
    batch = steps.abstract_batch((1, args.batch), prep.seq_length, prep.max_predictions, None)
    compiled = jax.jit(step, donate_argnums=0).lower(jax.eval_shape(init_fn), batch).compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    hlo = compiled.as_text()

    vocab = model_config.vocab_size
    vocab_dims = {str(vocab), str(model_config.padded_vocab_size)}
    shape_re = r"(\w+)\[([\d,]*)\]"
    scatters = Counter()
    big_f32 = Counter()
    predictions = args.batch * prep.max_predictions
    fused = False  # instructions inside fused computations never reach memory: skipped
    for line in hlo.splitlines():
        if line and not line[0].isspace():  # a computation's header ("%name (...) -> ... {", "ENTRY ...")
            name = line.split("(", 1)[0]
            fused = any(word in name for word in ("fused", "fusion", "region"))  # region: reducer bodies
            continue
        match = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = " + shape_re + r"\S* (\w[\w\-]*)\(", line)
        if fused or not match:
            continue
        dtype, dims, op = match.group(1), match.group(2), match.group(3)
        if op in ("parameter", "bitcast", "get-tuple-element", "tuple", "constant"):
            continue
        if op == "scatter" or (op == "fusion" and "scatter" in line.split("calls=", 1)[-1][:40]):
            scatters[f"{dtype}[{dims}]"] += 1
        if dtype == "f32" and dims and set(dims.split(",")) & vocab_dims:
            size = 1
            for d in dims.split(","):
                size *= int(d)
            if size >= predictions * vocab:
                big_f32[f"{op} f32[{dims}]"] += 1
    rng = Counter(op for op in re.findall(r"= \S+ (rng-bit-generator|rng)\(", hlo))
    threefry_loops = len(re.findall(r"threefry", hlo))
    print(json.dumps({
        "device": jax.devices()[0].device_kind, "config": args.config, "batch": args.batch, "dtype": args.dtype,
        "prng_impl": args.prng_impl, "temp_gib": memory.temp_size_in_bytes / 2**30,
        "argument_gib": memory.argument_size_in_bytes / 2**30, "gflops": cost.get("flops", 0) / 1e9,
        "gbytes_accessed": cost.get("bytes accessed", 0) / 1e9, "scatters": dict(scatters),
"vocab_f32_buffers": dict(big_f32),
        "rng_ops": dict(rng), "threefry_mentions": threefry_loops,
        "versions": versions("jax", "jaxlib", "flax"),
    }))


if __name__ == "__main__":
    main()
