"""Training throughput on synthetic data of the configured shapes (no dataset, no checkpoint). Not a test.

  python benchmarks/throughput.py --config configs/base.py --steps 60
  python benchmarks/throughput.py --config configs/base.py --batch_sizes 256,128,64 --deadline_s 200 \
      --config.model.attention_implementation=cudnn --config.train.prng_impl=rbg

Runs the real training loop (loop.setup and loop.run_loop) on the synthetic source in a
temporary workdir, with checkpointing off (checkpoint_every_steps=0) and no eval, once per
global batch size of --batch_sizes, in one process, in the order given. Prints one JSON line per
batch size as soon as it is measured: steady-state step time, tokens/s, model TFLOP/s per device,
MFU (where the device's peak is known), the attention that ran, and what the compiled step holds
(common.compiled_step_summary: XLA's memory analysis, fusions, custom calls, float32
vocabulary-sized buffers), read from the very step it timed. The first logging interval
(compilation, warm-up) is left out.

--deadline_s: a batch size starts only while the time left (from the start of the process) exceeds
what the previous one took; the others get a {"skipped": ...} line. SIGTERM (the suite's timeout)
ends the batch being measured and the process: no later batch starts.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags
from common import MATMUL_PRECISIONS, compiled_step_summary, set_jax_matmul_precision, versions
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_integer("steps", 60, "Steps to time (after one warm-up interval).")
flags.DEFINE_integer("interval", 10, "Steps per measurement interval.")
flags.DEFINE_list("batch_sizes", [], "Global batch sizes to measure, in this order (default: the config's).")
flags.DEFINE_float("deadline_s", 0.0, "Start a batch size only while more time is left than the previous one "
                                      "took (0: no deadline).")
flags.DEFINE_enum("matmul_precision", "tf32", MATMUL_PRECISIONS, "float32 matmuls: TF32 allowed or full float32.")
flags.mark_flags_as_required(["config"])


def measure(config, steps: int, interval: int) -> dict:
    import jax

    from dnavec_jax.model import flops_per_token
    from dnavec_jax.training import loop, settings
    from dnavec_jax.training.preemption import Preemption

    with config.unlocked():
        config.data.source = "synthetic"
        config.data.synthetic_eval_examples = 0
        config.train.update(num_train_steps=steps + interval, warmup_steps=0, log_every_steps=interval,
                            eval_every_steps=0, checkpoint_every_steps=0, async_checkpointing=False)
    run_settings = settings.RunSettings.from_config(config)
    model = run_settings.model
    prep = run_settings.prep
    with tempfile.TemporaryDirectory() as workdir:
        run = loop.setup(run_settings, Path(workdir), tensorboard=False)
        held = compiled_step_summary(run.train_step, {model.vocab_size, model.padded_vocab_size},
                                     config.train.global_batch_size * prep.max_predictions * model.vocab_size)
        outcome = loop.run_loop(run, Preemption())
        rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["split"] == "train"][1:]
    if not timed:
        raise RuntimeError(f"no timed interval: stopped at step {outcome['step']}")
    step_time = sum(r["step_time_s"] for r in timed) / len(timed)
    tokens = config.train.global_batch_size * prep.seq_length / step_time
    flops = flops_per_token(model, prep.seq_length, prep.max_predictions)
    result = dict(side="ours (JAX/Flax)", device=jax.devices()[0].device_kind, devices=jax.device_count(),
                  fsdp=config.train.fsdp, dtype=model.dtype, attention=outcome["attention"],
                  prng_impl=config.train.prng_impl, global_batch_size=config.train.global_batch_size,
                  seq_length=prep.seq_length, max_predictions=prep.max_predictions, timed_steps=len(timed) * interval,
                  step_time_s=step_time, tokens_per_s=tokens,
                  model_tflops_per_device=tokens * flops / jax.device_count() / 1e12, final_loss=timed[-1]["loss"])
    if "mfu" in timed[-1]:
        result["mfu"] = sum(r["mfu"] for r in timed) / len(timed)
    if outcome["preempted"]:
        result["cut"] = "SIGTERM (time limit) during the timed steps"
    return {**result, "compiled_step": held}, outcome["preempted"]


def main(argv) -> None:
    del argv
    started = time.monotonic()
    set_jax_matmul_precision(FLAGS.matmul_precision)
    batch_sizes = [int(b) for b in FLAGS.batch_sizes] or [int(FLAGS.config.train.global_batch_size)]
    common = {"matmul_precision": FLAGS.matmul_precision,
              "versions": versions("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")}
    last_took = 0.0
    for batch_size in batch_sizes:
        left = FLAGS.deadline_s - (time.monotonic() - started)
        if FLAGS.deadline_s and last_took and left < last_took:
            print(json.dumps({"global_batch_size": batch_size, "skipped": f"{left:.0f} s left of --deadline_s, the "
                                                                          f"previous batch took {last_took:.0f} s"}),
                  flush=True)
            continue
        config = copy.deepcopy(FLAGS.config)
        with config.unlocked():
            config.train.global_batch_size = batch_size
        began = time.monotonic()
        cut = False
        try:
            result, cut = measure(config, FLAGS.steps, FLAGS.interval)
        except Exception as error:  # an out-of-memory batch is a result too: report it, go on with the next
            from dnavec_jax.training.loop import one_line

            result = {"global_batch_size": batch_size, "failed": one_line(error)}
        last_took = time.monotonic() - began
        print(json.dumps({**result, "wall_s": round(last_took, 1), **common}), flush=True)
        if cut:
            sys.exit(0)  # the suite's timeout: no later batch starts


if __name__ == "__main__":
    app.run(main)
