"""A planted-motif classification task from a genome (scripts/make_motif_task.py; docs/classify.md).
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from dnavec_jax.data.fasta import fasta_records
from dnavec_jax.data.pipeline import validation_blocks
from dnavec_jax.errors import DNAVecError
from dnavec_jax.files import write_atomic
from dnavec_jax.tokenization import BASE_CODES, acgt_runs

CTCF_CORE = "CCGCGNGGNGGCAG"  # CTCF core consensus (N: any base)


def _motif_regex(motif: str) -> re.Pattern:
    return re.compile(motif.upper().replace("N", "[ACGT]"))


# configs/demo.py's validation_fraction and validation_block_size: the blocks the demo model never saw.
DEMO_HELD_OUT = (0.05, 20_000)


def held_out_windows(fasta: str | os.PathLike, length: int, held_out: tuple[float, int] = DEMO_HELD_OUT,
                     skip: re.Pattern | None = None) -> list[tuple[str, int, str]]:
    """(record name, start, upper-cased text) of non-overlapping A/C/G/T windows inside validation blocks.

    `held_out` is data prep's (validation_fraction, validation_block_size); the blocks are chosen by
    the same rule (pipeline.validation_blocks: record name and length only), so the windows lie in
    DNA that pretraining on this FASTA with those settings held out. Windows matching `skip` are left out.
    """
    fraction, block_size = held_out
    windows = []
    with tempfile.TemporaryDirectory(prefix="dnavec_motif_") as work_dir:
        index, records = fasta_records(str(fasta), Path(work_dir))
        for (name, record_length), (_, raw) in zip(index, records):
            blocks = np.flatnonzero(validation_blocks(name, record_length, fraction, block_size))
            codes = BASE_CODES[raw]
            for start, end in acgt_runs(codes):
                for block in blocks:  # a window never crosses a block edge into training DNA
                    lo, hi = max(int(start), block * block_size), min(int(end), (block + 1) * block_size)
                    for at in range(lo, hi - length + 1, length):
                        text = bytes(raw[at:at + length]).decode("ascii").upper()
                        if skip is None or not skip.search(text):
                            windows.append((name, int(at), text))
    return windows


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


def planted_motif_task(fasta: str | os.PathLike, *, num_windows: int = 300, length: int = 150,
                       motif: str = CTCF_CORE, seed: int = 0, fractions: tuple[float, float] = (0.7, 0.15),
                       held_out: tuple[float, int] = DEMO_HELD_OUT) -> dict[str, list[tuple[str, int]]]:
    """A balanced binary task from real DNA that pretraining did not see: {split: [(sequence, label), ...]}.

    `num_windows` non-overlapping windows of `length` bases are drawn from the validation blocks
    (held_out_windows: data prep's held-out DNA for `held_out` = (validation_fraction,
    validation_block_size)); windows where the motif already occurs are skipped. Each window gives
    two rows, both edited at the same random position: label 1 gets `motif` (N: a random base each
    time), label 0 the same letters shuffled (_shuffled_site). So neither class is text the model
    was pretrained on, both have the same length and base composition, and they differ only in the
    order of 14 bases. Windows (both their rows) go to train/dev/test by `fractions` (train, dev;
    test gets the rest); rows are shuffled within a split. Deterministic in `seed`.
    """
    motif = motif.upper()
    if not motif or set(motif) - set("ACGTN") or len(motif) > length:
        raise DNAVecError(f"motif {motif!r}: must be A/C/G/T/N letters, at most {length} long")
    rng = np.random.default_rng(seed)
    pattern = _motif_regex(motif)
    tiles = [text for _, _, text in held_out_windows(fasta, length, held_out, skip=pattern)]
    if len(tiles) < num_windows:
        raise DNAVecError(f"{fasta}: only {len(tiles)} windows of {length} A/C/G/T bases in the validation blocks "
                          f"(validation_fraction {held_out[0]}, validation_block_size {held_out[1]:,}), "
                          f"{num_windows} asked for")
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
            control = _shuffled_site(site, window[at:at + len(motif)], pattern, window, at, rng)
            rows.append((window[:at] + control + window[at + len(motif):], 0))
            rows.append((window[:at] + site + window[at + len(motif):], 1))
        task[split] = [rows[i] for i in rng.permutation(len(rows))]
    return task


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
