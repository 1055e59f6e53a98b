"""Does a trained model show the overlap structure? The copy probe and the neighbour and attention figures
on the held-out validation blocks of its training data (dnavec_jax/tools/structure.py; docs/training.md).

  python scripts/structure_report.py --model runs/demo            # a run directory (latest checkpoint)
  python scripts/structure_report.py --model runs/demo/hf         # its export (the run's config.json is above it)
  python scripts/structure_report.py --model EXPORT --data_config runs/demo/config.json --json out.json

The held-out examples are rebuilt from the FASTA with the run's data-prep settings (no TFRecord is read).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dnavec_jax.errors import DNAVecError, read_json_object, run_cli

# The targets for the demo (docs/training.md).
TARGETS = {"copy": 0.5, "neighbours": 3.0, "attention": 3.0}


def run_config(model: Path, data_config: str | None) -> dict:
    """The training config.json: --data_config, the run directory's, or the run's above an export."""
    candidates = [Path(data_config)] if data_config else [model / "config.json", model.parent / "config.json"]
    for path in candidates:
        if path.is_file():
            config = read_json_object(path, "training config")
            if isinstance(config.get("data"), dict) and isinstance(config["data"].get("prep"), dict):
                return config
    raise DNAVecError(f"--model {model}: no training config.json with data.prep found next to it or above it; "
                      "pass --data_config RUN/config.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="training run directory or Hugging Face export")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step of a run directory")
    parser.add_argument("--data_config", default=None, help="the run's config.json (default: found from --model)")
    parser.add_argument("--max_examples", type=int, default=0, help="use the first N held-out examples (0: all)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    from dnavec_jax.data.settings import PrepSettings
    from dnavec_jax.tools import loaded_model, structure

    started = time.perf_counter()
    loaded = loaded_model.load_model(args.model, step=args.step)
    config = run_config(Path(args.model), args.data_config)
    settings = PrepSettings.from_dict(config["data"]["prep"])
    trained_with = config.get("train", {}).get("mlm_objective", "vocabulary")
    true_ids = structure.validation_examples(settings)
    if args.max_examples > 0:
        true_ids = true_ids[:args.max_examples]
    if not len(true_ids):
        raise DNAVecError("the data-prep settings hold out no validation block (validation_fraction 0?)")
    report = structure.structure_report(loaded.config, loaded.params, loaded.tokenizer, true_ids,
                                        settings.max_predictions)
    summary = {"model": loaded.source, "objective": trained_with, **report.summary(),
               "seconds": round(time.perf_counter() - started, 1)}
    copy_of_ceiling = (summary["copy_accuracy_given_k"] if trained_with == "length_aware"
                       else summary["copy_accuracy"] / summary["copy_accuracy_ceiling"])
    summary["copy_fraction_of_ceiling"] = copy_of_ceiling
    print(f"{loaded.source}, trained with the {trained_with} objective; {summary['num_examples']} held-out "
          f"examples, {summary['num_probes']} isolated [MASK]s")
    print(f"copy accuracy           {summary['copy_accuracy']:.4f} (ceiling {summary['copy_accuracy_ceiling']:.4f}); "
          f"given k {summary['copy_accuracy_given_k']:.4f} (ceiling 1); "
          f"{copy_of_ceiling:.2f} of its ceiling (target >= {TARGETS['copy']})")
    print(f"neighbour ratio         {summary['neighbour_ratio']:.2f}x: {summary['neighbour_share']:.4f} of the "
          f"{summary['neighbour_top']} nearest input vectors of each {summary['neighbour_k']}-mer share a "
          f"{structure.SHARED_SUBSTRING}-mer with it, {summary['random_share']:.4f} of all k-mers do "
          f"(target >= {TARGETS['neighbours']})")
    print(f"attention on overlap    max {summary['attention_max_ratio']:.2f}x uniform (layer, head "
          f"{tuple(summary['attention_max_head'])}); at [MASK] queries max {summary['mask_attention_max_ratio']:.2f}x "
          f"(target >= {TARGETS['attention']})")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
