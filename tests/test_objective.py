"""The objective's ceiling against a brute-force count over the real masker; the length-aware loss against a
reference; the eval sums."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnavec_jax.data.masking import Masker
from dnavec_jax.tokenization import CLS_ID, MASK_ID, NUM_SPECIAL, SEP_ID, KmerTokenizer
from dnavec_jax.training import objective


def test_the_issue_figures():
    assert objective.tokenizer_ceiling(KmerTokenizer(3, 8), "vocabulary").accuracy == pytest.approx(0.25, abs=1e-4)
    assert objective.tokenizer_ceiling(KmerTokenizer(3, 6), "vocabulary").accuracy == pytest.approx(0.325, abs=1e-3)
    assert objective.tokenizer_ceiling(KmerTokenizer(3, 6), "vocabulary").loss == pytest.approx(
        0.9 * math.log(4), abs=2e-3)
    assert objective.copy_ceiling(KmerTokenizer(3, 6), "vocabulary") == objective.Ceiling(0.25, math.log(4))
    assert objective.tokenizer_ceiling(KmerTokenizer(3, 6), "length_aware") == objective.Ceiling(1.0, 0.0)


def _simulate(tokenizer: KmerTokenizer, rows: int, seq_length: int, seed: int):
    """Masked examples of random DNA (the real tokenizer and masker); per prediction: the id the input
    shows there, the bases from there on (what a model that reads every base knows), the true id."""
    rng = np.random.default_rng(seed)
    tokens = seq_length - 2
    ids = np.zeros((rows, seq_length), np.int64)
    bases = rng.integers(0, 4, size=(rows, tokens + 2 * tokenizer.k_max))
    for row in range(rows):  # extra bases after the example: no token of it is clipped
        ks = tokenizer.sample_k(bases.shape[1], rng)
        ids[row, 1:-1] = tokenizer.encode_contig_codes(bases[row].astype(np.uint8), ks)[:tokens]
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    masker = Masker(tokenizer.vocab_size, mask_rate=0.5, max_predictions=tokens, strategy="token")
    batch = masker.mask(ids, rng)
    row, slot = np.nonzero(batch.masked_lm_weights > 0)
    position = batch.masked_lm_positions[row, slot]
    shown = batch.input_ids[row, position]
    window = np.zeros(len(row), np.int64)
    for offset in range(tokenizer.k_max):  # token at position p starts at base p - 1
        window = window * 4 + bases[row, position - 1 + offset]
    return shown, window, batch.masked_lm_ids[row, slot]


def _prefix_ids(tokenizer: KmerTokenizer, window: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Id of the first `lengths` bases of each k_max-base window (-1 where the length is 0)."""
    safe = np.maximum(lengths, tokenizer.k_min)
    offsets = np.array([tokenizer.kmer_offset(int(k)) for k in range(tokenizer.k_min, tokenizer.k_max + 1)])
    ids = offsets[safe - tokenizer.k_min] + (window >> (2 * (tokenizer.k_max - safe)))
    return np.where(lengths > 0, ids, -1)


