"""A config's recipe trained for a fixed time on real DNA (the embedded chr22 megabase), no TensorFlow. Not a test.

    python benchmarks/base_dna.py --config configs/base.py --batch 128 --seconds 120 --tokens_per_s 400000
    python benchmarks/base_dna.py --config configs/tiny.py --steps 50          # a CPU smoke run

The config's model, masking and optimizer (configs/base.py: 12 x 512, dropout 0.1, BERT's inits,
token masking of k 3..8 at 15% with 80/10/10, AdamW 4e-4 with linear warmup and decay) on the
in-memory source (data.source='fasta': data prep's own tokenizer and masker, docs/data.md), at
global batch --batch. What is scaled: the number of steps (--steps, or the steps that fit in
--seconds at --tokens_per_s, a throughput measured at this batch) and with it the warmup, the
same fraction of the steps as the config's (12.5% for base) with the linear decay after it.
Data settings that are not the recipe: the validation blocks (5% of the megabase in 20 kb
blocks, as the demo's: held-out DNA from three places rather than base's one 100 kb block) and
--dupe_factor differently tokenized and masked copies of the training split.

Real examples end at contig ends and block cuts, so batches carry padding: on an NVIDIA GPU the
cuDNN attention gets per-example lengths, and the last eval batch's filler rows length 0. Prints
each train and eval row as the loop writes it (eval rows carry the accuracy ceiling, the loss
floor, the copy probe and the figures given k: docs/training.md), then one summary line.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import threading
import time
from pathlib import Path

from common import MATMUL_PRECISIONS, REPO, load_config, set_jax_matmul_precision, versions


def tail_rows(path: Path, stop: threading.Event) -> None:
    """Prints each row of metrics.jsonl as it is written (until stop is set and the file is read)."""
    printed = 0
    while True:
        finished = stop.is_set()
        if path.exists():
            lines = path.read_text().splitlines()
            complete = lines if finished else lines[:-1]  # the last line may be half written
            for line in complete[printed:]:
                row = json.loads(line)
                print(json.dumps({"row": row.pop("split"), **row}), flush=True)
            printed = max(printed, len(complete))
        if finished:
            return
        time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "base.py"))
    parser.add_argument("--batch", type=int, default=0, help="global batch (default: the config's)")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (default: from --seconds)")
    parser.add_argument("--seconds", type=float, default=120.0, help="training time to fill, with --tokens_per_s")
    parser.add_argument("--tokens_per_s", type=float, default=0.0, help="measured throughput at this batch")
    parser.add_argument("--min_steps", type=int, default=50)
    parser.add_argument("--dupe_factor", type=int, default=8)
    parser.add_argument("--evals", type=int, default=2, help="evaluations, evenly spaced, the last at the end")
    parser.add_argument("--matmul_precision", choices=MATMUL_PRECISIONS, default="tf32")
    args = parser.parse_args()

    set_jax_matmul_precision(args.matmul_precision)
    from dnavec_jax.training import loop
    from dnavec_jax.training.settings import RunSettings

    config = load_config(args.config)
    batch = args.batch or config.train.global_batch_size
    tokens_per_step = batch * config.data.prep.seq_length
    steps = args.steps or max(args.min_steps, int(args.seconds * args.tokens_per_s / tokens_per_step))
    warmup_fraction = config.train.warmup_steps / config.train.num_train_steps
    config.data.update(source="fasta")
    config.data.prep.update(fasta=(), validation_fraction=0.05, validation_block_size=20_000,
                            dupe_factor=args.dupe_factor)
    config.train.update(global_batch_size=batch, num_train_steps=steps, warmup_steps=round(warmup_fraction * steps),
                        log_every_steps=max(1, steps // 10), eval_every_steps=max(1, math.ceil(steps / args.evals)),
                        checkpoint_every_steps=0, async_checkpointing=False)
    config.export.hf_dir = ""
    started = time.monotonic()
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as workdir:
        printer = threading.Thread(target=tail_rows, args=(Path(workdir) / "metrics.jsonl", stop), daemon=True)
        printer.start()
        try:
            result = loop.train_and_evaluate(RunSettings.from_config(config), workdir)
        finally:
            stop.set()
            printer.join()
    model = config.model
    print(json.dumps({
        "summary": "base recipe on the embedded chr22 megabase (in-memory source)", "config": args.config,
        "layers": model.num_layers, "hidden": model.hidden_size, "dropout": model.hidden_dropout_rate,
        "position_init": model.position_init, "word_init": model.word_init, "dtype": model.dtype,
        "attention": result["attention"], "k": [config.data.prep.k_min, config.data.prep.k_max],
        "mask_strategy": config.data.prep.mask_strategy, "global_batch_size": batch, "steps": result["step"],
        "warmup_steps": config.train.warmup_steps, "learning_rate": config.train.learning_rate,
        "schedule": config.train.schedule, "dupe_factor": args.dupe_factor, "preempted": result["preempted"],
        "final_eval": result["eval"], "wall_s": round(time.monotonic() - started, 1),
        "versions": versions("jax", "jaxlib", "flax", "optax"),
    }), flush=True)


if __name__ == "__main__":
    main()
