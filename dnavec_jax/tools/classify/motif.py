"""A planted-motif classification task from a genome (scripts/make_motif_task.py; docs/classify.md).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.errors import DNAVecError
from dnavec_jax.files import write_atomic
from dnavec_jax.tools.classify.held_out import check_pretraining, held_out_windows

CTCF_CORE = "CCGCGNGGNGGCAG"  # CTCF core consensus (N: any base)


def _motif_regex(motif: str) -> re.Pattern:
    return re.compile(motif.upper().replace("N", "[ACGT]"))


def _shuffled_site(site: str, original: str, pattern: re.Pattern, window: str, at: int,
                   rng: np.random.Generator) -> str:
    """The site's letters in a new order that neither spells the motif in the window nor restores the original.

    The label-0 twin of a planted motif: same bases at the same place, so both classes are edited and
    carry the same base composition; only the order of the motif's letters tells them apart.
    """
    for _ in range(1000):
        control = "".join(rng.permutation(list(site)))
        if control != original and not pattern.search(window[:at] + control + window[at + len(site):]):
            return control
    raise DNAVecError(f"motif {site!r}: no shuffle of its letters avoids the motif; use a less repetitive motif")


def planted_motif_task(fasta: str | os.PathLike, *, pretraining: PrepSettings, num_windows: int = 300,
                       length: int = 150, motif: str = CTCF_CORE, seed: int = 0,
                       fractions: tuple[float, float] = (0.7, 0.15)) -> dict[str, list[tuple[str, int]]]:
    """A balanced binary task from real DNA that pretraining did not see: {split: [(sequence, label), ...]}.

    `num_windows` non-overlapping windows of `length` bases are drawn from the validation blocks of the
    pretraining run whose data-prep settings are `pretraining` (held_out.held_out_windows; required: there
    is no default run); windows where the motif already occurs are skipped. Each window gives
    two rows, both edited at the same random position: label 1 gets `motif` (N: a random base each
    time), label 0 the same letters shuffled (_shuffled_site). So neither class is text the model
    was pretrained on, both have the same length and base composition, and they differ only in the
    order of 14 bases. Windows (both their rows) go to train/dev/test by `fractions` (train, dev;
    test gets the rest); rows are shuffled within a split. Deterministic in `seed`.
    """
    motif = motif.upper()
    if not motif or set(motif) - set("ACGTN") or len(motif) > length:
        raise DNAVecError(f"motif {motif!r}: must be A/C/G/T/N letters, at most {length} long")
    check_pretraining(pretraining)
    rng = np.random.default_rng(seed)
    pattern = _motif_regex(motif)
    chosen = choose_windows(fasta, pretraining, num_windows, length, rng, skip=pattern)
    bounds = split_bounds(num_windows, fractions)
    task = {}
    for split, (lo, hi) in bounds.items():
        rows = []
        for window in chosen[lo:hi]:
            site = "".join(base if base != "N" else "ACGT"[rng.integers(4)] for base in motif)
            at = int(rng.integers(0, length - len(motif) + 1))
            control = _shuffled_site(site, window[at:at + len(motif)], pattern, window, at, rng)
            rows.append((window[:at] + control + window[at + len(motif):], 0))
            rows.append((window[:at] + site + window[at + len(motif):], 1))
        task[split] = [rows[i] for i in rng.permutation(len(rows))]
    return task


def choose_windows(fasta: str | os.PathLike, pretraining: PrepSettings, num_windows: int, length: int,
                   rng: np.random.Generator, skip: re.Pattern | None = None) -> list[str]:
    """`num_windows` of the run's held-out windows (held_out_windows), drawn without replacement."""
    tiles = [text for _, _, text in held_out_windows(fasta, length, pretraining, skip=skip)]
    if len(tiles) < num_windows:
        raise DNAVecError(f"{fasta}: only {len(tiles)} windows of {length} A/C/G/T bases in the validation blocks "
                          f"(validation_fraction {pretraining.validation_fraction}, validation_block_size "
                          f"{pretraining.validation_block_size:,}), {num_windows} asked for")
    return [tiles[i] for i in rng.choice(len(tiles), size=num_windows, replace=False)]


def split_bounds(count: int, fractions: tuple[float, float]) -> dict[str, tuple[int, int]]:
    """{split: (first, end)} of `count` items cut by (train, dev) fractions; test gets the rest."""
    n_train = int(round(fractions[0] * count))
    n_dev = int(round(fractions[1] * count))
    bounds = {"train": (0, n_train), "dev": (n_train, n_train + n_dev), "test": (n_train + n_dev, count)}
    if any(hi <= lo for lo, hi in bounds.values()):
        raise DNAVecError(f"{count} windows leave a split empty; ask for more windows")
    return bounds


def write_task(task: dict[str, list[tuple[str, int]]], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes {split}.csv (header `sequence,label`) for each split, each file whole or not at all; returns the paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in task.items():
        paths[split] = output_dir / f"{split}.csv"

        def write(handle, rows=rows):
            writer = csv.writer(handle)
            writer.writerow(["sequence", "label"])
            writer.writerows(rows)

        write_atomic(paths[split], write, binary=False)
    return paths
