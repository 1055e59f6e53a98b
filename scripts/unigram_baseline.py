"""Unigram baseline of a prepared dataset: what a context-free predictor of the masked tokens scores.

  python scripts/unigram_baseline.py --data_dir data_cache/chr22_demo

Counts masked_lm_ids (weight > 0) per split and prints, in nats per masked token:
  entropy(validation)             the validation split's own unigram entropy: the best any
                                  context-free predictor can do there (a lower bound);
  cross-entropy(validation|train) a unigram model fitted on the training split (add-one
                                  smoothed over the vocabulary), scored on validation;
the accuracy of always predicting the most frequent training k-mer, and
exp(entropy) as a perplexity. Compare them with the eval rows of metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax.errors import DNAVecError, run_cli


def masked_id_counts(files: list[str], seq_length: int, max_predictions: int, vocab_size: int) -> np.ndarray:
    import tensorflow as tf

    from dnavec_jax.data import tf_feature_spec

    tf.config.set_visible_devices([], "GPU")
    spec = {k: v for k, v in tf_feature_spec(seq_length, max_predictions).items()
            if k in ("masked_lm_ids", "masked_lm_weights")}
    counts = np.zeros(vocab_size, np.int64)
    ds = tf.data.TFRecordDataset(files).batch(1024).map(lambda s: tf.io.parse_example(s, spec))
    for batch in ds.as_numpy_iterator():
        ids = batch["masked_lm_ids"][batch["masked_lm_weights"] > 0]
        counts += np.bincount(ids, minlength=vocab_size)
    return counts


def baseline(data_dir: str) -> dict[str, float]:
    from dnavec_jax.data import load_prepared

    dataset = load_prepared(data_dir)
    meta = dataset.metadata
    args = (int(meta["seq_length"]), int(meta["max_predictions"]), int(meta["vocab_size"]))
    train = masked_id_counts(dataset.files("train"), *args)
    valid = masked_id_counts(dataset.files("validation"), *args)
    if not valid.sum():
        raise DNAVecError(f"{dataset.path}: the validation split has no masked tokens")
    p_valid = valid[valid > 0] / valid.sum()
    p_train = (train + 1) / (train.sum() + len(train))
    return {
        "dataset": str(dataset.path),
        "masked_tokens_train": int(train.sum()),
        "masked_tokens_validation": int(valid.sum()),
        "entropy_validation": float(-(p_valid * np.log(p_valid)).sum()),
        "entropy_train": float(-(p := train[train > 0] / train.sum()).dot(np.log(p))),
        "cross_entropy_validation_given_train": float(-(valid * np.log(p_train)).sum() / valid.sum()),
        "majority_accuracy_validation": float(valid[int(np.argmax(train))] / valid.sum()),
        "uniform_over_vocab": math.log(len(train)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="a prepared dataset (as for load_prepared)")
    args = parser.parse_args()
    result = baseline(args.data_dir)
    result["perplexity_validation"] = math.exp(result["entropy_validation"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(run_cli(main))
