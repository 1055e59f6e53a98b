"""The MLM objective (the paper's softmax over the vocabulary, or length-aware), what it allows, the copy probe.

The loss sums run inside the jitted steps (a cross-entropy with its own gradient: no float32
logits-sized buffer kept for the backward pass, no logits-sized scatter); the ceiling and loss floor
come from the hidden k and BERT's 80/10/10 mix; the copy probe masks isolated tokens whose bases all
show in their neighbours. docs/training.md
("The GPU path", "What the objective allows").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dnavec_jax.data.masking import MASK_TOKEN_FRACTION, RANDOM_TOKEN_FRACTION
from dnavec_jax.tokenization import MASK_ID, PAD_ID, KmerTokenizer

# "vocabulary": cross-entropy over the whole vocabulary (the paper's, BERT's);
# "length_aware": cross-entropy over the k-mers of the target's length only, so the
# k hidden at a [MASK] is no longer part of what the model must guess.
OBJECTIVES = ("vocabulary", "length_aware")
SUM_NAMES = ("loss_sum", "correct", "weight", "accuracy_weight")
GIVEN_K_NAMES = ("loss_sum_given_k", "correct_given_k")


# ---- the loss -----------------------------------------------------------------------

def length_ranges(length_of) -> list[tuple[int, int]]:
    """[start, stop) of the ids of each k-mer length, shortest first: the vocabulary keeps each length
    contiguous (tokenization.py). length_of: numpy (vocab,) k per id, 0 for special tokens."""
    length_of = np.asarray(length_of)
    ranges = []
    for k in np.unique(length_of[length_of > 0]):
        ids = np.flatnonzero(length_of == k)
        if ids[-1] - ids[0] + 1 != len(ids):
            raise ValueError(f"the ids of length {k} are not contiguous")
        ranges.append((int(ids[0]), int(ids[-1]) + 1))
    return ranges


def _label_logit(logits, labels):
    """The label's logit, picked by comparing with an iota (a fused one-hot): its gradient is elementwise,
    not a scatter into a logits-sized buffer as take_along_axis's would be."""
    return jnp.sum(jnp.where(jnp.arange(logits.shape[-1]) == labels[..., None], logits, 0.0), axis=-1)


def _in_range(width: int, lo, hi):
    """(..., width) bool: lo <= id < hi, per slot."""
    ids = jnp.arange(width)
    return (ids >= lo[..., None]) & (ids < hi[..., None])


@jax.custom_vjp
def _cross_entropy(logits, labels, lo, hi):
    return _cross_entropy_fwd(logits, labels, lo, hi)[0]


def _cross_entropy_fwd(logits, labels, lo, hi):
    # The float32 upcast feeds the two reductions directly: no float32 copy of the logits is kept.
    x = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(jnp.where(_in_range(x.shape[-1], lo, hi), x, -jnp.inf), axis=-1)
    # Saved for the backward pass: the logits in their own dtype (bf16 under a bf16 model) and one float32
    # log-normaliser per slot. Plain autodiff would save the float32 exp and the one-hot select, each a
    # float32 (slots x vocabulary) buffer (6.4 GiB apiece for base at batch 256).
    return log_z - _label_logit(x, labels), (logits, labels, lo, hi, log_z)


def _cross_entropy_bwd(residuals, g):
    logits, labels, lo, hi, log_z = residuals
    width = logits.shape[-1]
    # softmax - one_hot, recomputed from the saved logits in one elementwise pass, in float32 inside the
    # fusion and written in the logits' dtype.
    probs = jnp.where(_in_range(width, lo, hi), jnp.exp(logits.astype(jnp.float32) - log_z[..., None]), 0.0)
    one_hot = jnp.arange(width) == labels[..., None]
    grad = (probs - one_hot) * g[..., None]
    return grad.astype(logits.dtype), None, None, None  # labels and the ranges are integers: no gradient


_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def cross_entropy(logits: jax.Array, labels: jax.Array, lo=None, hi=None) -> jax.Array:
    """-log softmax(logits)[label] per slot, float32, from logits of any float dtype.

    lo, hi (int arrays of labels' shape): the softmax runs over the ids lo <= id < hi of each slot only
    (the length-aware objective); None: over the whole vocabulary. A custom gradient: what the backward
    pass keeps is the logits in their own dtype plus one float32 log-sum-exp per slot, never a float32
    logits-sized buffer (tests/test_objective.py checks the saved residuals of the base model's bf16 loss).
    """
    labels = jnp.asarray(labels)
    if lo is None:
        lo = jnp.zeros(labels.shape, jnp.int32)
        hi = jnp.full(labels.shape, logits.shape[-1], jnp.int32)
    return _cross_entropy(logits, labels, lo, hi)


