"""`dnavec classify`: runs the chosen methods on one Task (with seeds and the random-init control),
prints the table and writes the outputs (docs/classify.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dnavec_jax import files
from dnavec_jax.errors import DNAVecError
from dnavec_jax.fields import values_from_args
from dnavec_jax.tools.classify.baseline import C_GRID, parse_k_range, run_baseline
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
from dnavec_jax.tools.classify.settings import (
    METHODS,
    PROBE_FEATURES,
    PROBE_FLAGS,
    PROBE_PREFIX,
    TOKEN_FEATURES,
    ClassifySettings,
    FinetuneSettings,
    TokenProbeSettings,
)
from dnavec_jax.tools.classify.tables import SPLITS, Task, load_task
from dnavec_jax.tools.loaded_model import load_model
from dnavec_jax.tools.predict import check_free_columns, prediction_columns

RUN = ClassifySettings()  # the defaults


def run_methods(task: Task, loaded, *, methods: Sequence[str] = METHODS, seed: int = RUN.seed, seeds: int = RUN.seeds,
                baseline_k: tuple[int, int] | None = None, tfidf: bool = RUN.tfidf,
                probe: Sequence[str] = PROBE_FEATURES, probe_tokenizations: int = RUN.probe_tokenizations,
                embed_batch_size: int = RUN.embed_batch_size,
                token_probe_settings: TokenProbeSettings | None = None,
                finetune_settings: FinetuneSettings | None = None, random_init_control: bool = RUN.random_init_control,
                log: Callable[[str], None] | None = None, progress: bool = False) -> dict[str, dict[str, Any]]:
    """{row name: {"dev", "test", "selected", "time_s", "probs"[, "classifier"]}} for each method (see the module
    docstring). "probs" and "classifier" are for the predictions and the export, not for results.json (PRIVATE).

    seeds: the probe and fine-tune rows run with seeds seed, seed + 1, ..., and are combined (combine_seeds);
    finetune_settings.seed is replaced by each. random_init_control: the probe and finetune rows again, on the
    same architecture with freshly initialised weights (key: the run's seed; row names prefixed RANDOM_INIT);
    the difference is what pretraining adds.
    """
    log = log or (lambda message: None)
    if seeds < 1:
        raise DNAVecError(f"--seeds must be at least 1, got {seeds}")
    run_seeds = [seed + i for i in range(seeds)]
    results: dict[str, dict[str, Any]] = {}
    labels = {split: task.labels(split) for split in SPLITS}
    prefixes = [""] + ([RANDOM_INIT] if random_init_control and set(methods) & {"probe", "finetune"} else [])

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
        features = probe_features(model, task, run_seed, embed_batch_size, probe, probe_tokenizations, progress)
        feature_time = round(time.perf_counter() - started, 2)
        rows = {}
        for name in probe:
            if name in TOKEN_FEATURES:
                fit = (token_probe, features[name], labels, len(task.classes),
                       token_probe_settings or TokenProbeSettings(), run_seed)
            else:
                fit = (run_probe, features[name], task, run_seed)
            rows[f"{prefix}probe_{name}"] = timed(f"{prefix}probe_{name}", run_seed, *fit)
            rows[f"{prefix}probe_{name}"]["selected"]["features_time_s"] = feature_time
        return rows

    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        if method == "baseline":
            k_range = baseline_k or (loaded.tokenizer.k_min, loaded.tokenizer.k_max)
            results["baseline"] = timed("baseline", seed, run_baseline, task, k_range, tfidf, seed)
            continue
        for prefix in prefixes:
            runs: dict[str, list[dict[str, Any]]] = {}
            for run_seed in run_seeds:
                model = random_init_model(loaded, run_seed) if prefix else loaded
                if method == "probe":
                    rows = run_probes(prefix, model, run_seed)
                else:
                    settings = dataclasses.replace(finetune_settings or FinetuneSettings(), seed=run_seed)
                    rows = {f"{prefix}finetune": timed(f"{prefix}finetune", run_seed, finetune, model, task,
                                                       settings, log, progress)}
                for name, row in rows.items():
                    runs.setdefault(name, []).append(row)
            for name, rows in runs.items():
                results[name] = rows[0] if len(rows) == 1 else combine_seeds(rows, run_seeds)
    return results


def parse_list(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if not items or unknown:
        raise DNAVecError(f"{flag} {text!r}: expected a comma list of {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def run_classify(args: argparse.Namespace) -> int:
    """`dnavec classify`."""
    methods = parse_list(args.methods, METHODS, "--methods")
    probe = parse_list(args.probe_features, PROBE_FEATURES, "--probe_features")
    baseline_k = parse_k_range(args.baseline_k) if args.baseline_k else None
    if args.seed < 0:
        raise DNAVecError(f"--seed must be non-negative, got {args.seed}")
    if args.seeds < 1:
        raise DNAVecError(f"--seeds must be at least 1, got {args.seeds}")
    if args.probe_tokenizations < 1:
        raise DNAVecError(f"--probe_tokenizations must be at least 1, got {args.probe_tokenizations}")
    if args.embed_batch_size < 1:
        raise DNAVecError(f"--embed_batch_size must be positive, got {args.embed_batch_size}")
    settings = FinetuneSettings(**values_from_args(FinetuneSettings, args), seed=args.seed)
    settings.check()
    probe_settings = TokenProbeSettings(**values_from_args(TokenProbeSettings, args, names=PROBE_FLAGS,
                                                           prefix=PROBE_PREFIX))
    probe_settings.check()
    output_dir = files.check_outputs_in_dir(args.output_dir, "--output_dir", OUTPUT_NAMES, args.overwrite,
                                            create=False)
    task = load_task(args.train, args.dev, args.test, args.max_length)
    for split in ("dev", "test"):  # fail before any work, not when the tables are written
        check_free_columns(task.splits[split].header, prediction_columns(task.classes),
                           f"--{split} {task.splits[split].path}")
    loaded = None
    if "probe" in methods or "finetune" in methods or baseline_k is None:
        loaded = load_model(args.model, step=args.step)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    results = run_methods(task, loaded, methods=methods, seed=args.seed, seeds=args.seeds, baseline_k=baseline_k,
                          tfidf=args.tfidf, probe=probe, probe_tokenizations=args.probe_tokenizations,
                          embed_batch_size=args.embed_batch_size, token_probe_settings=probe_settings,
                          finetune_settings=settings, random_init_control=args.random_init_control, log=log,
                          progress=sys.stderr.isatty())
    report = {
        "model": loaded.source if loaded is not None else str(args.model),
        "task": task.summary(),
        "settings": {"methods": methods, "seed": args.seed, "seeds": args.seeds, "select_metric": SELECT_METRIC,
                     "C_grid": list(C_GRID), "probe_features": probe,
                     "probe_tokenizations": args.probe_tokenizations, "tfidf": bool(args.tfidf),
                     "token_probe": dataclasses.asdict(probe_settings),
                     "random_init_control": bool(args.random_init_control),
                     "finetune": dataclasses.asdict(settings), "predictions": args.predictions},
        "methods": {name: {k: v for k, v in result.items() if k not in PRIVATE} for name, result in results.items()},
        "time_s": round(time.perf_counter() - started, 2),
    }
    tables = {}
    if "finetune" in results or args.predictions == "all":
        tables = {split: (task.splits[split].header, task.splits[split].rows,
                          prediction_blocks(task, results, split, args.predictions)) for split in ("dev", "test")}
    finetuned = results.get("finetune")
    details = {}
    if finetuned:  # the exported classifier is the --seed run's, also when --seeds repeats it
        first = finetuned["runs"][0] if "runs" in finetuned else finetuned
        details = {"base_model": report["model"], "dev": first["dev"], "test": first["test"],
                   "epoch": first["selected"]["epoch"]}
    write_outputs(output_dir, report, tables, finetuned and finetuned["classifier"], details, args.overwrite)
    counts = ", ".join(f"{split} {len(task.splits[split].sequences):,}" for split in SPLITS)
    print(f"{len(task.classes)} classes; {counts} sequences; model {report['model']}; seed {args.seed}"
          + (f" (+{args.seeds - 1} more: mean ± sd)" if args.seeds > 1 else ""))
    print(format_table(results))
    wrote = [RESULTS_FILE] + [f"{PREDICTIONS_DIR}/{{dev,test}}.csv"] * bool(tables) + ["classifier/"] * bool(finetuned)
    print(f"wrote {', '.join(wrote)} to {output_dir}")
    return 0
