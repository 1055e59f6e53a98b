"""The model card (README.md) of an export: export_files/model_card.md with the model's numbers.

A classifier export puts its own section first (classifier_card). docs/export.md shows a card.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dnavec_jax import model as model_lib
from dnavec_jax.export.names import POOLING_DIR, ClassifierHead, default_k
from dnavec_jax.tokenization import KmerTokenizer

# Files every export carries for transformers / sentence-transformers remote code, and the card template.
EXPORT_FILES = Path(__file__).parent.parent / "export_files"


def model_card(model_config: model_lib.BertConfig, tokenizer: KmerTokenizer, step: int | None,
               train_config: Mapping[str, Any] | None) -> str:
    """README.md of an export: export_files/model_card.md with this model's numbers filled in."""
    k_range = f"{tokenizer.k_min}..{tokenizer.k_max}"
    if tokenizer.k_probs is None:
        k_rule = f"k drawn uniformly from {k_range}"
    else:
        k_rule = f"k drawn from {k_range} with probabilities {[round(float(p), 4) for p in tokenizer.k_probs]}"
    data = (train_config or {}).get("data")
    if hasattr(data, "to_dict"):  # an ml_collections ConfigDict
        data = data.to_dict()
    data_text = (
        "Training data settings (from the training config):\n\n```json\n"
        + json.dumps(data, indent=2, default=str) + "\n```\n"
        if data else "The training data settings were not recorded with this export.\n"
    )
    rows = [("vocab_size", f"{model_config.vocab_size:,}"), ("hidden_size", model_config.hidden_size),
            ("num_hidden_layers", model_config.num_layers), ("num_attention_heads", model_config.num_heads),
            ("intermediate_size", model_config.intermediate_size),
            ("max_position_embeddings", model_config.max_position_embeddings),
            ("hidden_act", "gelu (exact erf)"), ("layer_norm_eps", model_config.layer_norm_eps),
            ("hidden_dropout_prob", model_config.hidden_dropout_rate), ("attention_probs_dropout_prob", 0.0)]
    positions = model_config.max_position_embeddings
    template = string.Template((EXPORT_FILES / "model_card.md").read_text(encoding="utf-8"))
    return template.substitute(
        num_layers=model_config.num_layers, hidden_size=model_config.hidden_size, k_range=k_range,
        k_min=tokenizer.k_min, k_max=tokenizer.k_max, k_min_minus_1=tokenizer.k_min - 1, k_rule=k_rule,
        step_text=f"training step {step}" if step is not None else "an unrecorded training step",
        default_k=default_k(tokenizer),
        vocab_size=f"{tokenizer.vocab_size:,}", positions=f"{positions:,}", max_tokens=f"{positions - 2:,}",
        max_bases=f"{positions - 3 + default_k(tokenizer):,}",
        data_text=data_text, table="\n".join(f"| {name} | {value} |" for name, value in rows),
        pooling_dir=POOLING_DIR,
    )


def classifier_card(card: str, head: ClassifierHead) -> str:
    """The encoder's model card with the classifier's section first (after the YAML front matter)."""
    card = card.replace("pipeline_tag: fill-mask", "pipeline_tag: text-classification", 1)
    end = card.find("\n---\n", 4) + 5 if card.startswith("---\n") else 0
    return card[:end] + ("\n" if end else "") + head.card.rstrip() + "\n\n" + card[end:].lstrip("\n")