def label_length_ranges(labels, length_of) -> tuple[jax.Array, jax.Array]:
    """(lo, hi) per slot: the id range of the label's k-mer length; padding slots (label [PAD], length 0)
    get the shortest range (their weight is 0)."""
    ranges = length_ranges(length_of)
    starts = jnp.asarray([a for a, _ in ranges], jnp.int32)
    stops = jnp.asarray([b for _, b in ranges], jnp.int32)
    k_min = int(np.asarray(length_of)[ranges[0][0]])
    which = jnp.clip(jnp.asarray(length_of)[labels] - k_min, 0, len(ranges) - 1)
    return starts[which], stops[which]


def mlm_sums(logits, labels, weights, with_accuracy: bool | jax.Array = True, length_of=None) -> dict:
    """loss_sum, correct, weight and accuracy_weight over the masked slots (weights = masked_lm_weights).

    length_of None: the paper's objective, softmax and argmax over the whole vocabulary.
    length_of (numpy, k per id) given: softmax and argmax over the ids of the label's length only.
    with_accuracy (a traced bool in the train step): False skips the argmax pass over the logits;
    correct and accuracy_weight are then 0. Argmax ties go to the lowest id (as numpy/torch argmax).
    """
    weights = weights.astype(jnp.float32)
    real = weights > 0
    if length_of is None:
        ce = cross_entropy(logits, labels)

        def predicted():
            return jnp.argmax(logits, axis=-1)
    else:
        lo, hi = label_length_ranges(labels, length_of)
        ce = cross_entropy(logits, labels, lo, hi)

        def predicted():  # the argmax within the label's length
            return jnp.argmax(jnp.where(_in_range(logits.shape[-1], lo, hi), logits, -jnp.inf), axis=-1)

    def correct() -> jax.Array:
        hits = (predicted() == labels).astype(jnp.float32)
        return jnp.sum(jnp.where(real, hits * weights, 0.0))

    weight = jnp.sum(weights)
    if isinstance(with_accuracy, bool):
        correct_sum, accuracy_weight = (correct(), weight) if with_accuracy else (jnp.float32(0), jnp.float32(0))
    else:
        correct_sum = jax.lax.cond(with_accuracy, correct, lambda: jnp.float32(0))
        accuracy_weight = jnp.where(with_accuracy, weight, 0.0)
    return {
        # where(): padding slots contribute exactly 0 even if their logits were not finite.
        "loss_sum": jnp.sum(jnp.where(real, ce * weights, 0.0)),
        "correct": correct_sum,
        "weight": weight,
        "accuracy_weight": accuracy_weight,
    }


def eval_sums(logits, labels, weights, length_of, objective: str) -> dict:
    """mlm_sums of the objective plus loss_sum_given_k / correct_given_k (the length-aware sums):
    those compare models trained with either objective, since both can be read given the true k."""
    given_k = mlm_sums(logits, labels, weights, length_of=length_of)
    sums = given_k if objective == "length_aware" else mlm_sums(logits, labels, weights)
    return {**sums, "loss_sum_given_k": given_k["loss_sum"], "correct_given_k": given_k["correct"]}


def sums_fns(objective: str, tokenizer: KmerTokenizer):
    """(train sums, eval sums) for the train and eval steps; train sums take (logits, labels, weights,
    with_accuracy) and return SUM_NAMES."""
    length_of = tokenizer.kmer_lengths().astype(np.int32)
    train_length = length_of if objective == "length_aware" else None

    def train_sums(logits, labels, weights, with_accuracy=True):
        return mlm_sums(logits, labels, weights, with_accuracy, train_length)

    def evaluation_sums(logits, labels, weights):
        return eval_sums(logits, labels, weights, length_of, objective)

    return train_sums, evaluation_sums


# ---- what the objective allows --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Ceiling:
    """The best a model that could read every base of the example could do: what is left is the hidden k."""

    accuracy: float  # the accuracy ceiling
    loss: float  # the loss floor, nats per masked token


