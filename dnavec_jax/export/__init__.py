"""Hugging Face export and import: Flax params <-> a transformers BERT directory (docs/export.md).

names: file and parameter names, state and config conversion; writer: export_to_hf,
export_checkpoint (`dnavec export-hf`); loader: load_hf_pretrained and the export's tokenizer;
card: the model card. The names below are the package's API.
"""

from dnavec_jax.export.loader import (
                                      HFImport,
                                      kmer_tokenizer_from_export,
                                      load_hf_pretrained,
                                      read_hf_state,
                                      tokenizer_from_train_config,
)
from dnavec_jax.export.names import (
                                      CLASSIFIER_ARCHITECTURES,
                                      DNAVEC_FILE,
                                      LEGACY_POOLING,
                                      WEIGHTS_NAME,
                                      ClassifierHead,
                                      default_k,
                                      flax_to_hf_state,
                                      hf_config_dict,
                                      hf_state_to_flax,
                                      model_config_from_hf,
                                      name_table,
)
from dnavec_jax.export.writer import export_after_training, export_checkpoint, export_to_hf

__all__ = [
    "CLASSIFIER_ARCHITECTURES", "DNAVEC_FILE", "LEGACY_POOLING", "WEIGHTS_NAME", "ClassifierHead", "HFImport",
    "default_k", "export_after_training", "export_checkpoint", "export_to_hf", "flax_to_hf_state", "hf_config_dict",
    "hf_state_to_flax", "kmer_tokenizer_from_export", "load_hf_pretrained", "model_config_from_hf", "name_table",
    "read_hf_state", "tokenizer_from_train_config",
]
