"""The settings of the `dnavec` tools: one frozen dataclass per command, each flag's default and help once.

cli.py generates each command's flags from these (fields.add_arguments), builds the dataclass once
(fields.from_args) and passes it to the tool's run function; nothing below reads argparse. `dnavec
classify`'s settings live in tools/classify/settings.py. Cheap to import (no JAX): `dnavec --help` loads
it. A bad value is a one-line DNAVecError when the settings are built, before any work.
"""

from __future__ import annotations

import dataclasses

from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.errors import DNAVecError
from dnavec_jax.fields import setting

VECTOR_KINDS = ("input", "contextual")
INFERENCE_DTYPES = ("float32", "bfloat16")  # the compute dtypes the tools offer (loaded_model.inference_config)
EMBED_FORMATS = ("npz", "shards")


def check_at_least_one(settings, names: tuple[str, ...]) -> None:
    """--NAME must be at least 1, for each of `names`."""
    for name in names:
        if getattr(settings, name) < 1:
            raise DNAVecError(f"--{name} must be at least 1, got {getattr(settings, name)}")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """--model and --step, first in every tool that reads a trained model."""

    model: str = setting("", "a training run directory (latest checkpoint) or an exported Hugging Face directory",
                         required=True)
    step: int | None = setting(None, "checkpoint step of a run directory (default: latest)", parse=int)


@dataclasses.dataclass(frozen=True)
class VectorsSettings(ModelSettings):
    output_dir: str = setting("", "directory to create (must be absent or empty)", required=True)
    kind: str = setting("both", "which vectors to write (default both)", choices=("both", *VECTOR_KINDS))
    batch_size: int = setting(512, "tokens per jitted batch (contextual)")
    overwrite: bool = setting(False, "replace a non-empty --output_dir", switch=True)

    @property
    def kinds(self) -> tuple[str, ...]:
        return VECTOR_KINDS if self.kind == "both" else (self.kind,)


@dataclasses.dataclass(frozen=True)
class NeighborsSettings(ModelSettings):
    kmer: str = setting("", "A/C/G/T k-mer with k in the model's range", required=True)
    top: int = setting(10, "how many neighbours to print")
    kind: str = setting("input", "input word embeddings (default) or contextual vectors of lone k-mers",
                        choices=VECTOR_KINDS)
    batch_size: int = setting(512, "tokens per jitted batch (contextual)")

    def __post_init__(self):
        check_at_least_one(self, ("top",))


@dataclasses.dataclass(frozen=True)
class EmbedSettings(ModelSettings):
    fasta: str = setting("", "FASTA(.gz) file; every record is embedded", required=True)
    output: str = setting("", "output .npz", required=True)
    k: str = setting("default", "tokenization: an integer k (every k-mer), 'random' (one random k per position, as "
                                "in training) or 'default': the middle k of the model's range, rounded down, which "
                                "embedded best in docs/outputs.md")
    seed: int = setting(0, "tokenization seed (--k random)")
    num_tokenizations: int = setting(1, "average over this many seeded tokenizations per record (--k random)")
    per_token: bool = setting(False, "also store every token's vector (flat arrays + per-record offsets)",
                              switch=True)
    batch_size: int = setting(64, "windows per jitted batch")
    dtype: str = setting("float32", "compute dtype: float32 (default), or bfloat16 on a GPU or TPU",
                         choices=INFERENCE_DTYPES)
    format: str = setting("npz", "npz: one .npz written at the end (default); shards: --output is a directory of "
                                 ".npy shards and index.json, written as the run goes, renamed into place when "
                                 "done (any input size, --resume)", choices=EMBED_FORMATS)
    resume: bool = setting(False, "--format shards: continue the interrupted run of the same command from its "
                                  "last finished shard", switch=True)
    overwrite: bool = setting(False, "replace an existing --output", switch=True)
    shard_bytes: int = setting(256 << 20, "--format shards: a shard is written once its arrays hold this many "
                                          "bytes", flag=False)

    def __post_init__(self):
        if self.shard_bytes < 1:
            raise DNAVecError(f"shard_bytes must be positive, got {self.shard_bytes}")


@dataclasses.dataclass(frozen=True)
class TfidfSettings:
    """tf-idf over a genome; its tokenization flags are data prep's (defaults from PrepSettings), in tf-idf's terms."""

    fasta: tuple[str, ...] = setting((), "FASTA(.gz) file; repeat for several files", required=True, repeated=True)
    output_dir: str = setting("", "", required=True)
    chromosomes: str = setting(PrepSettings.chromosomes, "records to use, as in data prep: '%(default)s' (default), "
                                                         "'all' or a comma list")
    k_min: int = setting(PrepSettings.k_min, "")
    k_max: int = setting(PrepSettings.k_max, "")
    seq_length: int = setting(PrepSettings.seq_length,
                              "example length of data prep: a document holds up to seq_length-2 k-mer tokens")
    seed: int = setting(PrepSettings.seed, "tokenization seed (as data prep's) and word-cloud layout")
    min_contig_length: int = setting(PrepSettings.min_contig_length,
                                     "shorter A/C/G/T runs are skipped, as in data prep")
    top: int = setting(100, "k-mers in the CSV and the word cloud")
    overwrite: bool = setting(False, "replace earlier outputs in --output_dir", switch=True)

    def __post_init__(self):
        check_at_least_one(self, ("top",))


# The tf-idf flags that are data prep's settings.
TFIDF_PREP_FLAGS = ("chromosomes", "k_min", "k_max", "seq_length", "seed", "min_contig_length")


@dataclasses.dataclass(frozen=True)
class AttentionSettings(ModelSettings):
    fasta: tuple[str, ...] = setting((), "FASTA(.gz) file; repeat for several files", required=True, repeated=True)
    output_dir: str = setting("", "", required=True)
    chromosomes: str = setting("all", "records to draw windows from: 'all' (default), 'chr1-22' or a comma list")
    num_sequences: int = setting(256, "windows drawn at random (seeded)")
    seed: int = setting(0, "window choice and tokenization seed")
    batch_size: int = setting(8, "windows per forward pass")
    top_tfidf: int = setting(100, "N of the top-N tf-idf k-mer category")
    tfidf_csv: str | None = setting(None, "tfidf_top.csv of `dnavec tfidf` (default: compute tf-idf on --fasta)",
                                    parse=str)
    html_record: str | None = setting(None, "FASTA record whose first window is rendered as bertviz HTML (needs "
                                            "torch, bertviz)", parse=str)
    html_tokens: int = setting(64, "k-mers of that window shown in the HTML")
    overwrite: bool = setting(False, "replace earlier outputs in --output_dir", switch=True)

    def __post_init__(self):
        check_at_least_one(self, ("num_sequences", "batch_size", "top_tfidf", "html_tokens"))


@dataclasses.dataclass(frozen=True)
class PredictSettings:
    model: str = setting("", "a classifier directory (OUT/classifier of dnavec classify)", required=True)
    input: str = setting("", "CSV/TSV with a header naming a 'sequence' column (others kept), or FASTA(.gz)",
                         required=True)
    output: str = setting("", "output CSV", required=True)
    batch_size: int = setting(64, "windows per jitted batch")
    dtype: str = setting("float32", "compute dtype: float32 (default), or bfloat16 on a GPU or TPU",
                         choices=INFERENCE_DTYPES)
    overwrite: bool = setting(False, "replace an existing --output", switch=True)

    def __post_init__(self):
        if self.batch_size < 1:
            raise DNAVecError(f"--batch_size must be positive, got {self.batch_size}")
