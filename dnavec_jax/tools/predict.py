"""`dnavec predict`: class probabilities of a `dnavec classify` classifier for CSV or FASTA input, by the
classifier's one rule (tools/classify/classifier.py; docs/classify.md)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dnavec_jax import files
from dnavec_jax.data.fasta import fasta_records
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tools.classify.classifier import Predictor, load_classifier
from dnavec_jax.tools.classify.tables import (
    check_free_columns,
    prediction_cells,
    prediction_columns,
    read_table,
    write_table,
)
from dnavec_jax.tools.settings import PredictSettings

# ---- dnavec predict ------------------------------------------------------------------------

def _is_fasta(path: Path) -> bool:
    """FASTA(.gz) by content: gzip data, or a first non-blank line starting with '>' or ';'."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith(b"\x1f\x8b"):
        return True
    text = head.lstrip()
    return text.startswith((b">", b";"))


def run_predict(settings: PredictSettings) -> int:
    """`dnavec predict`."""
    output = files.check_output_file(settings.output, "--output", settings.overwrite)
    source = Path(settings.input)
    if not source.is_file():
        raise DNAVecError(f"--input {source}: no such file")
    fasta = _is_fasta(source)
    if not fasta:  # read and checked before the model loads: a mistake in the table fails fast
        table = read_table(source, "--input", "input", require_label=False)
    classifier = load_classifier(settings.model)
    columns = prediction_columns(classifier.labels)
    if not fasta:
        check_free_columns(table.header, columns, str(source))
    predictor = Predictor(classifier, settings.batch_size, settings.dtype)
    progress = sys.stderr.isatty()
    started = time.perf_counter()
    if fasta:
        with tempfile.TemporaryDirectory(prefix="dnavec_predict_") as work_dir:
            index, records = fasta_records(str(source), Path(work_dir))
            probs = predictor.probabilities(records, len(index), progress)
        header, rows = ["id"], [[name] for name, _ in index]
    else:
        probs = predictor.probabilities(zip(table.row_names(), table.sequences), len(table.sequences), progress)
        header, rows = table.header, table.rows
    seconds = time.perf_counter() - started
    files.write_atomic(output, lambda handle: write_table(handle, header, rows,
                                                    [(columns, prediction_cells(probs, classifier.labels))]),
                 binary=False)
    counts = np.bincount(probs.argmax(axis=1), minlength=len(classifier.labels))
    print(f"predicted {len(rows):,} sequences ({predictor.windows:,} windows) with {classifier.loaded.source} in "
          f"{seconds:.1f}s: " + ", ".join(f"{label} {count:,}" for label, count in zip(classifier.labels, counts))
          + f" -> {output}")
    return 0
