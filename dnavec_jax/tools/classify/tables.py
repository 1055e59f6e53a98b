"""The tables of `dnavec classify` and `dnavec predict`: CSV/TSV reading and checks, class order, Task, and
the prediction columns written next to the input's (docs/classify.md).

A header names a `sequence` and a `label` column; the delimiter comes from the extension or the header;
DABERT-style k-mer text is joined back into DNA; every mistake is a one-line DNAVecError naming the
file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dnavec_jax.errors import DNAVecError
from dnavec_jax.tools.loaded_model import check_dna

SPLITS = ("train", "dev", "test")
PREDICTION = "prediction"


@dataclasses.dataclass(frozen=True)
class Split:
    name: str  # train | dev | test (| input: `dnavec predict`)
    path: str
    sequences: list[str]  # DNA, as read (case kept)
    labels: list[str]  # empty when read without a label column
    lines: list[int]  # line number of each row in the file (for messages)
    header: list[str] = dataclasses.field(default_factory=list)  # the file's columns, as written
    rows: list[list[str]] = dataclasses.field(default_factory=list)  # every data row's fields, as written

    def row_names(self) -> list[str]:
        return [f"{self.path}: line {line}" for line in self.lines]


@dataclasses.dataclass(frozen=True)
class Task:
    classes: list[str]  # class id -> label text
    splits: dict[str, Split]
    max_length: int = 0  # 0: whole sequences; else the first max_length bases of each

    def labels(self, split: str) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.classes)}
        return np.array([index[label] for label in self.splits[split].labels], dtype=np.int64)

    def sequences(self, split: str) -> list[str]:
        sequences = self.splits[split].sequences
        return [s[:self.max_length] for s in sequences] if self.max_length else list(sequences)

    def summary(self) -> dict[str, Any]:
        return {
            "classes": self.classes, "num_classes": len(self.classes), "max_length": self.max_length,
            "splits": {name: {"path": split.path, "examples": len(split.sequences),
                              "per_class": np.bincount(self.labels(name), minlength=len(self.classes)).tolist(),
                              "bases_min": min(map(len, split.sequences)),
                              "bases_max": max(map(len, split.sequences))}
                       for name, split in self.splits.items()},
        }


def _delimiter(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix in (".tsv", ".tab"):
        return "\t"
    header = text.splitlines()[0]
    return "\t" if "\t" in header else ","


def _kmers_to_dna(text: str, where: str) -> str:
    """DNABERT's layout: space-separated overlapping k-mers (ACGTA CGTAC ...) -> the DNA they cover."""
    kmers = text.split()
    if any(len(kmer) != len(kmers[0]) for kmer in kmers) or any(
            a[1:] != b[:-1] for a, b in zip(kmers, kmers[1:])):
        raise DNAVecError(f"{where}: the sequence holds spaces but is not a run of overlapping k-mers of one k "
                          "(DNABERT's layout); give plain DNA text")
    return kmers[0] + "".join(kmer[-1] for kmer in kmers[1:])


def read_split(path: str | os.PathLike, split: str) -> Split:
    """One table (see the module docstring); DNAVecError on anything unreadable."""
    return read_table(path, f"--{split}", split)


