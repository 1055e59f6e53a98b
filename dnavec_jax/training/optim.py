"""The optimizer: AdamW with a warmup-then-decay schedule and a weight-decay mask (docs/training.md)."""

from __future__ import annotations

from typing import Any

import jax
import optax

from dnavec_jax.training.settings import TrainSettings


def learning_rate_schedule(train: TrainSettings) -> optax.Schedule:
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


def make_optimizer(train: TrainSettings) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(train)
    clip = float(train.grad_clip_norm) if train.grad_clip_norm > 0 else float("inf")  # same state tree either way
    tx = optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(schedule, b1=train.adam_b1, b2=train.adam_b2, eps=train.adam_eps, weight_decay=train.weight_decay,
                    mask=weight_decay_mask),
    )
    return tx, schedule
