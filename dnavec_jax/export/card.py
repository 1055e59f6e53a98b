"""The model card (README.md) of an export: export_files/model_card.md with the model's numbers.

A classifier export puts its own section first (classifier_card). docs/export.md shows a card.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dnavec_jax import model as model_lib
from dnavec_jax.export.names import POOLING_DIR, ClassifierHead, default_k
from dnavec_jax.tokenization import KmerTokenizer

# Files every export carries for transformers / sentence-transformers remote code, and the card template.
EXPORT_FILES = Path(__file__).parent.parent / "export_files"


# Eval-row figures the card shows, each next to what the objective allows (training/objective.py's ceilings).
EVALUATION_ROWS = (
    ("masked k-mer accuracy", "accuracy", "accuracy_ceiling", "ceiling"),
    ("masked k-mer loss (nats)", "loss", "loss_floor", "floor"),
    ("accuracy given the true k", "accuracy_given_k", None, "ceiling 1"),
    ("copy probe: isolated [MASK], read off the overlapping neighbours", "copy_accuracy", "copy_accuracy_ceiling",
     "ceiling"),
)


def evaluation_text(evaluation: Mapping[str, float] | None, step: int | None) -> str:
    """The card's Evaluation section body: the run's eval row at the exported step, with ceilings and floors."""
    if not evaluation:
        return "No evaluation of the pretraining objective was recorded for this step.\n"
    lines = [f"Masked-language-model figures on the held-out validation blocks at step {step} "
             f"({int(evaluation.get('masked_tokens', 0)):,} masked tokens; the run's metrics.jsonl). At a "
             "`[MASK]` the model cannot see k, so even a perfect model is capped: the ceiling and floor are what "
             "the objective allows (docs/training.md).", "", "| metric | value | what the objective allows |",
             "|---|---|---|"]
    for label, key, bound_key, bound_label in EVALUATION_ROWS:
        if key not in evaluation:
            continue
        if bound_key is None:
            bound = bound_label
        elif bound_key in evaluation:
            bound = f"{bound_label} {evaluation[bound_key]:.4f}"
        else:
            bound = "-"
        lines.append(f"| {label} | {evaluation[key]:.4f} | {bound} |")
    return "\n".join(lines) + "\n"


def model_card(model_config: model_lib.BertConfig, tokenizer: KmerTokenizer, step: int | None,
               train_config: Mapping[str, Any] | None, evaluation: Mapping[str, float] | None = None) -> str:
    """README.md of an export: export_files/model_card.md with this model's numbers filled in."""
    k_range = f"{tokenizer.k_min}..{tokenizer.k_max}"
    if tokenizer.k_probs is None:
        k_rule = f"k drawn uniformly from {k_range}"
    else:
        k_rule = f"k drawn from {k_range} with probabilities {[round(float(p), 4) for p in tokenizer.k_probs]}"
    data = (train_config or {}).get("data")  # config.json's, a plain dict
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
        pooling_dir=POOLING_DIR, evaluation_text=evaluation_text(evaluation, step),
    )


def classifier_card(card: str, head: ClassifierHead) -> str:
    """The encoder's model card with the classifier's section first (after the YAML front matter)."""
    card = re.sub(r"^pipeline_tag: .*$", "pipeline_tag: text-classification", card, count=1, flags=re.MULTILINE)
    end = card.find("\n---\n", 4) + 5 if card.startswith("---\n") else 0
    return card[:end] + ("\n" if end else "") + head.card.rstrip() + "\n\n" + card[end:].lstrip("\n")
