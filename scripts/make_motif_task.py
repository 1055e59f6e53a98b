"""Writes a planted-motif classification task (train.csv, dev.csv, test.csv) for `dnavec classify`.

  python scripts/make_motif_task.py --output_dir data_cache/motif_task
  dnavec classify --model runs/demo --train data_cache/motif_task/train.csv \
      --dev data_cache/motif_task/dev.csv --test data_cache/motif_task/test.csv --output_dir runs/demo/classify

Windows of real DNA that pretraining held out: the validation blocks of the FASTA (default: the
embedded 1 Mbp of chr22) under the pretraining run's data-prep settings (--pretraining_run, else
configs/demo.py's). Label 1 rows carry the CTCF core consensus CCGCGNGGNGGCAG written over the bases
at a random position, label 0 rows the same letters shuffled at the same place, so both classes are
edited (dnavec_jax.tools.classify.motif.planted_motif_task). Deterministic in --seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax.errors import DNAVecError, run_cli


def pretraining_held_out(run_dir: str) -> tuple[tuple[float, int], tuple[str, ...]]:
    """(validation_fraction, validation_block_size) and the FASTA list of a training run's data prep."""
    path = Path(run_dir) / "config.json"
    try:
        prep = json.loads(path.read_text())["data"]["prep"]
        return (float(prep["validation_fraction"]), int(prep["validation_block_size"])), tuple(prep["fasta"])
    except FileNotFoundError:
        raise DNAVecError(f"--pretraining_run {run_dir}: no config.json (not a training run directory)") from None
    except (KeyError, TypeError, ValueError) as error:
        raise DNAVecError(f"{path}: no data.prep validation settings ({error})") from None


def main(argv: list[str] | None = None) -> int:
    from dnavec_jax.data.fasta import DEMO_FASTA
    from dnavec_jax.tools.classify import motif

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--fasta", default=None,
                        help="FASTA(.gz) to cut windows from (default: the pretraining run's, else the embedded chr22)")
    parser.add_argument("--pretraining_run", default=None,
                        help="training run directory whose config.json gives the held-out blocks "
                             "(default: configs/demo.py's validation_fraction 0.05, validation_block_size 20,000)")
    parser.add_argument("--num_windows", type=int, default=300, help="windows; each gives a positive and a negative")
    parser.add_argument("--length", type=int, default=150, help="bases per sequence")
    parser.add_argument("--motif", default=motif.CTCF_CORE, help="A/C/G/T/N motif (N: a random base)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def run() -> int:
        held_out, fasta = motif.DEMO_HELD_OUT, ()
        if args.pretraining_run:
            held_out, fasta = pretraining_held_out(args.pretraining_run)
        if args.fasta is None and len(fasta) > 1:
            raise DNAVecError(f"--pretraining_run {args.pretraining_run}: pretrained on {len(fasta)} FASTA files; "
                              "pass one of them with --fasta")
        source = args.fasta or (fasta[0] if fasta else str(DEMO_FASTA))
        task = motif.planted_motif_task(source, num_windows=args.num_windows, length=args.length,
                                           motif=args.motif, seed=args.seed, held_out=held_out)
        paths = motif.write_task(task, args.output_dir)
        print(f"windows from the validation blocks of {source} (validation_fraction {held_out[0]}, "
              f"validation_block_size {held_out[1]:,})")
        print(", ".join(f"{split}: {len(rows)} rows -> {paths[split]}" for split, rows in task.items()))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
