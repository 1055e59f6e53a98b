"""The optimizer: AdamW with a warmup-then-decay schedule and a weight-decay mask (docs/training.md)."""

from __future__ import annotations

from typing import Any

import jax
import optax

from dnavec_jax.training.settings import TrainSettings


def learning_rate_schedule(t: TrainSettings) -> optax.Schedule:
    """Linear warmup from 0 to learning_rate, then linear/cosine decay to end_learning_rate_factor * lr."""
    peak, end = float(t.learning_rate), float(t.learning_rate) * float(t.end_learning_rate_factor)
    decay_steps = max(1, int(t.num_train_steps) - int(t.warmup_steps))
    if t.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif t.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=float(t.end_learning_rate_factor))
    else:
        decay = optax.constant_schedule(peak)
    warmup = optax.linear_schedule(0.0, peak, max(1, int(t.warmup_steps)))
    return optax.join_schedules([warmup, decay], [int(t.warmup_steps)])


def weight_decay_mask(params: Any) -> Any:
    """Decay matrices (kernels, embeddings) only: not biases, not LayerNorm, not the untrained pooler."""
    def decays(path, leaf) -> bool:
        names = [getattr(key, "key", str(key)) for key in path]
        return leaf.ndim >= 2 and "pooler" not in names

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(t: TrainSettings) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(t)
    clip = float(t.grad_clip_norm) if t.grad_clip_norm > 0 else float("inf")  # same state tree either way
    tx = optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps, weight_decay=t.weight_decay,
                    mask=weight_decay_mask),
    )
    return tx, schedule
