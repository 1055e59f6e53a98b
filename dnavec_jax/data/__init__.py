"""Data prep: genome FASTA -> pre-tokenized, pre-masked TFRecord shards (a TFDS dataset).

`import dnavec_jax.data` is cheap: settings, load_prepared and tf_feature_spec
need neither TensorFlow Datasets nor TensorFlow (tf_feature_spec imports
TensorFlow when called); prepare_dataset and the builder load TFDS on first use.
"""

from __future__ import annotations

from dnavec_jax.data.features import ALL_FEATURES, BERT_FEATURES, tf_feature_spec
from dnavec_jax.data.masking import MaskedBatch, Masker, leak_counts
from dnavec_jax.data.prepared import PreparedDataset, load_prepared
from dnavec_jax.data.settings import PrepSettings

_LAZY = {"prepare_dataset", "DnaKmerMlm", "DnaKmerMlmConfig", "format_summary"}

__all__ = [
    "ALL_FEATURES", "BERT_FEATURES", "DnaKmerMlm", "DnaKmerMlmConfig", "MaskedBatch", "Masker", "PrepSettings",
    "PreparedDataset", "format_summary", "leak_counts", "load_prepared", "prepare_dataset", "tf_feature_spec",
]


def __getattr__(name: str):
    # The builder imports TensorFlow Datasets (and with it TensorFlow): loaded on first use only, so that
    # training on the synthetic source and the tools run where TensorFlow is absent (the GPU image).
    if name in _LAZY:
        from dnavec_jax.tf_runtime import import_train_module

        return getattr(import_train_module("dnavec_jax.data.builder", "data prep"), name)
    raise AttributeError(f"module 'dnavec_jax.data' has no attribute {name!r}")