def _bayes(observation: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Accuracy and cross-entropy of the best predictor of target from observation, on the sample itself."""
    keys, inverse = np.unique(observation, return_inverse=True)
    targets, target_index = np.unique(target, return_inverse=True)
    counts = np.zeros((len(keys), len(targets)))
    np.add.at(counts, (inverse, target_index), 1.0)
    total = counts.sum()
    accuracy = counts.max(axis=1).sum() / total
    row_total = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = np.nansum(counts * np.log(row_total / counts)) / total
    return float(accuracy), float(loss)


@pytest.mark.parametrize("k_min, k_max, k_weights", [(1, 2, (0.3, 0.7)), (2, 3, None)])
def test_ceiling_equals_the_best_predictor_of_a_brute_force_count(k_min, k_max, k_weights):
    # Small vocabularies (20 and 80 k-mers) make the random replacements that happen to match the
    # bases frequent, so every term of the formula shows.
    tokenizer = KmerTokenizer(k_min, k_max, k_weights)
    shown, window, target = _simulate(tokenizer, rows=12_000, seq_length=66, seed=0)
    # What the input tells about k: [MASK], or the length of the id shown and whether it matches the
    # bases. With uniform random bases nothing else in (shown id, bases) bears on k, and the target is
    # the bases' prefix of length k; a count over (shown id, bases) itself would overfit its 5,000 cells.
    length = tokenizer.ids_to_kmer_lengths(target)
    shown_length = tokenizer.ids_to_kmer_lengths(shown)
    matches = (shown_length > 0) & (shown == _prefix_ids(tokenizer, window, shown_length))
    accuracy, loss = _bayes((shown == MASK_ID) * 100 + shown_length * 2 + matches, length)
    expected = objective.tokenizer_ceiling(tokenizer, "vocabulary")
    assert len(target) > 300_000
    assert accuracy == pytest.approx(expected.accuracy, abs=0.004)
    assert loss == pytest.approx(expected.loss, abs=0.006)
    # Told the true length (the length-aware objective), the bases decide the target.
    assert _bayes((shown * 4**k_max + window) * 16 + length, target) == (1.0, 0.0)
    # Without the kept and random tokens the ceiling would be max P(k): the mix matters.
    mask_only = objective.ceiling(objective.target_k_probs(tokenizer), tokenizer.vocab_size - NUM_SPECIAL,
                                  mask_fraction=1.0, random_fraction=0.0)
    assert abs(mask_only.accuracy - accuracy) > 0.02 and abs(mask_only.loss - loss) > 0.03


def _reference_length_aware(logits, labels, weights, length_of):
    loss_sum = correct = 0.0
    for b in range(logits.shape[0]):
        for p in range(logits.shape[1]):
            if weights[b, p] <= 0:
                continue
            candidates = np.flatnonzero(length_of == length_of[labels[b, p]])
            row = logits[b, p, candidates].astype(np.float64)
            log_z = np.log(np.exp(row - row.max()).sum()) + row.max()
            loss_sum += weights[b, p] * (log_z - logits[b, p, labels[b, p]])
            correct += weights[b, p] * float(candidates[np.argmax(row)] == labels[b, p])
    return loss_sum, correct


def test_length_aware_loss_equals_a_reference_and_has_finite_gradients():
    tokenizer = KmerTokenizer(2, 3)
    length_of = tokenizer.kmer_lengths()
    assert objective.length_ranges(length_of) == [(5, 21), (21, 85)]
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4, tokenizer.vocab_size)).astype(np.float32) * 3
    labels = rng.integers(NUM_SPECIAL, tokenizer.vocab_size, size=(3, 4))
    weights = np.ones((3, 4), np.float32)
    weights[2, 2:] = 0.0
    labels[2, 3] = 0  # a padding slot
    sums = jax.device_get(objective.mlm_sums(logits, labels, weights, length_of=length_of))
    loss_sum, correct = _reference_length_aware(logits, labels, weights, length_of)
    assert float(sums["loss_sum"]) == pytest.approx(loss_sum, rel=1e-5)
    assert float(sums["correct"]) == correct
    assert float(sums["weight"]) == 10.0
    # Restricting the softmax can only lower the loss; the full one is the paper's.
    full = jax.device_get(objective.mlm_sums(logits, labels, weights))
    assert float(full["loss_sum"]) > float(sums["loss_sum"])
    grads = jax.grad(lambda x: objective.mlm_sums(x, labels, weights, length_of=length_of)["loss_sum"])(
        jnp.asarray(logits))
    grads = np.asarray(grads)
    assert np.isfinite(grads).all()
    other_length = length_of[None, None, :] != length_of[labels][..., None]
    assert np.all(grads[other_length] == 0.0)  # ids of other lengths get no gradient
    assert np.all(grads[2, 2:] == 0.0)  # nor padding slots


def test_eval_sums_and_rows():
    tokenizer = KmerTokenizer(2, 3)
    train_sums, eval_sums = objective.sums_fns("vocabulary", tokenizer)
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 3, tokenizer.vocab_size)).astype(np.float32)
    labels = rng.integers(NUM_SPECIAL, tokenizer.vocab_size, size=(2, 3))
    weights = np.ones((2, 3), np.float32)
    assert set(train_sums(logits, labels, weights)) == set(objective.SUM_NAMES)
    sums = {k: float(v) for k, v in jax.device_get(eval_sums(logits, labels, weights)).items()}
    aware = {k: float(v) for k, v in jax.device_get(
        objective.sums_fns("length_aware", tokenizer)[1](logits, labels, weights)).items()}
    assert sums["loss_sum_given_k"] == aware["loss_sum"] == aware["loss_sum_given_k"]
    assert sums["loss_sum"] > sums["loss_sum_given_k"]
    assert objective.given_k_columns(sums) == {"accuracy_given_k": sums["correct_given_k"] / 6,
                                               "loss_given_k": sums["loss_sum_given_k"] / 6}
    columns = objective.eval_columns(tokenizer, "vocabulary", {"accuracy": 0.1, "accuracy_given_k": 0.4})
    assert columns == {"accuracy_ceiling": objective.tokenizer_ceiling(tokenizer, "vocabulary").accuracy,
                       "loss_floor": objective.tokenizer_ceiling(tokenizer, "vocabulary").loss,
                       "copy_accuracy": 0.1, "copy_accuracy_ceiling": 0.5, "copy_accuracy_given_k": 0.4}
    assert objective.eval_columns(tokenizer, "vocabulary", None) == {  # train.copy_probe off
        "accuracy_ceiling": columns["accuracy_ceiling"], "loss_floor": columns["loss_floor"]}


# ---- the cross-entropy's own gradient -----------------------------------------------------

def _plain_cross_entropy(logits, labels, lo, hi):
    """The textbook formula in float32 (what jax.grad of it gives is the reference gradient)."""
    x = jnp.asarray(logits, jnp.float32)
    inside = (jnp.arange(x.shape[-1]) >= lo[..., None]) & (jnp.arange(x.shape[-1]) < hi[..., None])
    log_z = jax.nn.logsumexp(jnp.where(inside, x, -jnp.inf), axis=-1)
    return log_z - jnp.take_along_axis(x, labels[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("length_aware", [False, True])
def test_cross_entropy_and_its_gradient_match_the_plain_float32_formula(length_aware):
    tokenizer = KmerTokenizer(2, 3)
    vocab, width = tokenizer.vocab_size, 128  # padded columns vocab..127 carry -inf, as the model's
    rng = np.random.default_rng(3)
    logits = np.full((3, 5, width), -np.inf, np.float32)
    logits[..., :vocab] = rng.normal(size=(3, 5, vocab)) * 4
    labels = jnp.asarray(rng.integers(NUM_SPECIAL, vocab, size=(3, 5)))
    weights = jnp.asarray(rng.random((3, 5)), jnp.float32)  # any cotangent, not only ones
    if length_aware:
        lo, hi = objective.label_length_ranges(labels, tokenizer.kmer_lengths())
    else:
        lo, hi = jnp.zeros_like(labels), jnp.full_like(labels, width)
    for dtype, tolerance in ((jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)):
        x = jnp.asarray(logits, dtype)
        def ours(v):
            return objective.cross_entropy(v, labels, *((lo, hi) if length_aware else ()))

        def plain(v):
            return _plain_cross_entropy(v, labels, lo, hi)

        # The loss is float32 whatever the logits' dtype: the same numbers as the formula on those logits.
        np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6, atol=1e-6)
        grad = jax.grad(lambda v: jnp.sum(ours(v) * weights))(x)
        expected = jax.grad(lambda v: jnp.sum(plain(v.astype(jnp.float32)) * weights))(x.astype(jnp.float32))
        assert grad.dtype == dtype  # the gradient comes back in the logits' dtype
        # bf16: the float32 gradient rounded once to bf16 (8 bits of mantissa).
        np.testing.assert_allclose(np.asarray(grad, np.float32), expected, rtol=tolerance, atol=tolerance * 1e-2)
        assert np.all(np.asarray(grad, np.float32)[..., vocab:] == 0.0)  # the padded columns get nothing


def test_the_bf16_base_loss_keeps_no_float32_logits_sized_buffer_for_the_backward_pass():
    from dnavec_jax import model as model_lib
    from dnavec_jax.training import steps

    config = model_lib.BertConfig(dtype="bfloat16")  # base: 12 x 512, vocabulary 87,365 (padded to 87,424)
    model = model_lib.BertForMaskedLM(config)
    # Batch 8, as in the issue: B x P x V (53.9 M) is then larger than any parameter (the word table: 44.8 M).
    rows, length, predictions = 8, 512, 77
    params = jax.eval_shape(lambda: model_lib.init_params(config, jax.random.key(0)))
    batch = steps.abstract_batch((rows,), length, predictions, None)

    def loss(p, b):
        logits = steps._apply(model, p, b, deterministic=False, rng=jax.random.key(0))
        return objective.mlm_sums(logits, b["masked_lm_ids"], b["masked_lm_weights"], False)["loss_sum"]

    # What jax.vjp's pullback closes over is what the backward pass keeps (traced only: nothing runs).
    residuals = jax.eval_shape(lambda p, b: jax.tree.leaves(jax.vjp(lambda q: loss(q, b), p)[1]), params, batch)
    big = [r for r in residuals if r.size >= rows * predictions * config.vocab_size]
    assert [(r.shape, r.dtype) for r in big] == [((rows, predictions, config.padded_vocab_size), jnp.bfloat16)]


def test_copy_stall_warning_after_several_evaluations_near_zero():
    """The rule: warn once the last COPY_STALL_EVALUATIONS evaluations all stayed below COPY_STALL_ACCURACY."""
    below, above = objective.COPY_STALL_ACCURACY * 0.5, objective.COPY_STALL_ACCURACY
    stalled = [(100 * i, below) for i in range(1, objective.COPY_STALL_EVALUATIONS + 1)]
    warning = objective.copy_stall_warning(stalled)
    assert warning.startswith("copy accuracy given k is still") and "\n" not in warning
    assert "at steps 100, 200, 300" in warning
    assert objective.copy_stall_warning(stalled[:-1]) is None  # not yet several
    assert objective.copy_stall_warning([*stalled[:-1], (300, above)]) is None  # learning
    assert objective.copy_stall_warning([(50, above), *stalled]) is not None  # only the recent ones count


def test_training_log_warns_once_when_copying_does_not_start(tiny_config, tmp_path, caplog):
    """The tiny model on synthetic data learns nothing to copy in 4 steps: the 3rd and 4th evaluations leave one
    warning line in the log."""
    from conftest import train_and_evaluate

    tiny_config.train.update(num_train_steps=4, eval_every_steps=1, checkpoint_every_steps=0)
    with caplog.at_level("WARNING"):
        train_and_evaluate(tiny_config, tmp_path / "run")
    warnings = [record.getMessage() for record in caplog.records if "copy accuracy given k" in record.getMessage()]
    assert len(warnings) == 1 and "at steps 1, 2, 3" in warnings[0], warnings


def test_base_offers_the_demo_choices_and_keeps_the_papers_recipe_by_default():
    """configs/base.py:words+positions (docs/training.md, "The base recipe on a CPU"); no variant: BERT's inits and
    dropout 0.1; base_cpu.py changes only sizes, steps and dtype."""
    import importlib

    base, base_cpu = importlib.import_module("configs.base"), importlib.import_module("configs.base_cpu")
    paper = base.get_config().model
    assert (paper.word_init, paper.position_init, paper.hidden_dropout_rate) == ("normal", "normal", 0.1)
    fast = base.get_config("words+positions").model
    assert (fast.word_init, fast.position_init, fast.hidden_dropout_rate) == ("bases", "sinusoidal", 0.1)
    with pytest.raises(ValueError, match="unknown config variant 'wide'"):
        base.get_config("wide")
    small, full = base_cpu.get_config("no_dropout"), base.get_config("no_dropout")
    assert small.model.hidden_dropout_rate == 0.0
    assert small.data.prep.to_dict() == {**full.data.prep.to_dict(), "dupe_factor": 4, "chunk_bases": 200_000,
                                         "shard_bases": 400_000}
    changed = {name for name in full.train if small.train[name] != full.train[name]}
    assert changed <= {"num_train_steps", "warmup_steps", "log_every_steps", "eval_every_steps", "eval_batch_size",
                       "checkpoint_every_steps", "keep_checkpoints"}, changed
    ratio = full.train.warmup_steps / full.train.num_train_steps  # base's schedule shape: 12.5% warmup
    assert small.train.warmup_steps / small.train.num_train_steps == ratio
    assert small.train.learning_rate == full.train.learning_rate and small.train.schedule == full.train.schedule
