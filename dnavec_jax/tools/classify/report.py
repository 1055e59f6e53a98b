"""The report of `dnavec classify`: metrics, the row labels and table, seeds combined, and the outputs
(results.json, predictions/, classifier/) written all or nothing (docs/classify.md).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dnavec_jax import files
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tools.classify.classifier import CLASSIFIER_DIR, export_classifier
from dnavec_jax.tools.classify.curves import CSV_FILE, FIGURE_FILE
from dnavec_jax.tools.classify.metrics import METRICS
from dnavec_jax.tools.classify.probes import TOKEN_FEATURES
from dnavec_jax.tools.classify.tables import Task, prediction_cells, prediction_columns, write_table

RESULTS_FILE = "results.json"


RANDOM_INIT = "random_init_"  # row-name prefix of the control rows (run_methods(random_init_control=True))


PRIVATE = ("probs", "classifier")  # method-result keys kept in memory (predictions, the export), not in results.json


PREDICTIONS_DIR = "predictions"


CURVE_FILES = (CSV_FILE, FIGURE_FILE)  # what --train_sizes writes next to results.json


OUTPUT_NAMES = (RESULTS_FILE, PREDICTIONS_DIR, "classifier", *CURVE_FILES)  # classifier: classifier.CLASSIFIER_DIR


PREDICTION_CHOICES = ("finetune", "all")


def seed_variation(settings) -> dict[str, list[str]]:
    """What --seeds varies and what it keeps (results.json "seeds", the printed header): the spread over seeds
    measures only the first list."""
    varies = ["the random-k tokenization of every sequence (probe features, fine-tuning)",
              "fine-tuning's example order, dropout and head initialisation", "the token probes' example order"]
    fixed = ["the dev and test rows"]
    if settings.random_init_control or settings.train_sizes:
        varies.append("the random-init twin's weights")
    if settings.train_sizes:
        varies.append("the train subsample of each size (nested, class-stratified)")
    else:
        fixed.append("the train rows (the tables as given: another task sample needs other tables)")
    fixed.append("the k-mer baseline" + (" at a given subsample" if settings.train_sizes else "")
                 + " (deterministic)")
    return {"seeds": list(settings.run_seeds), "varies": varies, "fixed": fixed}


def mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    if any(value is None for value in values):
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1))


def combine_seeds(runs: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """One row from runs over several seeds: mean metrics in dev/test, sample sd (ddof 1) in dev_sd/test_sd,
    each run in "runs"; "selected" and the private keys are the first seed's (the one --seed names)."""
    combined: dict[str, Any] = {"seeds": list(seeds)}
    for split in ("dev", "test"):
        stats = {metric: mean_sd([run[split][metric] for run in runs]) for metric in METRICS}
        combined[split] = {metric: mean for metric, (mean, _) in stats.items()}
        combined[f"{split}_sd"] = {metric: sd for metric, (_, sd) in stats.items()}
    combined["selected"] = runs[0]["selected"]
    combined["runs"] = [{"seed": seed, **{k: v for k, v in run.items() if k not in PRIVATE}}
                        for seed, run in zip(seeds, runs)]
    combined["time_s"] = round(sum(run["time_s"] for run in runs), 2)
    combined.update({key: runs[0][key] for key in PRIVATE if key in runs[0]})
    return combined


def row_label(name: str, result: dict[str, Any]) -> str:
    if name.startswith(RANDOM_INIT):
        return row_label(name[len(RANDOM_INIT):], result) + ", random init"
    selected = result.get("selected", {})
    seeds = f", {len(result['seeds'])} seeds" if "seeds" in result else ""
    if name == "baseline":
        k = (f"k {selected['k_min']}" if selected["k_min"] == selected["k_max"]
             else f"k {selected['k_min']}-{selected['k_max']}")
        return f"k-mer {'tf-idf' if selected['tfidf'] else 'counts'} ({k}) + LR"
    if name.startswith("probe_"):
        feature = name[len("probe_"):]
        return (f"probe: {feature} + " + ("linear, log-sum-exp over tokens" if feature in TOKEN_FEATURES else "LR")
                + seeds)
    if name == "finetune":
        return f"fine-tune{seeds}" if seeds else f"fine-tune (epoch {selected['epoch']})"
    return name


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per method, dev then test metrics (mean ± sd over seeds where there are several)."""
    short = {"accuracy": "acc", "macro_f1": "F1", "mcc": "MCC", "auroc": "AUROC"}
    header = ["method"] + [f"{split} {short[m]}" for split in ("dev", "test") for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in results.items():
        cells = [row_label(name, result)]
        for split in ("dev", "test"):
            for metric in METRICS:
                value, sd = result[split][metric], result.get(f"{split}_sd", {}).get(metric)
                cells.append("-" if value is None else f"{value:.3f}" + ("" if sd is None else f" ± {sd:.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prediction_blocks(task: Task, results: dict[str, dict[str, Any]], split: str, which: str
                      ) -> list[tuple[list[str], list[list[str]]]]:
    """(columns, cells) per method for predictions/<split>.csv: the fine-tuned model's unprefixed; with
    which="all" every other row's too, its columns prefixed by the row name."""
    names = [name for name in ("finetune", *results) if name in results and (name == "finetune" or which == "all")]
    names = list(dict.fromkeys(names))  # the fine-tuned model's columns first, right after the input's
    return [(prediction_columns(task.classes, "" if name == "finetune" else f"{name}_"),
             prediction_cells(results[name]["probs"][split], task.classes)) for name in names]


def write_outputs(output_dir: Path, report: dict[str, Any], tables: dict[str, tuple], classifier, details: dict,
                  overwrite: bool, curve_files: dict[str, bytes] | None = None) -> None:
    """results.json, predictions/, classifier/ and (--train_sizes) CURVE_FILES, all or nothing: everything is
    written in a staging directory inside output_dir, then renamed into place (results.json last); outputs of an
    earlier run that this one does not make are removed (only with overwrite: otherwise any earlier output is
    refused up front)."""
    curve_files = curve_files or {}
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".classify-partial-", dir=output_dir))
    try:
        made = []
        if tables:
            (staging / PREDICTIONS_DIR).mkdir()
            for split, (header, rows, blocks) in tables.items():
                with open(staging / PREDICTIONS_DIR / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
                    write_table(handle, header, rows, blocks)
            made.append(PREDICTIONS_DIR)
        if classifier is not None:
            export_classifier(classifier, staging / CLASSIFIER_DIR, details)
            made.append(CLASSIFIER_DIR)
        for name, data in curve_files.items():
            (staging / name).write_bytes(data)
        for name in made:
            refused = DNAVecError(f"--output_dir {output_dir}: {name}/ exists (pass --overwrite to replace it)")
            files.replace_directory(staging / name, output_dir / name, overwrite, lambda error=refused: error)
        for name in curve_files:
            if (output_dir / name).exists() and not overwrite:
                raise DNAVecError(f"--output_dir {output_dir}: {name} exists (pass --overwrite to replace it)")
            os.replace(staging / name, output_dir / name)
        for name in {PREDICTIONS_DIR, CLASSIFIER_DIR} - set(made):
            if overwrite and (output_dir / name).is_dir():
                shutil.rmtree(output_dir / name)
        for name in set(CURVE_FILES) - set(curve_files):
            if overwrite and (output_dir / name).is_file():
                (output_dir / name).unlink()
        files.write_atomic(output_dir / RESULTS_FILE,
                           lambda handle: handle.write(json.dumps(report, indent=2) + "\n"), binary=False)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(output_dir.iterdir()):
            output_dir.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
