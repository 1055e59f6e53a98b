"""Which tokenization gives the better sequence embeddings: one random-k draw, several averaged, or a fixed k.

  python scripts/compare_embed_tokenizations.py --model runs/demo --pretraining_run runs/demo \
      --output runs/demo/tokenizations.json

On planted-motif tasks (motif.planted_motif_task over the held-out blocks of --pretraining_run, one per --task_seeds):
each tokenization's `mean` (and `cls`) vectors from embed.embed_sequences, standardised, then
baseline.logistic_regression (C chosen on dev by MCC); test accuracy, AUROC and MCC, mean and
spread over the tasks. Settings: random k with one draw (for each --draw_seeds: how much a single
draw varies), random k averaged over each of --num_draws, and every fixed k of the model's range.
The result is in docs/outputs.md ("Which tokenization to embed with").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax.errors import run_cli


def settings(k_min: int, k_max: int, draw_seeds: list[int], num_draws: list[int]) -> list[tuple[str, dict]]:
    rows = [(f"random k, 1 draw (seed {seed})", {"k": "random", "seed": seed}) for seed in draw_seeds]
    rows += [(f"random k, {n} draws averaged", {"k": "random", "num_tokenizations": n}) for n in num_draws]
    rows += [(f"fixed k={k}", {"k": k}) for k in range(k_min, k_max + 1)]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="training run directory or export")
    parser.add_argument("--pretraining_run", default=None,
                        help="the run whose held-out blocks the tasks come from: its directory or config.json "
                             "(required)")
    parser.add_argument("--output", required=True, help="JSON file for the per-task numbers")
    parser.add_argument("--task_seeds", default="0,1,2", help="one planted-motif task per seed")
    parser.add_argument("--num_windows", type=int, default=300)
    parser.add_argument("--length", type=int, default=150)
    parser.add_argument("--draw_seeds", default="0,1,2", help="--seed of the single-draw rows")
    parser.add_argument("--num_draws", default="4,16", help="draws averaged in the multi-draw rows")
    args = parser.parse_args(argv)

    def run() -> int:
        from sklearn.preprocessing import StandardScaler

        from dnavec_jax.tools.classify import baseline, held_out, motif, tables
        from dnavec_jax.tools.embed import embed_sequences
        from dnavec_jax.tools.loaded_model import load_model

        prep = held_out.pretraining_prep(args.pretraining_run)
        fasta = held_out.source_fasta(prep)
        loaded = load_model(args.model)
        rows = settings(loaded.tokenizer.k_min, loaded.tokenizer.k_max,
                        [int(s) for s in args.draw_seeds.split(",")], [int(n) for n in args.num_draws.split(",")])
        results: dict[str, dict[str, list[dict]]] = {name: {"mean": [], "cls": []} for name, _ in rows}
        for task_seed in [int(s) for s in args.task_seeds.split(",")]:
            task = motif.planted_motif_task(fasta, pretraining=prep, num_windows=args.num_windows,
                                            length=args.length, seed=task_seed)
            labels = {split: np.array([label for _, label in task[split]]) for split in tables.SPLITS}
            for name, options in rows:
                vectors = {split: embed_sequences(loaded, [seq for seq, _ in task[split]], **options)
                           for split in tables.SPLITS}
                for pool in ("mean", "cls"):
                    scaler = StandardScaler().fit(vectors["train"][pool])
                    features = {split: scaler.transform(vectors[split][pool]) for split in tables.SPLITS}
                    test = baseline.logistic_regression(features, labels, task_seed)["test"]
                    results[name][pool].append({"task_seed": task_seed, **test})
                    print(f"task {task_seed} {name:32s} {pool:4s} test acc {test['accuracy']:.3f} "
                          f"auroc {test['auroc']:.3f} mcc {test['mcc']:.3f}", flush=True)
        print(f"\n{loaded.source}, {args.num_windows * 2} sequences of {args.length} bases per task, "
              f"tasks {args.task_seeds}: test metrics, mean ± sd over tasks\n")
        print("| tokenization | pool | accuracy | AUROC | MCC |\n|---|---|---|---|---|")
        for name, _ in rows:
            for pool in ("mean", "cls"):
                cells = [f"{np.mean([r[m] for r in results[name][pool]]):.3f} ± "
                         f"{np.std([r[m] for r in results[name][pool]]):.3f}" for m in ("accuracy", "auroc", "mcc")]
                print(f"| {name} | {pool} | " + " | ".join(cells) + " |")
        Path(args.output).write_text(json.dumps({"model": loaded.source, "settings": vars(args),
                                                 "results": results}, indent=2) + "\n")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
