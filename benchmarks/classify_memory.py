"""Peak memory and wall time of `dnavec classify` as the task grows. Not a test.

    python benchmarks/classify_memory.py                                # 1000,2000,4000,7797 rows x 200 bp
    python benchmarks/classify_memory.py --rows 7797 --length 200 --source /tmp/old_checkout   # another tree

Each size is a synthetic binary task (seeded random DNA, the CTCF core planted in half of the
rows; 70/15/15 train/dev/test, as the 7,797-row task of the issue: 5,457 for training). The
model is a randomly initialised one of --config (configs/demo.py: 2 layers x 128, k 3..6, 126
k-mers a window) exported to a temporary directory, unless --model: memory does not depend on
the weights. `dnavec classify` runs as a child process (`python -m dnavec_jax.cli`, with --source
first on PYTHONPATH, default this checkout) with every method and the default settings except
--epochs and --probe_epochs (fewer epochs change the time, not what is held). Its resident
memory is the sum over the process tree, sampled with psutil every --interval seconds; its CPU time
(user + system) and the load average at the start and the end come with it. Prints one Markdown table row
per size, each row's seconds from results.json as JSON, then the settings as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, random_model_export, versions

CTCF_CORE = "CCGCGAGGCGGCAG"  # classify.CTCF_CORE with its N filled in


def write_task(rows: int, length: int, directory: Path, seed: int = 0) -> dict[str, Path]:
    import numpy as np

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=(rows, length))
    labels = np.arange(rows) % 2
    sequences = []
    for row, label in zip(codes, labels):
        text = "".join("ACGT"[c] for c in row)
        if label:
            at = int(rng.integers(0, length - len(CTCF_CORE) + 1))
            text = text[:at] + CTCF_CORE + text[at + len(CTCF_CORE):]
        sequences.append(text)
    order = rng.permutation(rows)
    n_train, n_dev = int(0.7 * rows), int(0.15 * rows)
    parts = {"train": order[:n_train], "dev": order[n_train:n_train + n_dev], "test": order[n_train + n_dev:]}
    paths = {}
    for split, indices in parts.items():
        paths[split] = directory / f"{split}.csv"
        with open(paths[split], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sequence", "label"])
            writer.writerows((sequences[i], int(labels[i])) for i in indices)
    return paths


def tree_rss(process) -> int:
    import psutil

    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # a child that has just exited
            pass
    return total


def measure(command: list[str], env: dict[str, str], cwd: Path, interval: float) -> tuple[int, float, float, int]:
    """(peak tree RSS in bytes, wall seconds, CPU seconds of the tree, exit status) of a command. On a shared
    machine the CPU seconds (user + system of the command and its children) move less with the load."""
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, tree_rss(process))
        except psutil.Error:
            pass
        time.sleep(interval)
    output = child.stdout.read()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if child.returncode:
        print(output[-3000:], file=sys.stderr)
    return peak, seconds, cpu, child.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000,2000,4000,7797", help="comma list of task sizes (rows in all)")
    parser.add_argument("--length", default="200", help="bases per sequence; a comma list crosses with --rows")
    parser.add_argument("--model", default=None, help="run dir or export (default: random weights of --config)")
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.py"))
    parser.add_argument("--source", default=str(REPO), help="source tree to run (first on PYTHONPATH)")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (classify default: 20)")
    parser.add_argument("--probe_epochs", type=int, default=5, help="token-probe epochs (classify default: 100)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between RSS samples")
    parser.add_argument("--extra", default="", help="more classify arguments, space-separated")
    args = parser.parse_args()

    python_path = os.pathsep.join([args.source, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": python_path, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    # The child runs in a scratch directory: `python -m` puts its working directory first on sys.path,
    # which would shadow --source with whatever tree the benchmark was started from.
    with tempfile.TemporaryDirectory() as scratch:
        probe = subprocess.run([sys.executable, "-c", "import dnavec_jax; print(dnavec_jax.__file__)"], env=env,
                               cwd=scratch, capture_output=True, text=True, check=True)
    package = str(Path(probe.stdout.strip()).parent)
    if not package.startswith(str(Path(args.source).resolve())):
        sys.exit(f"--source {args.source}: the child would import dnavec_jax from {package}")
    print("| rows x bases | train rows | peak RSS (GB) | wall time (s) | CPU time (s) | load average, start-end |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="classify_memory_") as tmp:
        tmp = Path(tmp)
        model = args.model or str(random_model_export(args.config, tmp))
        for length in [int(x) for x in args.length.split(",")]:
            for rows in [int(x) for x in args.rows.split(",")]:
                work = tmp / f"{rows}x{length}"
                work.mkdir()
                paths = write_task(rows, length, work)
                command = [sys.executable, "-m", "dnavec_jax.cli", "classify", "--model", model,
                           *(f"--{split}={paths[split]}" for split in ("train", "dev", "test")),
                           "--output_dir", str(work / "out"), "--epochs", str(args.epochs),
                           "--probe_epochs", str(args.probe_epochs), *args.extra.split()]
                load = os.getloadavg()[0]
                peak, seconds, cpu, status = measure(command, env, work, args.interval)
                train_rows = sum(1 for _ in open(paths["train"])) - 1
                note = "" if status == 0 else f" (exit status {status})"
                print(f"| {rows:,} x {length} | {train_rows:,} | {peak / 1e9:.2f} | {seconds:.0f}{note} | {cpu:.0f} | "
                      f"{load:.1f}-{os.getloadavg()[0]:.1f} |", flush=True)
                if status == 0:  # where the time went: each row's seconds (and the probes' features)
                    methods = json.loads((work / "out" / "results.json").read_text())["methods"]
                    print(json.dumps({f"{rows}x{length}": {name: {key: row.get(key, row["selected"].get(key))
                                                                  for key in ("time_s", "features_time_s")}
                                                           for name, row in methods.items()}}), flush=True)
                shutil.rmtree(work)  # its spilled and written files, before the next size
    model = args.model or f"random weights of {Path(args.config).name}"
    print(json.dumps({"source": args.source, "dnavec_jax": package, "model": model,
                      "epochs": args.epochs, "probe_epochs": args.probe_epochs, "extra": args.extra,
                      "cpus": os.cpu_count(), "versions": versions("jax", "jaxlib", "flax", "scikit-learn")}))


if __name__ == "__main__":
    main()