def target_k_probs(tokenizer: KmerTokenizer) -> np.ndarray:
    """Probability of each length k_min..k_max for a masked target: the per-position k distribution,
    since masking picks positions without looking at k (clipping at contig ends is left out: a few tokens
    per contig)."""
    if tokenizer.k_probs is None:
        return np.full(len(tokenizer.k_values), 1.0 / len(tokenizer.k_values))
    return np.asarray(tokenizer.k_probs, np.float64)


def ceiling(k_probs: Sequence[float], num_kmer_ids: int, objective: str = "vocabulary",
            mask_fraction: float = MASK_TOKEN_FRACTION, random_fraction: float = RANDOM_TOKEN_FRACTION) -> Ceiling:
    """Accuracy ceiling and loss floor of the objective for targets masked with BERT's mix.

    k_probs: probability of each length of the vocabulary (zeros allowed); num_kmer_ids: the
    number of k-mer ids, from which random replacements are drawn uniformly.

    A model that knows every base still does not know k where the input hides it. With the
    vocabulary objective (a = mask_fraction, b = random_fraction, c = 1 - a - b, p = k_probs,
    V = num_kmer_ids, L = number of lengths):
      [MASK] (a), or a random id that does not match the bases (b (1 - L/V)): k is anyone's
        guess, posterior p: accuracy max p, loss H(p);
      the input shows the m-mer that matches the bases: kept unchanged with k = m (c p_m), or a
        random id that happens to match (b / V, the true k still ~ p): joint
        J(m, k) = c p_m [k = m] + (b / V) p_k; the best guess is argmax_k J(m, k), the loss the
        conditional entropy.
    The length-aware objective is told k, so a base-reading model is always right: 1 and 0.
    """
    if objective == "length_aware":
        return Ceiling(1.0, 0.0)
    p = np.asarray(k_probs, np.float64)
    p = p / p.sum()
    a, b = float(mask_fraction), float(random_fraction)
    c = 1.0 - a - b
    num_lengths, v = len(p), float(num_kmer_ids)
    entropy = -sum(x * math.log(x) for x in p if x > 0)
    hidden = a + b * (1.0 - num_lengths / v)
    accuracy, loss = hidden * p.max(), hidden * entropy
    for m in range(num_lengths):
        joint = (b / v) * p.copy()
        joint[m] += c * p[m]
        total = joint.sum()
        accuracy += joint.max()
        loss += sum(j * math.log(total / j) for j in joint if j > 0)
    return Ceiling(float(accuracy), float(loss))


def tokenizer_ceiling(tokenizer: KmerTokenizer, objective: str) -> Ceiling:
    return ceiling(target_k_probs(tokenizer), tokenizer.vocab_size - tokenizer.first_kmer_id, objective)


def copy_ceiling(tokenizer: KmerTokenizer, objective: str) -> Ceiling:
    """The copy probe's ceiling: every probed token is a [MASK] whose bases all show in its neighbours."""
    return ceiling(target_k_probs(tokenizer), tokenizer.vocab_size - tokenizer.first_kmer_id, objective,
                   mask_fraction=1.0, random_fraction=0.0)


# ---- eval rows ------------------------------------------------------------------------

def given_k_columns(totals: dict[str, float]) -> dict[str, float]:
    """accuracy_given_k and loss_given_k from summed eval_sums (their ceiling is 1 and floor 0)."""
    weight = max(totals["weight"], 1.0)
    return {"accuracy_given_k": totals["correct_given_k"] / weight, "loss_given_k": totals["loss_sum_given_k"] / weight}


def eval_columns(tokenizer: KmerTokenizer, objective: str, probe: dict[str, float] | None) -> dict[str, float]:
    """The columns an eval row carries next to loss and accuracy: the objective's accuracy ceiling and
    loss floor, and the copy probe's accuracy (`probe`: the eval row of copy_probe_batches; None when the
    probe is off) with its ceiling, each in the objective's own terms, and given the true k (ceiling 1)."""
    limit = tokenizer_ceiling(tokenizer, objective)
    columns = {"accuracy_ceiling": limit.accuracy, "loss_floor": limit.loss}
    if probe is not None:
        columns.update(copy_accuracy=probe["accuracy"],
                       copy_accuracy_ceiling=copy_ceiling(tokenizer, objective).accuracy,
                       copy_accuracy_given_k=probe["accuracy_given_k"])
    return columns


