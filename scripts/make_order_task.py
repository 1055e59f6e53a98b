"""Writes a task that needs order (train.csv, dev.csv, test.csv) for `dnavec classify`: real DNA the
pretraining run held out (label 1) against 5th-order Markov chain samples fitted on its training DNA (label 0).

  python scripts/make_order_task.py --pretraining_run runs/demo --output_dir data_cache/order_task

The chains reproduce 6-mer statistics and each sample matches the base composition of one real window
(dnavec_jax.tools.classify.order), so a bag of k-mers up to 6 is near chance; what separates the classes
is longer structure. --pretraining_run (its directory or config.json) is required. Deterministic in --seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    from dnavec_jax.tools.classify import held_out, motif, order

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--pretraining_run", default=None,
                        help="the pretraining run whose held-out blocks give label 1 and whose training blocks the "
                             "chains are fitted on: its directory or config.json (required)")
    parser.add_argument("--fasta", default=None,
                        help="FASTA(.gz) (default: the run's); its records must be the run's (same names and lengths)")
    parser.add_argument("--num_windows", type=int, default=300, help="real windows; each gets one chain sample")
    parser.add_argument("--length", type=int, default=150, help="bases per sequence")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def run() -> int:
        prep = held_out.pretraining_prep(args.pretraining_run)
        source = held_out.source_fasta(prep, args.fasta)
        task = order.order_task(source, pretraining=prep, num_windows=args.num_windows, length=args.length,
                                seed=args.seed)
        paths = motif.write_task(task, args.output_dir)
        print(f"label 1: validation blocks of {source}; label 0: 5th-order chains fitted on its training blocks "
              f"({args.pretraining_run})")
        print(", ".join(f"{split}: {len(rows)} rows -> {paths[split]}" for split, rows in task.items()))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
