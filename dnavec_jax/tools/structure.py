"""Has a model learned the overlap structure? The copy probe, the neighbour and the attention figures.

Each figure is a pure function of arrays; structure_report runs all of them for
a loaded model on the held-out validation blocks. docs/training.md ("Does the
model learn the overlap structure?") states the figures of the demo.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dnavec_jax import model as model_lib
from dnavec_jax.data import fasta, pipeline
from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.tokenization import NUM_SPECIAL, KmerTokenizer
from dnavec_jax.training import objective
from dnavec_jax.training.objective import copy_probe_batch

NEIGHBOUR_K = 6  # queries: every k-mer of this length (or k_max if shorter)
NEIGHBOUR_TOP = 10  # nearest neighbours per query
SHARED_SUBSTRING = 4  # a neighbour "shares" with the query when both hold a common substring this long


# ---- held-out examples ------------------------------------------------------------------

def validation_examples(settings: PrepSettings) -> np.ndarray:
    """(n, seq_length) int64 ids, before masking, of the validation split data prep writes for these
    settings ([CLS] k-mers [SEP] [PAD]...): data prep's own chunk code, run on the chunks that hold
    held-out blocks only, so it reads no TFRecord and needs no TensorFlow."""
    paths = list(settings.fasta) or [str(fasta.DEMO_FASTA)]
    examples = [np.zeros((0, settings.seq_length), np.int64)]
    with tempfile.TemporaryDirectory(prefix="dnavec_structure_") as work_dir:
        genome = fasta.open_genome(paths, Path(work_dir), settings.chromosomes)
        sources, records = genome.sources, genome.records
        worker = pipeline.GenomeWorker(settings, sources, records, out_dir=work_dir)
        try:
            chunk = settings.chunk_length
            for record in records:
                split = worker.split_of(record)
                blocks = np.flatnonzero(split.held_out)
                chunks = sorted({index for block in blocks
                                 for index in range(block * split.block_size // chunk,
                                                    ((block + 1) * split.block_size - 1) // chunk + 1)})
                for index in chunks:
                    part = worker.chunk_examples(record, index, dupe=0)
                    examples.append(part.true_ids[part.is_validation])
        finally:
            worker.reader.close()
    return np.concatenate(examples)


# ---- the copy probe -------------------------------------------------------------------

# ---- the neighbour figure -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NeighbourFigure:
    ratio: float  # neighbours / random
    neighbours: float  # share of (query, nearest neighbour) pairs sharing a substring
    random: float  # share of (query, any other k-mer) pairs sharing one
    k: int
    top: int


def substring_table(tokenizer: KmerTokenizer, width: int = SHARED_SUBSTRING) -> np.ndarray:
    """(vocab_size, 4**width) bool: which width-mers each k-mer contains (special tokens and shorter
    k-mers: none)."""
    table = np.zeros((tokenizer.vocab_size, 4**width), bool)
    for k in range(max(tokenizer.k_min, width), tokenizer.k_max + 1):
        start = tokenizer.kmer_offset(k)
        codes = np.arange(4**k, dtype=np.int64)
        for offset in range(k - width + 1):
            sub = (codes >> (2 * (k - width - offset))) & (4**width - 1)
            table[start + codes, sub] = True
    return table


def neighbour_figure(embeddings: np.ndarray, tokenizer: KmerTokenizer, k: int = NEIGHBOUR_K,
                     top: int = NEIGHBOUR_TOP, width: int = SHARED_SUBSTRING, block: int = 512) -> NeighbourFigure:
    """How often the nearest input-embedding neighbours of the k-mers of length k share a width-mer
    with them, against every other k-mer of the vocabulary (what random neighbours would give).

    Neighbours: the `top` largest cosine similarities among all k-mers of the vocabulary (what
    `dnavec neighbors` shows), the query left out, ties to the lowest id.
    """
    k = min(k, tokenizer.k_max)
    vectors = np.asarray(embeddings, np.float64)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    contains = substring_table(tokenizer, width).astype(np.float32)
    first, stop = NUM_SPECIAL, tokenizer.vocab_size
    queries = np.arange(tokenizer.kmer_offset(k), tokenizer.kmer_offset(k) + 4**k)
    near_shared = random_shared = 0.0
    for begin in range(0, len(queries), block):
        rows = queries[begin:begin + block]
        similarity = unit[rows] @ unit[first:stop].T
        similarity[np.arange(len(rows)), rows - first] = -np.inf
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :top] + first
        shared = (contains[rows] @ contains[first:stop].T) > 0  # (rows, k-mers)
        shared[np.arange(len(rows)), rows - first] = False
        near_shared += float(np.take_along_axis(shared, nearest - first, axis=1).sum())
        random_shared += float(shared.sum())
    neighbours = near_shared / (len(queries) * top)
    random = random_shared / (len(queries) * (stop - first - 1))
    return NeighbourFigure(neighbours / max(random, 1e-12), neighbours, random, k, top)


# ---- the attention figure --------------------------------------------------------------------

def overlap_neighbours(true_ids, input_mask, kmer_lengths):
    """(batch, queries, keys) float32: 1 where the key is a k-mer sharing a base with the query k-mer,
    the query itself left out (token j covers bases [j, j + k_j), one token per base position)."""
    ids = jnp.asarray(true_ids)
    lengths = jnp.asarray(kmer_lengths)[ids]
    is_kmer = (lengths > 0) & jnp.asarray(input_mask).astype(bool)
    starts = jnp.arange(ids.shape[1])[None, :]
    ends = starts + lengths
    both = is_kmer[:, :, None] & is_kmer[:, None, :]
    overlap = both & (starts[:, None, :] < ends[:, :, None]) & (starts[:, :, None] < ends[:, None, :])
    return (overlap & ~jnp.eye(ids.shape[1], dtype=bool)[None]).astype(jnp.float32)


def overlap_attention_sums(probs, true_ids, input_mask, kmer_lengths, query_weights):
    """(share sums (layers, heads), uniform sum): over the weighted queries, the attention mass on the
    overlapping k-mers, and that mass under uniform attention over the real keys."""
    neighbours = overlap_neighbours(true_ids, input_mask, kmer_lengths)
    weights = jnp.asarray(query_weights, jnp.float32)
    shares = jnp.einsum("lbhqk,bqk,bq->lh", probs, neighbours, weights, preferred_element_type=jnp.float32)
    num_keys = jnp.maximum(jnp.asarray(input_mask).astype(jnp.float32).sum(axis=1), 1.0)
    uniform = jnp.einsum("bq,bq->", neighbours.sum(axis=2) / num_keys[:, None], weights)
    return shares, uniform


# ---- the report ---------------------------------------------------------------------------------

@dataclasses.dataclass
class StructureReport:
    copy_accuracy: float  # full-vocabulary argmax at the isolated [MASK]s
    copy_accuracy_ceiling: float  # of the paper's objective: max over k of P(k)
    copy_accuracy_given_k: float  # argmax over the k-mers of the true length (ceiling 1)
    copy_loss_given_k: float
    neighbours: NeighbourFigure
    attention_ratio: np.ndarray  # (layers, heads) overlap share / uniform share, unmasked windows
    mask_attention_ratio: np.ndarray  # the same at the probe's [MASK] queries
    num_examples: int
    num_probes: int

    def summary(self) -> dict:
        layer, head = np.unravel_index(np.argmax(self.attention_ratio), self.attention_ratio.shape)
        mask_layer, mask_head = np.unravel_index(np.argmax(self.mask_attention_ratio), self.mask_attention_ratio.shape)
        return {
            "copy_accuracy": self.copy_accuracy, "copy_accuracy_ceiling": self.copy_accuracy_ceiling,
            "copy_accuracy_given_k": self.copy_accuracy_given_k, "copy_loss_given_k": self.copy_loss_given_k,
            "neighbour_ratio": self.neighbours.ratio, "neighbour_share": self.neighbours.neighbours,
            "random_share": self.neighbours.random, "neighbour_k": self.neighbours.k,
            "neighbour_top": self.neighbours.top,
            "attention_max_ratio": float(self.attention_ratio.max()),
            "attention_max_head": [int(layer), int(head)],
            "mask_attention_max_ratio": float(self.mask_attention_ratio.max()),
            "mask_attention_max_head": [int(mask_layer), int(mask_head)],
            "attention_ratio": np.round(self.attention_ratio, 3).tolist(),
            "mask_attention_ratio": np.round(self.mask_attention_ratio, 3).tolist(),
            "num_examples": self.num_examples, "num_probes": self.num_probes,
        }


def _batches(array: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Fixed-size batches (the last padded with [PAD] rows) and the number of real rows: one compile."""
    for begin in range(0, len(array), size):
        part = array[begin:begin + size]
        rows = len(part)
        if rows < size:
            part = np.concatenate([part, np.zeros((size - rows, array.shape[1]), array.dtype)])
        yield part, rows


