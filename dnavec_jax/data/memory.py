"""The in-memory training source (data.source='fasta'): a small genome's examples built at start-up.

The examples are exactly those data prep would write for the same PrepSettings (the same GenomeWorker:
one tokenizer, one masker, the same validation blocks, dupes and chunk seeds; tests/test_data_memory.py
compares them with the shards), held as numpy arrays instead of TFRecord shards: no TensorFlow, no
TFDS, no pyfaidx. For genomes of up to MAX_BASES bases (times dupe_factor); larger ones go through data
prep. docs/data.md ("Training without shards").
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dnavec_jax.data.fasta import DEMO_FASTA, read_in_memory
from dnavec_jax.data.features import BERT_FEATURES
from dnavec_jax.data.pipeline import SPLITS, GenomeWorker, add_stats, empty_stats, plan_jobs
from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.errors import DNAVecError

# Bases (over all dupes) the in-memory source tokenizes at start-up: about 12 bytes a base of int32 and
# float32 features, so ~2.4 GB here and a minute or two of one core. Beyond that, prepare shards once.
MAX_BASES = 200_000_000


@dataclasses.dataclass(frozen=True)
class InMemoryExamples:
    """Each split's examples as arrays of BERT_FEATURES (ids int32, masked_lm_weights float32), in the order
    the shards would hold them, and data prep's statistics (counts, the overlap leak)."""

    splits: dict[str, dict[str, np.ndarray]]
    stats: dict[str, dict[str, int]]
    fasta: tuple[str, ...]  # the files read

    def num_examples(self, split: str) -> int:
        return len(self.splits[split]["input_ids"])


def build_examples(settings: PrepSettings) -> InMemoryExamples:
    """Reads settings.fasta (empty: the embedded chr22 megabase), then tokenizes and masks it as data prep
    does. A bad FASTA, or a genome too large for memory, is a one-line DNAVecError."""
    paths = tuple(settings.fasta) or (str(DEMO_FASTA),)
    records, reader = read_in_memory(paths, settings.chromosomes)
    bases = sum(record.length for record in records) * settings.dupe_factor
    if bases > MAX_BASES:
        raise DNAVecError(f"data.source 'fasta' holds every example in memory: {bases:,} bases (x dupe_factor "
                          f"{settings.dupe_factor}) exceed its {MAX_BASES:,}; prepare TFRecord shards instead "
                          "(python data_prep/prepare_data.py, docs/data.md) and use data.source 'tfrecord'")
    worker = GenomeWorker(settings, (), records, out_dir="", reader=reader)
    parts: dict[str, list[dict[str, np.ndarray]]] = {split: [] for split in SPLITS}
    stats = empty_stats()
    for job in plan_jobs(settings, records):  # the shards' order: dupe, then job, then chunk, then `order`
        for record_index, chunk_index in job.units:
            chunk = worker.chunk_examples(records[record_index], chunk_index, job.dupe)
            add_stats(stats, chunk.stats)
            for split in SPLITS:
                rows = chunk.order[chunk.is_validation[chunk.order] == (split == "validation")]
                if len(rows):
                    parts[split].append(chunk.features(rows))
    splits = {}
    for split, pieces in parts.items():
        if pieces:
            splits[split] = {name: np.concatenate([piece[name] for piece in pieces]) for name in BERT_FEATURES}
        else:
            splits[split] = {name: np.zeros((0, settings.max_predictions if name.startswith("masked_lm")
                                             else settings.seq_length)) for name in BERT_FEATURES}
        # The dtypes the trainer's batches have (batches.FEATURES): int32 ids, float32 weights.
        splits[split] = {name: array.astype(np.float32 if name == "masked_lm_weights" else np.int32)
                         for name, array in splits[split].items()}
    return InMemoryExamples(splits, stats, paths)
