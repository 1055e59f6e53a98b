"""The features of a prepared example: names and dtypes as google-research/bert writes them.

input_ids, input_mask, segment_ids (seq_length,), masked_lm_positions, masked_lm_ids,
masked_lm_weights (max_predictions,), plus the trace features record_index, start_offset and
dupe_index; docs/data.md has the table. Cheap to import: TensorFlow only when tf_feature_spec is called.
"""

from __future__ import annotations

import numpy as np

from dnavec_jax.tf_runtime import tensorflow

SEQUENCE_FEATURES = ("input_ids", "input_mask", "segment_ids")
PREDICTION_FEATURES = ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights")
TRACE_FEATURES = ("record_index", "start_offset", "dupe_index")
BERT_FEATURES = SEQUENCE_FEATURES + PREDICTION_FEATURES
ALL_FEATURES = BERT_FEATURES + TRACE_FEATURES


def feature_shapes(seq_length: int, max_predictions: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, numpy dtype) of every feature written to the shards."""
    shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for name in SEQUENCE_FEATURES:
        shapes[name] = ((seq_length,), np.dtype(np.int64))
    shapes["masked_lm_positions"] = ((max_predictions,), np.dtype(np.int64))
    shapes["masked_lm_ids"] = ((max_predictions,), np.dtype(np.int64))
    shapes["masked_lm_weights"] = ((max_predictions,), np.dtype(np.float32))
    for name in TRACE_FEATURES:
        shapes[name] = ((), np.dtype(np.int64))
    return shapes


def tf_feature_spec(seq_length: int, max_predictions: int) -> dict:
    """{name: tf.io.FixedLenFeature} for tf.io.parse_example over the prepared shards."""
    tf = tensorflow()
    return {
        name: tf.io.FixedLenFeature(shape, tf.float32 if dtype == np.float32 else tf.int64)
        for name, (shape, dtype) in feature_shapes(seq_length, max_predictions).items()
    }
