"""Finding a prepared dataset on disk (no TensorFlow, no TFDS import).

A prepared dataset is a TFDS version directory
`DATA_DIR/dna_kmer_mlm/<config>/<version>/` holding dataset_info.json,
metadata.json (ours: settings, counts, leak figure), vocab.txt and the TFRecord
shards `dna_kmer_mlm-{train,validation}.tfrecord-XXXXX-of-YYYYY`. TFDS writes
it under a `*.incomplete*` name and renames it when complete, so those
directories never count.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from dnavec_jax.data import storage
from dnavec_jax.errors import DNAVecError

DATASET_NAME = "dna_kmer_mlm"
METADATA_FILE = "metadata.json"
DATASET_INFO_FILE = "dataset_info.json"
VOCAB_FILE = "vocab.txt"
FORMAT = "dnavec-kmer-mlm"
PREPARE_HINT = "prepare it with `python data_prep/prepare_data.py --data_dir DIR`"


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    path: Path  # the TFDS version directory
    metadata: dict[str, Any]

    def files(self, split: str) -> list[str]:
        """Sorted absolute shard paths of a split (empty if the split has no examples)."""
        names = self.metadata["files"].get(split, [])
        return sorted(str(self.path / name) for name in names)

    def num_examples(self, split: str) -> int:
        return int(self.metadata["num_examples"].get(split, 0))

    @property
    def vocab_file(self) -> Path:
        return self.path / VOCAB_FILE


def _is_incomplete(path: Path) -> bool:
    # TFDS writes the version directory as `incomplete.XXXXXX_<version>` (older releases:
    # `<version>.incompleteXXXX`) and renames it when done. Only that name counts: the word
    # elsewhere in the path (e.g. /data/incomplete_genomes/...) says nothing about the dataset.
    return "incomplete" in path.name


def read_complete(version_dir: Path) -> PreparedDataset | None:
    """The dataset in a version directory, or None if it is not a complete prepared dataset."""
    if _is_incomplete(version_dir):
        return None
    metadata_path = version_dir / METADATA_FILE
    if not (version_dir / DATASET_INFO_FILE).is_file() or not metadata_path.is_file():
        return None
    try:
        metadata = json.loads(metadata_path.read_text())
    except (OSError, ValueError):
        return None
    if metadata.get("format") != FORMAT:
        return None
    dataset = PreparedDataset(version_dir, metadata)
    names = [name for split in metadata.get("files", {}) for name in metadata["files"][split]]
    try:
        present = {path.name for path in version_dir.iterdir()}  # one listing, also on an object store
    except OSError:
        return None
    if not names or not set(names) <= present or VOCAB_FILE not in present:
        return None
    return dataset


def find_prepared(data_dir: str | os.PathLike) -> list[PreparedDataset]:
    """Every complete prepared dataset at or below data_dir (at most 3 levels down; data_dir may be a URL)."""
    root = storage.as_path(data_dir)
    if not root.is_dir():
        return []
    found = []
    candidates = [root]
    for _ in range(3):  # data_dir, data_dir/dataset, data_dir/dataset/config
        next_level = []
        for directory in candidates:
            dataset = read_complete(directory)
            if dataset is not None:
                found.append(dataset)
                continue
            try:
                next_level.extend(
                    child for child in sorted(directory.iterdir())
                    if child.is_dir() and "incomplete" not in child.name and not child.name.startswith(".")
                )
            except OSError:
                continue
        candidates = next_level
    for directory in candidates:
        dataset = read_complete(directory)
        if dataset is not None:
            found.append(dataset)
    return found


def load_prepared(data_dir: str | os.PathLike) -> PreparedDataset:
    """The one complete prepared dataset under data_dir (the version dir itself or a parent of it)."""
    datasets = find_prepared(data_dir)
    if not datasets:
        what = "does not exist" if not storage.as_path(data_dir).exists() else "holds no complete prepared dataset"
        raise DNAVecError(
            f"{data_dir}: {what}; prepare it with `python data_prep/prepare_data.py --data_dir {data_dir}`"
        )
    if len(datasets) > 1:
        listed = ", ".join(str(d.path) for d in datasets[:4]) + (", ..." if len(datasets) > 4 else "")
        raise DNAVecError(
            f"{data_dir}: holds {len(datasets)} prepared datasets ({listed}); pass the one to use as the data dir"
        )
    check_shard_sizes(datasets[0])
    return datasets[0]


def check_shard_sizes(dataset: PreparedDataset) -> None:
    """Every shard has the size it was written with (catches a file cut at a record boundary)."""
    recorded = dataset.metadata.get("shard_bytes")
    if not recorded:  # datasets written before the sizes were recorded
        return
    for split, sizes in recorded.items():
        for name, size in zip(dataset.metadata["files"][split], sizes):
            path = dataset.path / name
            actual = storage.size(path)
            if actual != size:
                what = "training" if split == "train" else split  # as the input pipeline says it
                raise DNAVecError(
                    f"{path}: damaged {what} shard: {actual:,} bytes, but {size:,} were written; "
                    f"delete {dataset.path} and prepare it again"
                )