# ---- the copy probe ------------------------------------------------------------------------

def unmask(batch: dict[str, np.ndarray]) -> np.ndarray:
    """The example ids before masking: masked_lm_ids put back at masked_lm_positions (weights > 0)."""
    ids = np.array(batch["input_ids"], copy=True)
    rows, slots = np.nonzero(np.asarray(batch["masked_lm_weights"]) > 0)
    ids[rows, np.asarray(batch["masked_lm_positions"])[rows, slots]] = np.asarray(batch["masked_lm_ids"])[rows, slots]
    return ids


def copy_probe_batch(true_ids: np.ndarray, kmer_lengths: np.ndarray, max_predictions: int,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Isolated single-token [MASK]s on unmasked examples, in the training examples' format.

    Masked positions are spaced k_max or more apart (so the k_max - 1 tokens after each are
    visible), the first is at least the second k-mer (the k-mer before it shows its first base)
    and the last leaves k_max - 1 k-mers after it: every base of every masked token shows in its
    visible neighbours, so a model that learned the overlap structure can copy it, and only k is
    hidden. The spacing is max(k_max, ceil(k-mers / max_predictions)), at a seeded random phase per
    example; every masked slot is a [MASK] (no random or kept tokens).
    """
    true_ids = np.asarray(true_ids, np.int64)
    rows, length = true_ids.shape
    lengths = np.asarray(kmer_lengths)
    k_max = int(lengths.max())
    is_kmer = lengths[true_ids] > 0
    num_kmers = is_kmer.sum(axis=1)  # k-mers sit at positions 1..num_kmers
    spacing = max(k_max, math.ceil(length / max_predictions))
    rng = np.random.default_rng(seed)
    phase = rng.integers(0, spacing, size=(rows, 1))
    positions = 2 + phase + spacing * np.arange(max_predictions)[None, :]
    real = positions <= (num_kmers - k_max + 1)[:, None]
    positions = np.where(real, positions, 0)
    labels = np.where(real, np.take_along_axis(true_ids, positions, axis=1), 0)
    input_ids = true_ids.copy()
    row_index, slot = np.nonzero(real)
    input_ids[row_index, positions[row_index, slot]] = MASK_ID
    return {
        "input_ids": input_ids.astype(np.int32), "input_mask": (true_ids != PAD_ID).astype(np.int32),
        "segment_ids": np.zeros_like(input_ids, np.int32), "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": labels.astype(np.int32), "masked_lm_weights": real.astype(np.float32),
    }


def copy_probe_batches(batches: Iterable[dict[str, np.ndarray]], tokenizer: KmerTokenizer, max_predictions: int,
                       seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """copy_probe_batch of each (masked) batch of a split, unmasked first; padding rows stay padding."""
    lengths = tokenizer.kmer_lengths()
    for index, batch in enumerate(batches):
        yield copy_probe_batch(unmask(batch), lengths, max_predictions, seed=seed + index)


# ---- is the run learning the structure? ----------------------------------------------------

# A model that copies from its neighbours passes a few percent given k within a few evaluations (the demo:
# 0.4% at step 0, 3.7% at step 250, 59% at step 500); one that has not started stays at what the unigram
# frequencies give (under 1% on the base recipe, docs/training.md "The base recipe on a CPU").
COPY_STALL_EVALUATIONS = 3
COPY_STALL_ACCURACY = 0.02


def copy_stall_warning(history: Sequence[tuple[int, float]]) -> str | None:
    """The training log's one-line warning when the last COPY_STALL_EVALUATIONS evaluations, (step,
    copy_accuracy_given_k) in order, all stayed below COPY_STALL_ACCURACY; None while the run learns (or
    has had fewer evaluations)."""
    recent = list(history)[-COPY_STALL_EVALUATIONS:]
    if len(recent) < COPY_STALL_EVALUATIONS or any(value >= COPY_STALL_ACCURACY for _, value in recent):
        return None
    steps = ", ".join(str(step) for step, _ in recent)
    return (f"copy accuracy given k is still {recent[-1][1]:.4f} after {len(recent)} evaluations (below "
            f"{COPY_STALL_ACCURACY} at steps {steps}): the model is not learning to read masked k-mers off their "
            "overlapping neighbours; docs/training.md ('The base recipe on a CPU') says what helped")
