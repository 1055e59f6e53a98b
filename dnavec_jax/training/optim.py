"""The optimizer: AdamW with a warmup-then-decay schedule and a weight-decay mask (docs/training.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """What make_optimizer reads: pretraining provides it (TrainSettings.optimizer), so does fine-tuning
    (classify's FinetuneSettings, through finetuning.optimizer_settings). The defaults here are the ones
    both use; TrainSettings shows them as its own defaults."""

    learning_rate: float
    num_train_steps: int
    warmup_steps: int
    schedule: str = "linear"  # training.settings.SCHEDULES
    end_learning_rate_factor: float = 0.0
    weight_decay: float = 0.01
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-6
    grad_clip_norm: float = 1.0


def learning_rate_schedule(train: OptimizerSettings) -> optax.Schedule:
    """Linear warmup from 0 to learning_rate, then linear/cosine decay to end_learning_rate_factor * lr."""
    peak, end = float(train.learning_rate), float(train.learning_rate) * float(train.end_learning_rate_factor)
    decay_steps = max(1, int(train.num_train_steps) - int(train.warmup_steps))
    if train.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif train.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=float(train.end_learning_rate_factor))
    else:
        decay = optax.constant_schedule(peak)
    warmup = optax.linear_schedule(0.0, peak, max(1, int(train.warmup_steps)))
    return optax.join_schedules([warmup, decay], [int(train.warmup_steps)])


def weight_decay_mask(params: Any) -> Any:
    """Decay matrices (kernels, embeddings) only: not biases, not LayerNorm, not the untrained pooler."""
    def decays(path, leaf) -> bool:
        names = [getattr(key, "key", str(key)) for key in path]
        return leaf.ndim >= 2 and "pooler" not in names

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(train: OptimizerSettings) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(train)
    clip = float(train.grad_clip_norm) if train.grad_clip_norm > 0 else float("inf")  # same state tree either way
    tx = optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(schedule, b1=train.adam_b1, b2=train.adam_b2, eps=train.adam_eps, weight_decay=train.weight_decay,
                    mask=weight_decay_mask),
    )
    return tx, schedule
