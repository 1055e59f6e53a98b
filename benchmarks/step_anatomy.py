"""What the compiled train step does, read off XLA (no timing): memory, bytes, and the costly op kinds. Not a test.

    python benchmarks/step_anatomy.py --config configs/base.py --batch 64 --dtype bfloat16

Lowers and compiles the trainer's real step (steps.make_train_step, synthetic-batch
shapes, one device of the current backend) and prints one JSON line with
common.compiled_step_summary: XLA's memory and cost analysis, and the optimised HLO
outside fused kernels (the arrays that are written to memory): fusions by kind,
custom calls by target, scatters, float32 arrays of at least (predictions x vocabulary)
elements (tuple-shaped outputs included), random-bit generators. GPU and CPU fuse
differently, and XLA:CPU upcasts bf16 dots to float32, so compare like with like.
The GPU suite does not run this script: benchmarks/throughput.py writes the same
summary of the step it has just compiled and timed.
"""

from __future__ import annotations

import argparse
import json

from common import REPO, compiled_step_summary, load_config, versions


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
    summary = compiled_step_summary(compiled, {model_config.vocab_size, model_config.padded_vocab_size},
                                    args.batch * prep.max_predictions * model_config.vocab_size)
    print(json.dumps({"device": jax.devices()[0].device_kind, "config": args.config, "batch": args.batch,
                      "dtype": args.dtype, "prng_impl": args.prng_impl, **summary,
                      "versions": versions("jax", "jaxlib", "flax")}))


if __name__ == "__main__":
    main()
