"""Training throughput on synthetic data of the configured shapes (no dataset, no checkpoint). Not a test.

  python benchmarks/throughput.py --config configs/base.py --steps 60
  python benchmarks/throughput.py --config configs/base.py --batch_sizes 64,128,256 \
      --config.model.attention_implementation=cudnn --config.train.prng_impl=rbg

Runs the real training loop (loop.train_and_evaluate) on the synthetic source in
a temporary workdir, with checkpointing off (checkpoint_every_steps=0) and no
eval, once per global batch size of --batch_sizes, in one process. Prints one
JSON line per batch size as soon as it is measured: steady-state step time,
tokens/s, model TFLOP/s per device and MFU (where the device's peak is known),
the XLA memory analysis of the step is in the log. The first logging interval
(compilation, warm-up) is left out.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

from absl import app, flags
from common import MATMUL_PRECISIONS, set_jax_matmul_precision, versions
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_integer("steps", 60, "Steps to time (after one warm-up interval).")
flags.DEFINE_integer("interval", 10, "Steps per measurement interval.")
flags.DEFINE_list("batch_sizes", [], "Global batch sizes to measure, in this order (default: the config's).")
flags.DEFINE_enum("matmul_precision", "tf32", MATMUL_PRECISIONS, "float32 matmuls: TF32 allowed or full float32.")
flags.mark_flags_as_required(["config"])


def measure(config, steps: int, interval: int) -> dict:
    import jax

    from dnavec_jax.model import attention_implementation, flops_per_token
    from dnavec_jax.training import loop, settings

    with config.unlocked():
        config.data.source = "synthetic"
        config.data.synthetic_eval_examples = 0
        config.train.update(num_train_steps=steps + interval, warmup_steps=0, log_every_steps=interval,
                            eval_every_steps=0, checkpoint_every_steps=0, async_checkpointing=False)
    with tempfile.TemporaryDirectory() as workdir:
        loop.train_and_evaluate(settings.RunSettings.from_config(config), workdir)
        rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["split"] == "train"][1:]
    step_time = sum(r["step_time_s"] for r in timed) / len(timed)
    prep = config.data.prep
    tokens = config.train.global_batch_size * prep.seq_length / step_time
    model = settings.model_config_from(config)
    flops = flops_per_token(model, prep.seq_length, prep.max_predictions)
    result = dict(side="ours (JAX/Flax)", device=jax.devices()[0].device_kind, devices=jax.device_count(),
                  fsdp=config.train.fsdp, dtype=model.dtype, attention=attention_implementation(model),
                  prng_impl=config.train.prng_impl, global_batch_size=config.train.global_batch_size,
                  seq_length=prep.seq_length, max_predictions=prep.max_predictions, timed_steps=len(timed) * interval,
                  step_time_s=step_time, tokens_per_s=tokens,
                  model_tflops_per_device=tokens * flops / jax.device_count() / 1e12)
    if "mfu" in timed[-1]:
        result["mfu"] = sum(r["mfu"] for r in timed) / len(timed)
    return result


def main(argv) -> None:
    del argv
    set_jax_matmul_precision(FLAGS.matmul_precision)
    batch_sizes = [int(b) for b in FLAGS.batch_sizes] or [int(FLAGS.config.train.global_batch_size)]
    common = {"matmul_precision": FLAGS.matmul_precision,
              "versions": versions("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")}
    for batch_size in batch_sizes:
        config = copy.deepcopy(FLAGS.config)
        with config.unlocked():
            config.train.global_batch_size = batch_size
        try:
            result = measure(config, FLAGS.steps, FLAGS.interval)
        except Exception as error:  # an out-of-memory batch is a result too: report it, go on with the next
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            result = {"global_batch_size": batch_size, "failed": f"{type(error).__name__}: {first_line}"}
        print(json.dumps({**result, **common}), flush=True)


if __name__ == "__main__":
    app.run(main)