def structure_report(config, params, tokenizer: KmerTokenizer, true_ids: np.ndarray, max_predictions: int,
                     batch_size: int = 32, seed: int = 0) -> StructureReport:
    """The copy probe and the attention figures on `true_ids` (held-out examples), the neighbour figure
    on the input word embeddings. config: model.BertConfig (run in float32)."""
    config = dataclasses.replace(config, dtype="float32", attention_implementation="xla", remat=False)
    lengths = tokenizer.kmer_lengths().astype(np.int32)
    bert = model_lib.BertForMaskedLM(config)

    @jax.jit
    def run(params, probe, plain_ids, plain_mask):
        logits = bert.apply({"params": params}, probe["input_ids"], probe["input_mask"], probe["segment_ids"],
                            probe["masked_lm_positions"])["mlm_logits"]
        sums = objective.eval_sums(logits, probe["masked_lm_ids"], probe["masked_lm_weights"], lengths,
                                   "vocabulary")
        _, probs = model_lib.apply_with_attention(config, params, plain_ids, plain_mask)
        plain = overlap_attention_sums(probs, plain_ids, plain_mask, lengths,
                                       (jnp.asarray(lengths)[plain_ids] > 0) & (plain_mask > 0))
        _, mask_probs = model_lib.apply_with_attention(config, params, probe["input_ids"], probe["input_mask"])
        at_mask = jnp.zeros(probe["input_ids"].shape, jnp.float32)
        rows = jnp.arange(at_mask.shape[0])[:, None]
        at_mask = at_mask.at[rows, probe["masked_lm_positions"]].max(probe["masked_lm_weights"])
        masked = overlap_attention_sums(mask_probs, plain_ids, probe["input_mask"], lengths, at_mask)
        return sums, plain, masked

    totals = {name: 0.0 for name in (*objective.SUM_NAMES, *objective.GIVEN_K_NAMES)}
    layers_heads = (config.num_layers, config.num_heads)
    plain_share, mask_share = np.zeros(layers_heads), np.zeros(layers_heads)
    plain_uniform = mask_uniform = 0.0
    for index, (ids, _) in enumerate(_batches(np.asarray(true_ids, np.int64), batch_size)):
        probe = copy_probe_batch(ids, lengths, max_predictions, seed=seed + index)  # [PAD] rows: no probe
        mask = probe["input_mask"]
        sums, plain, masked = jax.device_get(run(params, probe, ids.astype(np.int32), mask))
        for name in totals:
            totals[name] += float(sums[name])
        plain_share += plain[0]
        plain_uniform += float(plain[1])
        mask_share += masked[0]
        mask_uniform += float(masked[1])
    weight = max(totals["weight"], 1.0)
    embeddings = np.asarray(params["embeddings"]["word_embeddings"]["embedding"])[: config.vocab_size]
    return StructureReport(
        copy_accuracy=totals["correct"] / weight,
        copy_accuracy_ceiling=objective.copy_ceiling(tokenizer, "vocabulary").accuracy,
        copy_accuracy_given_k=totals["correct_given_k"] / weight,
        copy_loss_given_k=totals["loss_sum_given_k"] / weight,
        neighbours=neighbour_figure(embeddings, tokenizer),
        attention_ratio=plain_share / max(plain_uniform, 1e-12),
        mask_attention_ratio=mask_share / max(mask_uniform, 1e-12),
        num_examples=len(true_ids), num_probes=int(totals["weight"]),
    )
