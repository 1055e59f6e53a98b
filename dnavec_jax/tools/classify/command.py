"""`dnavec classify`: runs the chosen methods on one Task (with seeds and the random-init control),
prints the table and writes the outputs (docs/classify.md).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

from dnavec_jax import files
from dnavec_jax.tools.classify.baseline import C_GRID, run_baseline
from dnavec_jax.tools.classify.finetuning import finetune, random_init_model
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


def run_classify(settings: ClassifySettings) -> int:
    """`dnavec classify`."""
    output_dir = files.check_outputs_in_dir(settings.output_dir, "--output_dir", OUTPUT_NAMES, settings.overwrite,
                                            create=False)
    task = load_task(settings.train, settings.dev, settings.test, settings.max_length)
    for split in ("dev", "test"):  # fail before any work, not when the tables are written
        check_free_columns(task.splits[split].header, prediction_columns(task.classes),
                           f"--{split} {task.splits[split].path}")
    loaded = None
    if "probe" in settings.methods or "finetune" in settings.methods or settings.baseline_k_range is None:
        loaded = load_model(settings.model, step=settings.step)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    results = run_methods(task, loaded, settings, log=log, progress=sys.stderr.isatty())
    report = {
        "model": loaded.source if loaded is not None else str(settings.model),
        "task": task.summary(),
        "settings": {**settings.report(), "select_metric": SELECT_METRIC, "C_grid": list(C_GRID)},
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
    counts = ", ".join(f"{split} {len(task.splits[split].sequences):,}" for split in SPLITS)
    print(f"{len(task.classes)} classes; {counts} sequences; model {report['model']}; seed {settings.seed}"
          + (f" (+{settings.seeds - 1} more: mean ± sd)" if settings.seeds > 1 else ""))
    print(format_table(results))
    wrote = [RESULTS_FILE] + [f"{PREDICTIONS_DIR}/{{dev,test}}.csv"] * bool(tables) + ["classifier/"] * bool(finetuned)
    print(f"wrote {', '.join(wrote)} to {output_dir}")
    return 0
