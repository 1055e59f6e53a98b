"""`dnavec classify`: runs the chosen methods on one Task (with seeds and the random-init control), or with
--train_sizes on nested subsamples of its train split (label-efficiency curves), prints the table and writes
the outputs (docs/classify.md).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dnavec_jax import files
from dnavec_jax.tools.classify import curves
from dnavec_jax.tools.classify.baseline import C_GRID, run_baseline
from dnavec_jax.tools.classify.finetuning import finetune, random_init_model, twin_settings
from dnavec_jax.tools.classify.metrics import SELECT_METRIC
from dnavec_jax.tools.classify.probes import probe_features, run_probe, token_probe
from dnavec_jax.tools.classify.report import (
    OUTPUT_NAMES,
    PREDICTIONS_DIR,
    PRIVATE,
    RANDOM_INIT,
    RESULTS_FILE,
    combine_seeds,
    format_table,
    prediction_blocks,
    seed_variation,
    write_outputs,
)
from dnavec_jax.tools.classify.settings import TOKEN_FEATURES, ClassifySettings
from dnavec_jax.tools.classify.tables import SPLITS, Task, check_free_columns, load_task, prediction_columns
from dnavec_jax.tools.loaded_model import load_model


def run_methods(task: Task, loaded, settings: ClassifySettings, log: Callable[[str], None] | None = None,
                progress: bool = False) -> dict[str, dict[str, Any]]:
    """{row name: {"dev", "test", "selected", "time_s", "probs"[, "classifier"]}} for each of settings.methods.
    "probs" and "classifier" are for the predictions and the export, not for results.json (PRIVATE).

    The probe and fine-tune rows run with each of settings.run_seeds and are combined (combine_seeds);
    settings.finetune.seed is replaced by each. random_init_control: the probe and finetune rows again, on the
    same architecture with freshly initialised weights (key: the run's seed; row names prefixed RANDOM_INIT);
    the difference is what pretraining adds.
    """
    log = log or (lambda message: None)
    run_seeds = settings.run_seeds
    results: dict[str, dict[str, Any]] = {}
    labels = {split: task.labels(split) for split in SPLITS}
    prefixes = [""] + ([RANDOM_INIT] if settings.random_init_control
                       and set(settings.methods) & {"probe", "finetune"} else [])

    def timed(name, run_seed, function, *args):
        started = time.perf_counter()
        result = function(*args)
        result["time_s"] = round(time.perf_counter() - started, 2)
        where = f" (seed {run_seed})" if len(run_seeds) > 1 else ""
        log(f"{name}{where}: dev {SELECT_METRIC} {result['dev'][SELECT_METRIC]:.4f}, test {SELECT_METRIC} "
            f"{result['test'][SELECT_METRIC]:.4f} ({result['time_s']:.1f}s)")
        return result

    def run_probes(prefix, model, run_seed):
        started = time.perf_counter()
        features = probe_features(model, task, run_seed, settings.embed_batch_size, settings.probe_features,
                                  settings.probe_tokenizations, progress)
        feature_time = round(time.perf_counter() - started, 2)
        rows = {}
        for name in settings.probe_features:
            if name in TOKEN_FEATURES:
                fit = (token_probe, features[name], labels, len(task.classes), settings.token_probe, run_seed)
            else:
                fit = (run_probe, features[name], task, run_seed)
            rows[f"{prefix}probe_{name}"] = timed(f"{prefix}probe_{name}", run_seed, *fit)
            rows[f"{prefix}probe_{name}"]["selected"]["features_time_s"] = feature_time
        return rows

    for method in settings.methods:
        if method == "baseline":
            k_range = settings.baseline_k_range or (loaded.tokenizer.k_min, loaded.tokenizer.k_max)
            results["baseline"] = timed("baseline", settings.seed, run_baseline, task, k_range, settings.tfidf,
                                        settings.seed)
            continue
        for prefix in prefixes:
            runs: dict[str, list[dict[str, Any]]] = {}
            for run_seed in run_seeds:
                model = random_init_model(loaded, run_seed) if prefix else loaded
                if method == "probe":
                    rows = run_probes(prefix, model, run_seed)
                else:
                    finetune_settings = dataclasses.replace(settings.finetune, seed=run_seed)
                    rows = {f"{prefix}finetune": timed(f"{prefix}finetune", run_seed, finetune, model, task,
                                                       finetune_settings, log, progress)}
                for name, row in rows.items():
                    runs.setdefault(name, []).append(row)
            for name, rows in runs.items():
                results[name] = rows[0] if len(rows) == 1 else combine_seeds(rows, run_seeds)
    return results


def run_curves(task: Task, loaded, settings: ClassifySettings, log: Callable[[str], None] | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Label-efficiency curves (--train_sizes): for each seed (a draw), a nested class-stratified order of the
    train rows (curves.nested_order); at each size its first rows are the train split, and run_methods runs
    every method there with that seed, the random-init twin included (its weights seeded by the draw too).

    Returns {"rows": label_efficiency.csv's rows, "runs": {size: {row name: [per draw results]}}}; a row's
    AUROCs are means over draws of test AUROC, its interval curves.paired_bootstrap's (over test rows and draws).
    """
    log = log or (lambda message: None)
    train_labels = task.labels("train")
    curves.check_sizes(settings.train_sizes, train_labels, task.classes)
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {size: {} for size in settings.train_sizes}
    for seed in settings.run_seeds:
        order = curves.nested_order(train_labels, np.random.default_rng([seed, len(train_labels)]))
        one = dataclasses.replace(settings, seed=seed, seeds=1, random_init_control=True, train_sizes=())
        for size in settings.train_sizes:
            sized_log = lambda message, size=size, seed=seed: log(f"[train size {size}, seed {seed}] {message}")  # noqa: E731
            results = run_methods(curves.subsample(task, order[:size]), loaded, one, log=sized_log, progress=progress)
            for name, result in results.items():
                runs[size].setdefault(name, []).append(result)
    test_labels = task.labels("test")
    rows = []
    for size in settings.train_sizes:
        baseline = runs[size].get("baseline")
        for name in runs[size]:
            if name == "baseline" or name.startswith(RANDOM_INIT):
                continue
            pretrained, twin = runs[size][name], runs[size][RANDOM_INIT + name]
            mean = {label: float(np.mean([run["test"]["auroc"] for run in group]))
                    for label, group in (("pretrained", pretrained), ("random_init", twin))}
            low, high = curves.paired_bootstrap(test_labels, [run["probs"]["test"] for run in pretrained],
                                                [run["probs"]["test"] for run in twin], seed=settings.seed)
            rows.append({"train_size": size, "method": name, "pretrained_auroc": mean["pretrained"],
                         "random_init_auroc": mean["random_init"],
                         "difference": mean["pretrained"] - mean["random_init"], "ci_low": low, "ci_high": high,
                         "kmer_baseline_auroc": None if baseline is None else float(
                             np.mean([run["test"]["auroc"] for run in baseline]))})
    return {"rows": rows, "runs": runs}


def run_classify(settings: ClassifySettings) -> int:
    """`dnavec classify`."""
    output_dir = files.check_outputs_in_dir(settings.output_dir, "--output_dir", OUTPUT_NAMES, settings.overwrite,
                                            create=False)
    task = load_task(settings.train, settings.dev, settings.test, settings.max_length)
    for split in ("dev", "test"):  # fail before any work, not when the tables are written
        check_free_columns(task.splits[split].header, prediction_columns(task.classes),
                           f"--{split} {task.splits[split].path}")
    if settings.train_sizes:  # before the model loads
        curves.check_sizes(settings.train_sizes, task.labels("train"), task.classes)
    loaded = None
    if "probe" in settings.methods or "finetune" in settings.methods or settings.baseline_k_range is None:
        loaded = load_model(settings.model, step=settings.step)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    if settings.train_sizes:
        return _write_curves(task, loaded, settings, run_curves(task, loaded, settings, log, sys.stderr.isatty()),
                             output_dir, started)
    results = run_methods(task, loaded, settings, log=log, progress=sys.stderr.isatty())
    report = {
        "model": loaded.source if loaded is not None else str(settings.model),
        "task": task.summary(),
        "settings": {**settings.report(), "select_metric": SELECT_METRIC, "C_grid": list(C_GRID)},
        **({"seeds": seed_variation(settings)} if settings.seeds > 1 else {}),
        **({"random_init": twin_settings(loaded)} if settings.random_init_control and loaded is not None else {}),
        "methods": {name: {k: v for k, v in result.items() if k not in PRIVATE} for name, result in results.items()},
        "time_s": round(time.perf_counter() - started, 2),
    }
    tables = {}
    if "finetune" in results or settings.predictions == "all":
        tables = {split: (task.splits[split].header, task.splits[split].rows,
                          prediction_blocks(task, results, split, settings.predictions)) for split in ("dev", "test")}
    finetuned = results.get("finetune")
    details = {}
    if finetuned:  # the exported classifier is the --seed run's, also when --seeds repeats it
        first = finetuned["runs"][0] if "runs" in finetuned else finetuned
        details = {"base_model": report["model"], "dev": first["dev"], "test": first["test"],
                   "epoch": first["selected"]["epoch"]}
    write_outputs(output_dir, report, tables, finetuned and finetuned["classifier"], details, settings.overwrite)
    print(_header(task, settings, report["model"]))
    print(format_table(results))
    wrote = [RESULTS_FILE] + [f"{PREDICTIONS_DIR}/{{dev,test}}.csv"] * bool(tables) + ["classifier/"] * bool(finetuned)
    print(f"wrote {', '.join(wrote)} to {output_dir}")
    return 0


def _header(task: Task, settings: ClassifySettings, model: str) -> str:
    """The line above the printed table: the task, the model, the seeds and what they vary."""
    counts = ", ".join(f"{split} {len(task.splits[split].sequences):,}" for split in SPLITS)
    line = f"{len(task.classes)} classes; {counts} sequences; model {model}; seed {settings.seed}"
    if settings.seeds > 1:
        variation = seed_variation(settings)
        line += (f" (+{settings.seeds - 1} more: mean ± sd over {'; '.join(variation['varies'])}. Fixed: "
                 f"{'; '.join(variation['fixed'])})")
    return line


def _write_curves(task: Task, loaded, settings: ClassifySettings, curve: dict[str, Any], output_dir, started: float
                  ) -> int:
    """results.json, label_efficiency.csv and its figure of a --train_sizes run; prints the curve table."""
    rows = curve["rows"]
    report = {
        "model": loaded.source,
        "task": task.summary(),
        "settings": {**settings.report(), "select_metric": SELECT_METRIC, "C_grid": list(C_GRID)},
        "seeds": seed_variation(settings),
        "random_init": twin_settings(loaded),
        "label_efficiency": {
            "rows": rows, "draws": settings.seeds,
            "interval": {"confidence": curves.CONFIDENCE, "bootstrap_samples": curves.BOOTSTRAP_SAMPLES,
                         "resampled": "test rows (with replacement within each class) and draws, the same for "
                                      "both models (paired)"},
            "auroc": "test AUROC, mean over draws; of class 1 for two classes, one-vs-rest macro average for more",
            "runs": {str(size): {name: [{"seed": seed, **{k: v for k, v in run.items() if k not in PRIVATE}}
                                        for seed, run in zip(settings.run_seeds, group)]
                                 for name, group in by_name.items()}
                     for size, by_name in curve["runs"].items()},
        },
        "time_s": round(time.perf_counter() - started, 2),
    }
    title = f"{Path(task.splits['test'].path).parent.name or 'task'}: {settings.seeds} draws"
    write_outputs(output_dir, report, {}, None, {}, settings.overwrite,
                  {curves.CSV_FILE: curves.csv_text(rows).encode("utf-8"),
                   curves.FIGURE_FILE: curves.figure_png(rows, title)})
    print(_header(task, settings, report["model"]))
    print(curves.format_table(rows))
    print(f"wrote {RESULTS_FILE}, {curves.CSV_FILE}, {curves.FIGURE_FILE} to {output_dir}")
    return 0
