"""Input pipeline: deterministic, resumable training order; whole-split padded evaluation; process splits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dnavec_jax.errors import DNAVecError
from dnavec_jax.training import batches

SEQ, PRED, VOCAB = 16, 3, 69


def write_shards(directory, num_files: int, per_file: int) -> list[str]:
    """TFRecord shards in the data-prep feature layout; example n has input_ids[1] == 1000 + n."""
    import tensorflow as tf

    paths, n = [], 0
    for index in range(num_files):
        path = str(directory / f"train.tfrecord-{index:05d}-of-{num_files:05d}")
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(per_file):
                ex = batches.synthetic_examples(np.random.default_rng(n), 1, SEQ, PRED, VOCAB)
                ex["input_ids"][0, 1] = 1000 + n

                def ints(name, ex=ex):
                    return tf.train.Feature(int64_list=tf.train.Int64List(value=ex[name][0].tolist()))
                features = {name: ints(name) for name in batches.FEATURES if name != "masked_lm_weights"}
                features["masked_lm_weights"] = tf.train.Feature(
                    float_list=tf.train.FloatList(value=ex["masked_lm_weights"][0].tolist()))
                writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
                n += 1
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), num_files=5, per_file=7)  # 35 examples


def ids(batch) -> list[int]:
    return (batch["input_ids"][..., 1].reshape(-1) - 1000).tolist()


SHAPE = batches.BatchShape(grad_accum_steps=2, micro_batch=2, seq_length=SEQ, max_predictions=PRED)  # 4 per step


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_batches_have_the_train_layout(shards):
    batch, position = next(batches.tfrecord_train_batches(shards, SHAPE, seed=0, shuffle_buffer=8))
    assert position == (0, 1)
    assert batch["input_ids"].shape == (2, 2, SEQ) and batch["input_ids"].dtype == np.int32
    assert batch["masked_lm_weights"].shape == (2, 2, PRED) and batch["masked_lm_weights"].dtype == np.float32
    assert set(batch) == set(batches.FEATURES)


def test_order_is_seeded_and_epochs_cover_the_data(shards):
    run = take(batches.tfrecord_train_batches(shards, SHAPE, seed=0, shuffle_buffer=8), 16)
    again = take(batches.tfrecord_train_batches(shards, SHAPE, seed=0, shuffle_buffer=8), 16)
    other_seed = take(batches.tfrecord_train_batches(shards, SHAPE, seed=1, shuffle_buffer=8), 16)
    assert [ids(b) for b, _ in run] == [ids(b) for b, _ in again]
    assert [ids(b) for b, _ in run] != [ids(b) for b, _ in other_seed]
    # 35 examples, 4 per step: 8 full steps per epoch, the last 3 examples of an epoch are dropped.
    assert [p for _, p in run][6:10] == [(0, 7), (0, 8), (1, 1), (1, 2)]
    epoch0 = sum((ids(b) for b, p in run if p[0] == 0), [])
    epoch1 = sum((ids(b) for b, p in run if p[0] == 1), [])
    assert len(set(epoch0)) == 32 and set(epoch0) <= set(range(35))
    assert epoch0 != epoch1  # reshuffled per epoch


@pytest.mark.parametrize("consumed", [3, 8, 10])
def test_resuming_at_a_position_continues_the_same_stream(shards, consumed):
    run = take(batches.tfrecord_train_batches(shards, SHAPE, seed=0, shuffle_buffer=8), 14)
    position = run[consumed - 1][1]
    resumed = take(batches.tfrecord_train_batches(shards, SHAPE, seed=0, shuffle_buffer=8, start=position),
                   14 - consumed)
    assert [ids(b) for b, _ in resumed] == [ids(b) for b, _ in run[consumed:]]
    assert [p for _, p in resumed] == [p for _, p in run[consumed:]]


def test_processes_read_disjoint_shards(shards):
    parts = [batches.process_files(shards, index, 2) for index in range(2)]
    assert set(parts[0]).isdisjoint(parts[1]) and sorted(parts[0] + parts[1]) == sorted(shards)
    with pytest.raises(DNAVecError, match="5 shard file.*fewer than the 8 processes"):
        batches.process_files(shards, 0, 8)


def test_too_little_data_for_one_batch(shards):
    shape = batches.BatchShape(1, 8, SEQ, PRED)
    with pytest.raises(DNAVecError, match="fewer than one batch"):
        next(batches.tfrecord_train_batches(shards[:1], shape, seed=0, shuffle_buffer=1))


def test_eval_covers_the_whole_split_once_with_zero_weight_padding(shards):
    num = batches.num_eval_batches(35, local_batch=4, process_count=2)  # ceil(18 / 4) = 5 per process
    assert num == 5
    seen, weights = [], 0.0
    for index in range(2):
        got = list(batches.tfrecord_eval_batches(shards, 4, SEQ, PRED, index, 2, num))
        assert len(got) == num and all(b["input_ids"].shape == (4, SEQ) for b in got)
        for batch in got:
            real = batch["input_mask"].max(axis=1) > 0
            assert (batch["masked_lm_weights"][~real] == 0).all()
            seen += (batch["input_ids"][real, 1] - 1000).tolist()
            weights += batch["masked_lm_weights"].sum()
    assert sorted(seen) == list(range(35))
    assert weights == 35 * PRED
    again = list(batches.tfrecord_eval_batches(shards, 4, SEQ, PRED, 0, 2, num))
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in
               zip(again, batches.tfrecord_eval_batches(shards, 4, SEQ, PRED, 0, 2, num)))
    with pytest.raises(DNAVecError, match="more examples than their metadata"):
        list(batches.tfrecord_eval_batches(shards, 4, SEQ, PRED, 0, 1, 3))


def test_synthetic_global_batches_do_not_depend_on_the_process_count():
    one = next(batches.synthetic_train_batches(batches.BatchShape(2, 4, SEQ, PRED), VOCAB, 0, 0, 1))[0]
    two = [next(batches.synthetic_train_batches(batches.BatchShape(2, 2, SEQ, PRED), VOCAB, 0, p, 2))[0]
           for p in range(2)]
    for name in batches.FEATURES:
        np.testing.assert_array_equal(one[name], np.concatenate([two[0][name], two[1][name]], axis=1))
    batch = one
    assert (batch["input_ids"][..., 0] == 2).all()  # [CLS]
    picked = np.take_along_axis(batch["input_ids"], batch["masked_lm_positions"], axis=-1)
    assert (picked == 4).all() and (batch["masked_lm_ids"] >= 5).all()  # [MASK] at the positions


def test_synthetic_eval_split_is_padded_like_the_real_one():
    seen = 0.0
    for index in range(2):
        got = list(batches.synthetic_eval_batches(9, 4, SEQ, PRED, VOCAB, 0, index, 2))
        assert len(got) == 2
        seen += sum(b["masked_lm_weights"].sum() for b in got)
    assert seen == 9 * PRED
