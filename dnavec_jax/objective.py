"""The MLM objective (the paper's softmax over the vocabulary, or length-aware) and what it allows.

docs/training.md ("What the objective allows") derives the ceiling and says
what the length-aware objective changes. Pure functions; jax only where the
sums run inside the jitted train and eval steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from dnavec_jax.data.masking import MASK_TOKEN_FRACTION, RANDOM_TOKEN_FRACTION
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import KmerTokenizer

# "vocabulary": cross-entropy over the whole vocabulary (the paper's, BERT's);
# "length_aware": cross-entropy over the k-mers of the target's length only, so the
# k hidden at a [MASK] is no longer part of what the model must guess.
OBJECTIVES = ("vocabulary", "length_aware")
SUM_NAMES = ("loss_sum", "correct", "weight")
GIVEN_K_NAMES = ("loss_sum_given_k", "correct_given_k")


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise DNAVecError(f"train.mlm_objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    return objective


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


def _within_label_length(logits, labels, length_of):
    """(cross-entropy, argmax id) over the ids of each label's length: a log-sum-exp and an argmax per
    length range, then the label's, so no vocabulary-sized mask is built."""
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    ranges = length_ranges(length_of)
    log_z = jnp.stack([logsumexp(logits[..., a:b], axis=-1) for a, b in ranges], axis=-1)
    best = jnp.stack([jnp.argmax(logits[..., a:b], axis=-1) + a for a, b in ranges], axis=-1)
    k_min = int(np.asarray(length_of)[ranges[0][0]])
    # Padding slots (label [PAD], length 0) read the shortest range; their weight is 0.
    which = jnp.clip(jnp.asarray(length_of)[labels] - k_min, 0, len(ranges) - 1)[..., None]
    label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    ce = jnp.take_along_axis(log_z, which, axis=-1)[..., 0] - label_logit
    return ce, jnp.take_along_axis(best, which, axis=-1)[..., 0]


def mlm_sums(logits, labels, weights, length_of=None) -> dict:
    """loss_sum, correct and weight over the masked slots (weights = masked_lm_weights).

    length_of None: the paper's objective, softmax and argmax over the whole vocabulary.
    length_of (numpy, k per id) given: softmax and argmax over the ids of the label's length only.
    Argmax ties go to the lowest id (as numpy/torch argmax).
    """
    import jax.numpy as jnp
    import optax

    weights = weights.astype(jnp.float32)
    real = weights > 0
    logits = logits.astype(jnp.float32)
    if length_of is None:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        predicted = jnp.argmax(logits, axis=-1)
    else:
        ce, predicted = _within_label_length(logits, labels, length_of)
    hits = (predicted == labels).astype(jnp.float32)
    return {
        # where(): padding slots contribute exactly 0 even if their logits were not finite.
        "loss_sum": jnp.sum(jnp.where(real, ce * weights, 0.0)),
        "correct": jnp.sum(jnp.where(real, hits * weights, 0.0)),
        "weight": jnp.sum(weights),
    }


def eval_sums(logits, labels, weights, length_of, objective: str) -> dict:
    """mlm_sums of the objective plus loss_sum_given_k / correct_given_k (the length-aware sums):
    those compare models trained with either objective, since both can be read given the true k."""
    given_k = mlm_sums(logits, labels, weights, length_of)
    sums = given_k if objective == "length_aware" else mlm_sums(logits, labels, weights)
    return {**sums, "loss_sum_given_k": given_k["loss_sum"], "correct_given_k": given_k["correct"]}


def sums_fns(objective: str, tokenizer: KmerTokenizer):
    """(train sums, eval sums) for the train and eval steps; the train sums keep mlm_sums' three names."""
    check_objective(objective)
    length_of = tokenizer.kmer_lengths().astype(np.int32)
    train_length = length_of if objective == "length_aware" else None

    def train_sums(logits, labels, weights):
        return mlm_sums(logits, labels, weights, train_length)

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
    check_objective(objective)
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


def eval_columns(tokenizer: KmerTokenizer, objective: str, probe: dict[str, float]) -> dict[str, float]:
    """The columns an eval row carries next to loss and accuracy: the objective's accuracy ceiling and
    loss floor, and the copy probe's accuracy (`probe`: the eval row of structure.copy_probe_batches)
    with its ceiling, each in the objective's own terms, and given the true k (ceiling 1)."""
    limit = tokenizer_ceiling(tokenizer, objective)
    return {"accuracy_ceiling": limit.accuracy, "loss_floor": limit.loss, "copy_accuracy": probe["accuracy"],
            "copy_accuracy_ceiling": copy_ceiling(tokenizer, objective).accuracy,
            "copy_accuracy_given_k": probe["accuracy_given_k"]}
