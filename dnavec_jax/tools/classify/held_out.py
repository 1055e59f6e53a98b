"""Which DNA a pretraining run trained on and which it held out: the one source of the task generators
(motif.py, order.py), so that no task calls DNA "held out" without being told the run (docs/classify.md).

Data prep holds out whole blocks of each record (pipeline.validation_blocks: chosen from the record's
name and length, validation_fraction and validation_block_size only), so the blocks can be rebuilt from
the run's data-prep settings without reading its dataset. A FASTA with the same record names and
lengths (e.g. scripts/shuffle_genome.py's output) has the same blocks.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dnavec_jax.data.fasta import DEMO_FASTA, base_code_table, fasta_records
from dnavec_jax.data.pipeline import validation_blocks
from dnavec_jax.data.settings import PrepSettings, parse_chromosome_selection, record_selected
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import INVALID_CODE, acgt_runs

NEEDS_RUN = ("held-out DNA is held out from one pretraining run only: pass --pretraining_run (its run "
             "directory or config.json)")


def pretraining_prep(run: str | os.PathLike | None) -> PrepSettings:
    """The data-prep settings of a pretraining run: its directory or its config.json (data.prep)."""
    if not run:
        raise DNAVecError(NEEDS_RUN)
    path = Path(run)
    path = path / "config.json" if path.is_dir() else path
    try:
        prep = json.loads(path.read_text(encoding="utf-8"))["data"]["prep"]
    except FileNotFoundError:
        raise DNAVecError(f"--pretraining_run {run}: no config.json (not a training run directory)") from None
    except (KeyError, TypeError, ValueError) as error:
        raise DNAVecError(f"--pretraining_run {run}: {path} holds no data.prep settings ({error})") from None
    return PrepSettings.from_dict(prep)


def check_pretraining(pretraining: PrepSettings | None) -> PrepSettings:
    """`pretraining` itself; a one-line DNAVecError when a generator was not told the run."""
    if not isinstance(pretraining, PrepSettings):
        raise DNAVecError(NEEDS_RUN)
    return pretraining


def source_fasta(pretraining: PrepSettings, fasta: str | os.PathLike | None = None) -> str:
    """The FASTA to cut windows from: `fasta`, else the run's one FASTA (the embedded chr22 when it names none)."""
    if fasta:
        return str(fasta)
    if len(pretraining.fasta) > 1:
        raise DNAVecError(f"the pretraining run read {len(pretraining.fasta)} FASTA files; pass one of them with "
                          "--fasta")
    return pretraining.fasta[0] if pretraining.fasta else str(DEMO_FASTA)


def _blocks(fasta: str | os.PathLike, pretraining: PrepSettings
            ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(record name, raw letters, base codes, held-out flag per block) of each record the run's chromosome
    selection keeps."""
    selection = parse_chromosome_selection(pretraining.chromosomes)
    table = base_code_table(pretraining.soft_masked)
    with tempfile.TemporaryDirectory(prefix="dnavec_held_out_") as work_dir:
        index, records = fasta_records(str(fasta), Path(work_dir))
        for (name, length), (_, raw) in zip(index, records):
            if record_selected(name, selection):
                yield name, raw, table[raw], validation_blocks(name, length, pretraining.validation_fraction,
                                                               pretraining.validation_block_size)


def held_out_windows(fasta: str | os.PathLike, length: int, pretraining: PrepSettings,
                     skip: re.Pattern | None = None) -> list[tuple[str, int, str]]:
    """(record name, start, upper-cased text) of non-overlapping A/C/G/T windows inside the run's validation
    blocks: DNA the run never trained on. Windows matching `skip` are left out."""
    check_pretraining(pretraining)
    block_size = pretraining.validation_block_size
    windows = []
    for name, raw, codes, held_out in _blocks(fasta, pretraining):
        for start, end in acgt_runs(codes):
            for block in np.flatnonzero(held_out):  # a window never crosses a block edge into training DNA
                lo, hi = max(int(start), block * block_size), min(int(end), (block + 1) * block_size)
                for at in range(lo, hi - length + 1, length):
                    text = bytes(raw[at:at + length]).decode("ascii").upper()
                    if skip is None or not skip.search(text):
                        windows.append((name, int(at), text))
    return windows


def training_runs(fasta: str | os.PathLike, pretraining: PrepSettings) -> Iterator[np.ndarray]:
    """Base codes (0..3) of each A/C/G/T run of the run's training blocks, cut where a held-out block starts."""
    check_pretraining(pretraining)
    block_size = pretraining.validation_block_size
    for _, _, codes, held_out in _blocks(fasta, pretraining):
        trained = np.repeat(~held_out, block_size)[:len(codes)]
        for start, end in acgt_runs(np.where(trained, codes, np.uint8(INVALID_CODE))):
            yield codes[start:end]
