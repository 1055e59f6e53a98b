"""Writes a planted-motif classification task (train.csv, dev.csv, test.csv) for `dnavec classify`.

  python scripts/make_motif_task.py --output_dir data_cache/motif_task
  dnavec classify --model runs/demo --train data_cache/motif_task/train.csv \
      --dev data_cache/motif_task/dev.csv --test data_cache/motif_task/test.csv --output_dir runs/demo/classify

Windows of real DNA (default: the embedded 1 Mbp of chr22); label 1 rows carry the CTCF core
consensus CCGCGNGGNGGCAG written over the bases at a random position, label 0 rows are the same
windows unchanged (motif.planted_motif_task). Deterministic in --seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax.errors import run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from dnavec_jax.data.fasta import DEMO_FASTA
    from dnavec_jax.tools.classify import motif

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--fasta", default=str(DEMO_FASTA), help="FASTA(.gz) to cut windows from")
    parser.add_argument("--num_windows", type=int, default=300, help="windows; each gives a positive and a negative")
    parser.add_argument("--length", type=int, default=150, help="bases per sequence")
    parser.add_argument("--motif", default=motif.CTCF_CORE, help="A/C/G/T/N motif (N: a random base)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def run() -> int:
        task = motif.planted_motif_task(args.fasta, num_windows=args.num_windows, length=args.length,
                                           motif=args.motif, seed=args.seed)
        paths = motif.write_task(task, args.output_dir)
        print(", ".join(f"{split}: {len(rows)} rows -> {paths[split]}" for split, rows in task.items()))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
