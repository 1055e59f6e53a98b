"""Training throughput on synthetic data of the configured shapes (no dataset needed).

  python benchmarks/throughput.py --config configs/base.py --steps 60
  python benchmarks/throughput.py --config configs/base.py --steps 60 --config.train.fsdp=true \
      --config.model.dtype=float32 --config.train.global_batch_size=64

Runs run_pretrain's training loop with config.data.source = "synthetic" in a
temporary workdir (no checkpoints but the final one, no eval) and prints the
steady-state step time, tokens/s, model TFLOP/s per device and MFU (where the
device's peak is known) as one JSON line. The first logging interval (warm-up)
is left out.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_integer("steps", 60, "Steps to time (after one warm-up interval).")
flags.DEFINE_integer("interval", 10, "Steps per measurement interval.")
flags.mark_flags_as_required(["config"])


def main(argv) -> None:
    del argv
    import jax

    from dnavec_jax import train
    from dnavec_jax.errors import run_cli
    from dnavec_jax.model import flops_per_token

    config = FLAGS.config
    with config.unlocked():
        config.data.source = "synthetic"
        config.data.synthetic_eval_examples = 0
        config.train.update(num_train_steps=FLAGS.steps + FLAGS.interval, warmup_steps=0,
                            log_every_steps=FLAGS.interval, eval_every_steps=0,
                            checkpoint_every_steps=10**9, async_checkpointing=False)

    result = {}

    def run():
        with tempfile.TemporaryDirectory() as workdir:
            train.train_and_evaluate(config, workdir)
            rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
        timed = [r for r in rows if r["split"] == "train"][1:]
        step_time = sum(r["step_time_s"] for r in timed) / len(timed)
        tokens = config.train.global_batch_size * config.data.prep.seq_length / step_time
        model = train.model_config_from(config)
        flops = flops_per_token(model, config.data.prep.seq_length, config.data.prep.max_predictions)
        result.update(device=jax.devices()[0].device_kind, devices=jax.device_count(), fsdp=config.train.fsdp,
                      dtype=model.dtype, global_batch_size=config.train.global_batch_size,
                      seq_length=config.data.prep.seq_length, step_time_s=step_time, tokens_per_s=tokens,
                      model_tflops_per_device=tokens * flops / jax.device_count() / 1e12)
        if "mfu" in timed[-1]:
            result["mfu"] = sum(r["mfu"] for r in timed) / len(timed)

    status = run_cli(run)
    if status:
        sys.exit(status)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
