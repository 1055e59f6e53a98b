"""Data-prep settings: one frozen dataclass, validated, hashed into the dataset's config name.

Cheap to import (numpy and the tokenizer only): the trainer builds PrepSettings
from its config without loading TensorFlow Datasets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from dnavec_jax.errors import DNAVecError
from dnavec_jax.fields import setting
from dnavec_jax.tokenization import KmerTokenizer, validate_k_range

MASK_STRATEGIES = ("token", "span")
SOFT_MASKED_MODES = ("upper", "drop")
# "chr1-22", "1-22", "chr3-5": a range of numbered autosomes (region suffixes and the chr prefix ignored).
_RANGE_RE = re.compile(r"^(?:chr)?(\d+)-(\d+)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class PrepSettings:
    """Everything that decides the content of a prepared dataset (and nothing else).

    Worker count and progress display are not settings: they do not change a byte
    of the output.
    """

    fasta: tuple[str, ...] = setting((), "FASTA or FASTA.gz files of the genome; empty: the embedded 1 Mbp chr22 "
                                         "demo corpus", flag=False)
    chromosomes: str = setting("chr1-22", "'chr1-22', 'all', or comma-separated record names (chr1, 1 and "
                                          "1:1-100 match)")
    k_min: int = setting(3, "shortest k-mer")
    k_max: int = setting(8, "longest k-mer")
    k_weights: tuple[float, ...] | None = setting(None, "comma-separated relative probabilities of k = k_min..k_max "
                                                        "(default: uniform)")
    seq_length: int = setting(512, "tokens per example including [CLS] and [SEP]")
    mask_rate: float = setting(0.15, "share of the k-mer tokens masked")
    max_predictions: int = setting(77, "masked positions per example at most (ceil(0.15 * 512))")
    mask_strategy: str = setting("token", "token: BERT's (the paper's); span: runs of mask_span tokens, which "
                                          "hide most of the overlap leak (docs/data.md)", choices=MASK_STRATEGIES)
    mask_span: int = setting(6, "tokens per masked run with mask_strategy span")
    dupe_factor: int = setting(1, "differently tokenized and masked copies of the training split")
    seed: int = setting(0, "tokenization, masking and validation-block seed")
    soft_masked: str = setting("upper", "lower-case (soft-masked) bases: 'upper' keeps them, 'drop' treats them "
                                        "like N", choices=SOFT_MASKED_MODES)
    min_contig_length: int = setting(64, "ACGT runs shorter than this are skipped (and counted)")
    validation_fraction: float = setting(0.01, "share of validation_block_size blocks held out for validation "
                                               "(at least one per record of two blocks or more)")
    validation_block_size: int = setting(100_000, "bases per held-out block")
    chunk_bases: int = setting(1_000_000, "streaming and RNG unit in bases (rounded down to whole examples)")
    shard_bases: int = setting(16_000_000, "genome bases per training shard file (per dupe)")

    # ---- construction -----------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PrepSettings:
        """Builds settings from a plain dict (e.g. a ConfigDict's to_dict()); unknown keys are an error."""
        known = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise DNAVecError(
                f"unknown data-prep setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        converted = {}
        for name, value in values.items():
            default = known[name].default
            converted[name] = _convert(name, value, default)
        settings = cls(**converted)
        settings.validate()
        return settings

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["fasta"] = list(self.fasta)
        out["k_weights"] = None if self.k_weights is None else list(self.k_weights)
        return out

    def replace(self, **changes) -> PrepSettings:
        return dataclasses.replace(self, **changes)

    # ---- checks -----------------------------------------------------------
    def validate(self) -> None:
        """Raises DNAVecError (one line, naming the setting) for unusable settings."""
        try:
            validate_k_range(self.k_min, self.k_max)
            self.tokenizer()
        except ValueError as error:
            raise DNAVecError(f"invalid k settings: {error}") from None
        if self.seq_length < 3:
            raise DNAVecError(f"seq_length must be at least 3 ([CLS], one k-mer, [SEP]), got {self.seq_length}")
        if not 0.0 < self.mask_rate < 1.0:
            raise DNAVecError(f"mask_rate must lie strictly between 0 and 1, got {self.mask_rate}")
        if not 1 <= self.max_predictions <= self.seq_length - 2:
            raise DNAVecError(
                f"max_predictions must lie in 1..seq_length-2 ({self.seq_length - 2}), got {self.max_predictions}"
            )
        if self.mask_strategy not in MASK_STRATEGIES:
            raise DNAVecError(f"mask_strategy must be one of {', '.join(MASK_STRATEGIES)}, got {self.mask_strategy!r}")
        if not 1 <= self.mask_span <= self.seq_length - 2:
            raise DNAVecError(f"mask_span must lie in 1..seq_length-2, got {self.mask_span}")
        if self.dupe_factor < 1:
            raise DNAVecError(f"dupe_factor must be at least 1, got {self.dupe_factor}")
        if self.seed < 0:
            raise DNAVecError(f"seed must be a non-negative integer, got {self.seed}")
        if self.soft_masked not in SOFT_MASKED_MODES:
            raise DNAVecError(
                f"soft_masked must be one of {', '.join(SOFT_MASKED_MODES)}, got {self.soft_masked!r}"
            )
        if self.min_contig_length < self.k_min:
            raise DNAVecError(
                f"min_contig_length must be at least k_min ({self.k_min}), got {self.min_contig_length}"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise DNAVecError(f"validation_fraction must lie in [0, 1), got {self.validation_fraction}")
        if self.validation_block_size < 1:
            raise DNAVecError(f"validation_block_size must be positive, got {self.validation_block_size}")
        if self.chunk_bases < max(1_000, self.seq_length - 2):
            raise DNAVecError(f"chunk_bases must be at least max(1000, seq_length-2), got {self.chunk_bases}")
        if self.shard_bases < self.chunk_bases:
            raise DNAVecError(f"shard_bases ({self.shard_bases}) must be at least chunk_bases ({self.chunk_bases})")
        parse_chromosome_selection(self.chromosomes)
        for path in self.fasta:
            if not isinstance(path, str) or not path:
                raise DNAVecError(f"fasta entries must be non-empty paths, got {path!r}")

    # ---- derived values ---------------------------------------------------
    def tokenizer(self) -> KmerTokenizer:
        return KmerTokenizer(self.k_min, self.k_max, self.k_weights)

    @property
    def tokens_per_example(self) -> int:
        return self.seq_length - 2

    @property
    def chunk_length(self) -> int:
        """Chunk length in bases: a whole number of example lengths, so chunks never cut an example."""
        per_example = self.tokens_per_example
        return per_example * max(1, self.chunk_bases // per_example)

    @property
    def effective_mask_span(self) -> int:
        return self.mask_span if self.mask_strategy == "span" else 1

    def fingerprint(self) -> str:
        """Short hash of every setting: two datasets with the same fingerprint hold the same examples."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def config_name(self) -> str:
        """TFDS config name: readable settings plus the fingerprint."""
        strategy = "token" if self.mask_strategy == "token" else f"span{self.mask_span}"
        return f"{strategy}_k{self.k_min}_{self.k_max}_len{self.seq_length}_{self.fingerprint()}"


def parse_k_weights(text: str) -> tuple[float, ...]:
    """A --k_weights flag: comma-separated numbers."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DNAVecError(f"--k_weights must be comma-separated numbers, got {text!r}") from None


def _convert(name: str, value: Any, default: Any) -> Any:
    """Coerces plain-dict values (lists, numpy scalars, ints given for floats) to the field's type."""
    if name == "fasta":
        if isinstance(value, str):
            value = [value] if value else []
        if not isinstance(value, Sequence):
            raise DNAVecError(f"fasta must be a path or a list of paths, got {value!r}")
        return tuple(str(v) for v in value)
    if name == "chromosomes":
        if isinstance(value, str):
            return value
        if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
            if not value:
                raise DNAVecError("chromosomes is empty; use 'chr1-22', 'all' or a list of record names")
            return ",".join(value)
        raise DNAVecError(f"chromosomes must be 'chr1-22', 'all' or a list of names, got {value!r}")
    if name == "k_weights":
        if value is None:
            return None
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise DNAVecError(f"k_weights must be a list of numbers or None, got {value!r}") from None
    if isinstance(default, bool) or isinstance(default, str):
        if not isinstance(value, type(default)):
            raise DNAVecError(f"{name} must be a {type(default).__name__}, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not float(value).is_integer():
            raise DNAVecError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DNAVecError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise DNAVecError(f"{name} must be finite, got {value!r}")
        return number
    return value


# ---- chromosome selection --------------------------------------------------
def canonical_chromosome(name: str) -> str:
    """'chr22', '22', 'CHR22' and '22:20000001-21000000' all give '22'; 'chrM' and 'MT' give 'MT'."""
    base = re.sub(r":\d+-\d+$", "", name)
    if base[:3].lower() == "chr":
        base = base[3:]
    if base.upper() in ("M", "MT"):
        return "MT"
    return base


def parse_chromosome_selection(selection: str) -> frozenset[str] | None:
    """The canonical names a selection keeps, or None for 'all'.

    A selection is 'all', or comma-separated items: a range 'chrA-B' / 'A-B' of
    numbered chromosomes, or a record name (matched after canonical_chromosome,
    so chr1, 1 and 1:1-1000 are the same chromosome).
    """
    if not isinstance(selection, str) or not selection.strip():
        raise DNAVecError("chromosomes is empty; use 'chr1-22', 'all' or a comma-separated list of record names")
    if selection.strip().lower() == "all":
        return None
    keep: set[str] = set()
    for item in (part.strip() for part in selection.split(",")):
        if not item:
            raise DNAVecError(f"chromosomes {selection!r} has an empty item")
        match = _RANGE_RE.match(item)
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            if low > high:
                raise DNAVecError(f"chromosome range {item!r} is empty (start above end)")
            keep.update(str(number) for number in range(low, high + 1))
        else:
            keep.add(canonical_chromosome(item))
    return frozenset(keep)


def record_selected(name: str, selection: frozenset[str] | None) -> bool:
    """True if a FASTA record name falls in a parsed selection.

    The canonical form drops only a region suffix and the chr prefix, so
    chr1_KI270706v1_random, chrUn_*, *_alt and *_fix never equal '1'..'22'.
    """
    return selection is None or canonical_chromosome(name) in selection
