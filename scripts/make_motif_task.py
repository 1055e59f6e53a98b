"""Writes a planted-motif classification task (train.csv, dev.csv, test.csv) for `dnavec classify`.

  python scripts/make_motif_task.py --pretraining_run runs/demo --output_dir data_cache/motif_task
  dnavec classify --model runs/demo --train data_cache/motif_task/train.csv \
      --dev data_cache/motif_task/dev.csv --test data_cache/motif_task/test.csv --output_dir runs/demo/classify

Windows of real DNA that the pretraining run (--pretraining_run: its directory or config.json, required)
held out: the validation blocks of its FASTA under its data-prep settings. Label 1 rows carry the CTCF
core consensus CCGCGNGGNGGCAG written over the bases at a random position, label 0 rows the same letters
shuffled at the same place, so both classes are edited (dnavec_jax.tools.classify.motif.planted_motif_task).
Deterministic in --seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    from dnavec_jax.tools.classify import held_out, motif

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--pretraining_run", default=None,
                        help="the pretraining run whose held-out blocks the windows come from: its directory or "
                             "config.json (required)")
    parser.add_argument("--fasta", default=None,
                        help="FASTA(.gz) to cut windows from (default: the run's); its records must be the run's "
                             "(same names and lengths), since the held-out blocks are chosen from those")
    parser.add_argument("--num_windows", type=int, default=300, help="windows; each gives a positive and a negative")
    parser.add_argument("--length", type=int, default=150, help="bases per sequence")
    parser.add_argument("--motif", default=motif.CTCF_CORE, help="A/C/G/T/N motif (N: a random base)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def run() -> int:
        prep = held_out.pretraining_prep(args.pretraining_run)
        source = held_out.source_fasta(prep, args.fasta)
        task = motif.planted_motif_task(source, pretraining=prep, num_windows=args.num_windows, length=args.length,
                                        motif=args.motif, seed=args.seed)
        paths = motif.write_task(task, args.output_dir)
        print(f"windows from the validation blocks of {source} (validation_fraction {prep.validation_fraction}, "
              f"validation_block_size {prep.validation_block_size:,}: {args.pretraining_run})")
        print(", ".join(f"{split}: {len(rows)} rows -> {paths[split]}" for split, rows in task.items()))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
