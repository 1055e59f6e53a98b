"""A planted-motif classification task from a genome (scripts/make_motif_task.py; docs/classify.md).
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import BASE_CODES, acgt_runs
from dnavec_jax.tools.embed import fasta_records

CTCF_CORE = "CCGCGNGGNGGCAG"  # CTCF core consensus (N: any base)


def _motif_regex(motif: str) -> re.Pattern:
    return re.compile(motif.upper().replace("N", "[ACGT]"))


def planted_motif_task(fasta: str | os.PathLike, *, num_windows: int = 300, length: int = 150,
                       motif: str = CTCF_CORE, seed: int = 0, fractions: tuple[float, float] = (0.7, 0.15)
                       ) -> dict[str, list[tuple[str, int]]]:
    """A balanced binary task from real DNA: {split: [(sequence, label), ...]}.

    `num_windows` non-overlapping windows of `length` bases are drawn from the A/C/G/T runs of
    the FASTA (upper-cased; windows where the motif already occurs are skipped). Each window gives
    two rows: label 0, the window as is, and label 1, the window with `motif` written over the
    bases at a random position (N: a random base each time), so both rows have the same length and
    differ only by the motif. Windows (both their rows) go to train/dev/test by `fractions`
    (train, dev; test gets the rest); rows are shuffled within a split. Deterministic in `seed`.
    """
    motif = motif.upper()
    if not motif or set(motif) - set("ACGTN") or len(motif) > length:
        raise DNAVecError(f"motif {motif!r}: must be A/C/G/T/N letters, at most {length} long")
    rng = np.random.default_rng(seed)
    pattern = _motif_regex(motif)
    tiles = []
    with tempfile.TemporaryDirectory(prefix="dnavec_motif_") as work_dir:
        _, records = fasta_records(str(fasta), Path(work_dir))
        for _, raw in records:
            codes = BASE_CODES[raw]
            for start, end in acgt_runs(codes):
                for tile in range(int(start), int(end) - length + 1, length):
                    text = bytes(raw[tile:tile + length]).decode("ascii").upper()
                    if not pattern.search(text):
                        tiles.append(text)
    if len(tiles) < num_windows:
        raise DNAVecError(f"{fasta}: only {len(tiles)} windows of {length} A/C/G/T bases, {num_windows} asked for")
    chosen = [tiles[i] for i in rng.choice(len(tiles), size=num_windows, replace=False)]
    n_train = int(round(fractions[0] * num_windows))
    n_dev = int(round(fractions[1] * num_windows))
    bounds = {"train": (0, n_train), "dev": (n_train, n_train + n_dev), "test": (n_train + n_dev, num_windows)}
    if any(hi <= lo for lo, hi in bounds.values()):
        raise DNAVecError(f"{num_windows} windows leave a split empty; ask for more windows")
    task = {}
    for split, (lo, hi) in bounds.items():
        rows = []
        for window in chosen[lo:hi]:
            site = "".join(base if base != "N" else "ACGT"[rng.integers(4)] for base in motif)
            at = int(rng.integers(0, length - len(motif) + 1))
            rows.append((window, 0))
            rows.append((window[:at] + site + window[at + len(motif):], 1))
        task[split] = [rows[i] for i in rng.permutation(len(rows))]
    return task


def write_task(task: dict[str, list[tuple[str, int]]], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes {split}.csv (header `sequence,label`) for each split; returns the paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in task.items():
        paths[split] = output_dir / f"{split}.csv"
        with open(paths[split], "w", newline="", encoding="ascii") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sequence", "label"])
            writer.writerows(rows)
    return paths