def read_table(path: str | os.PathLike, flag: str, split: str, require_label: bool = True) -> Split:
    """A CSV/TSV with a `sequence` column (and `label`, if required): read_split's rules, for any flag."""
    where = f"{flag} {path}"
    file = Path(path)
    if not file.exists():
        raise DNAVecError(f"{where}: no such file")
    if not file.is_file():
        raise DNAVecError(f"{where}: not a file")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DNAVecError(f"{where}: not a text file (expected CSV/TSV in UTF-8)") from None
    except OSError as error:
        raise DNAVecError(f"{where}: cannot read ({error.strerror or error})") from None
    if not text.strip():
        raise DNAVecError(f"{where}: empty file (expected a header row with 'sequence' and 'label', then rows)")
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(file, text))
    written = next(reader)
    header = [column.strip().lower() for column in written]
    needed = ("sequence", "label") if require_label else ("sequence",)
    missing = [column for column in needed if column not in header]
    if missing:
        raise DNAVecError(f"{where}: line 1: no {' and no '.join(repr(m) for m in missing)} column (header: "
                          f"{', '.join(repr(h) for h in header)}); the first row must name a "
                          f"{' and a '.join(repr(n) for n in needed)} column")
    seq_col = header.index("sequence")
    label_col = header.index("label") if require_label else None
    sequences, labels, lines, rows = [], [], [], []
    for row in reader:
        line = reader.line_num
        if not any(field.strip() for field in row):
            continue  # blank line
        if len(row) != len(header):
            raise DNAVecError(f"{path}: line {line}: {len(row)} field(s), the header has {len(header)}")
        sequence = row[seq_col].strip()
        if not sequence:
            raise DNAVecError(f"{path}: line {line}: empty sequence")
        if label_col is not None:
            if not row[label_col].strip():
                raise DNAVecError(f"{path}: line {line}: empty label")
            labels.append(row[label_col].strip())
        if any(c.isspace() for c in sequence):
            sequence = _kmers_to_dna(sequence, f"{path}: line {line}")
        check_dna(sequence, f"{path}: line {line}")
        sequences.append(sequence)
        lines.append(line)
        rows.append(row)
    if not sequences:
        raise DNAVecError(f"{where}: no data rows (only a header)")
    return Split(split, str(path), sequences, labels, lines, written, rows)


def class_order(labels: Sequence[str]) -> list[str]:
    """Distinct labels: integer-like ones in numeric order, otherwise in string order."""
    unique = set(labels)
    if all(re.fullmatch(r"[+-]?\d+", label) for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def load_task(train: str, dev: str, test: str, max_length: int = 0) -> Task:
    """Reads and checks the three tables; classes come from train."""
    if max_length < 0:
        raise DNAVecError(f"--max_length must be >= 0 (0: whole sequences), got {max_length}")
    splits = {name: read_split(path, name) for name, path in zip(SPLITS, (train, dev, test))}
    classes = class_order(splits["train"].labels)
    if len(classes) < 2:
        raise DNAVecError(f"--train {train}: every row has the label {classes[0]!r}; classification needs at "
                          "least two classes")
    known = set(classes)
    for name in ("dev", "test"):
        split = splits[name]
        unseen = [(line, label) for line, label in zip(split.lines, split.labels) if label not in known]
        if unseen:
            line, label = unseen[0]
            more = f"; {len(unseen) - 1} more such row(s)" if len(unseen) > 1 else ""
            raise DNAVecError(f"--{name} {split.path}: line {line}: label {label!r} does not occur in --train (its "
                              f"classes: {', '.join(map(repr, classes[:10]))}){more}")
    return Task(classes, splits, int(max_length))


# ---- tables of predictions --------------------------------------------------------------

def prediction_columns(labels: Sequence[str], prefix: str = "") -> list[str]:
    """`prediction` then `prob_<label>` per class (`<prefix>` before each: classify --predictions all)."""
    return [f"{prefix}{PREDICTION}"] + [f"{prefix}prob_{label}" for label in labels]


def prediction_cells(probs: np.ndarray, labels: Sequence[str]) -> list[list[str]]:
    """Per row: the argmax label, then each probability (8 significant digits)."""
    return [[labels[int(np.argmax(row))], *(f"{p:.8g}" for p in row)] for row in np.asarray(probs, np.float64)]


def check_free_columns(header: Sequence[str], columns: Sequence[str], where: str) -> None:
    taken = sorted(set(header) & set(columns))
    if taken:
        raise DNAVecError(f"{where}: line 1: column {taken[0]!r} is one the predictions add; rename it")


def write_table(handle, header: Sequence[str], rows: Sequence[Sequence[str]],
                blocks: Sequence[tuple[list[str], list[list[str]]]]) -> None:
    """CSV: the input columns, then each (columns, cells) block, row by row."""
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow([*header, *(column for columns, _ in blocks for column in columns)])
    for index, row in enumerate(rows):
        writer.writerow([*row, *(cell for _, cells in blocks for cell in cells[index])])
