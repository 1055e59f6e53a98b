"""Test-only helpers for Hugging Face exports (need torch and transformers)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np


def mlm_accuracy_hf(model_or_dir, examples: Mapping[str, np.ndarray], batch_size: int = 16) -> float:
    """MLM accuracy of a transformers BertForMaskedLM: sum(w * (argmax == id)) / sum(w).

    examples: input_ids, input_mask, masked_lm_positions, masked_lm_ids, masked_lm_weights
    (and optionally segment_ids), numpy arrays with a leading example axis, as the
    trainer's eval batches. model_or_dir: a loaded BertForMaskedLM or an export
    directory. Needs torch. The MLM head runs only at the masked positions, as in
    the Flax model; logits are computed in float32.
    """
    import torch  # tests that call this skip without torch

    if isinstance(model_or_dir, (str, os.PathLike)):
        from transformers import BertForMaskedLM

        model = BertForMaskedLM.from_pretrained(str(model_or_dir), dtype=torch.float32)
    else:
        model = model_or_dir
    model.eval()
    names = ("input_ids", "input_mask", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights")
    missing = [name for name in names if name not in examples]
    if missing:
        raise ValueError(f"examples lack {missing}")
    arrays = {name: np.asarray(value) for name, value in examples.items()}
    total = arrays["input_ids"].shape[0]
    correct = weight = 0.0
    with torch.no_grad():
        for start in range(0, total, batch_size):
            batch = {name: torch.from_numpy(np.ascontiguousarray(value[start:start + batch_size]))
                     for name, value in arrays.items()}
            segment = batch.get("segment_ids")
            hidden = model.bert(
                input_ids=batch["input_ids"].long(),
                attention_mask=batch["input_mask"].long(),
                token_type_ids=None if segment is None else segment.long(),
            ).last_hidden_state
            positions = batch["masked_lm_positions"].long()
            picked = torch.gather(hidden, 1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
            logits = model.cls(picked.float())
            hits = (logits.argmax(-1) == batch["masked_lm_ids"].long()).double()
            weights = batch["masked_lm_weights"].double()
            correct += float((hits * weights).sum())
            weight += float(weights.sum())
    return correct / weight if weight > 0 else float("nan")
