"""The pure step functions: train state, the train and eval steps (docs/training.md).

Loss: the objective's cross-entropy at the masked positions (objective.py), summed over the
GLOBAL batch (all devices, processes and accumulated microbatches) and divided by the global sum
of masked_lm_weights. Accuracy: argmax, ties to the lowest id, on the steps that end a logging
interval.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dnavec_jax.model import BertConfig, BertForMaskedLM, init_params
from dnavec_jax.training import sharding
from dnavec_jax.training.objective import SUM_NAMES, mlm_sums
from dnavec_jax.training.settings import PRNG_IMPLS


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any  # float32
    opt_state: Any  # float32
    # uint32 key data of train.prng_impl; step s uses fold_in(rng, s), so a resumed run draws the same dropout
    rng: jax.Array


def make_init_fn(model_config: BertConfig, tx: optax.GradientTransformation, seed: int,
                 prng_impl: str = "threefry"):
    def init() -> TrainState:
        key = jax.random.key(seed)  # parameters: threefry whatever prng_impl is, so they do not depend on it
        params = init_params(model_config, jax.random.fold_in(key, 0))
        dropout_key = jax.random.key(seed, impl=PRNG_IMPLS[prng_impl])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.key_data(jax.random.fold_in(dropout_key, 1)))

    return init


def train_state_shardings(abstract_state: TrainState, mesh) -> TrainState:
    """Where each part of the train state lives: parameters and Adam's moments by the sharding rule,
    the step and the RNG replicated."""
    return TrainState(step=sharding.replicated(mesh), params=sharding.array_shardings(abstract_state.params, mesh),
                      opt_state=sharding.array_shardings(abstract_state.opt_state, mesh),
                      rng=sharding.replicated(mesh))


def _apply(model: BertForMaskedLM, params, batch, deterministic: bool, rng=None, padded: bool = True):
    return model.apply(
        {"params": params}, batch["input_ids"], batch["input_mask"] if padded else None, batch["segment_ids"],
        batch["masked_lm_positions"], deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )["mlm_logits"]


def loss_and_grads(model: BertForMaskedLM, params, batch, rng, with_accuracy: bool | jax.Array = True,
                   padded: bool = True, sums_fn=mlm_sums) -> tuple[Any, dict[str, jax.Array]]:
    """Gradients of the globally normalised MLM loss over a (microbatches, examples, ...) batch.

    Each microbatch's summed CE is differentiated and accumulated (lax.scan),
    then everything is divided by the total weight of all microbatches: the
    result equals one large batch's gradient, whatever the accumulation.
    padded=False: the batches have no padding (the synthetic source), so no attention mask is built.
    sums_fn: the objective's sums (objective.sums_fns; the paper's mlm_sums by default).
    """
    def micro_grads(micro, index):
        def loss_fn(p):
            logits = _apply(model, p, micro, deterministic=False, rng=jax.random.fold_in(rng, index), padded=padded)
            sums = sums_fn(logits, micro["masked_lm_ids"], micro["masked_lm_weights"], with_accuracy)
            return sums["loss_sum"], sums
        return jax.grad(loss_fn, has_aux=True)(params)

    accum = batch["input_ids"].shape[0]
    if accum == 1:
        grads, sums = micro_grads(jax.tree.map(lambda x: x[0], batch), 0)
    else:
        def body(carry, xs):
            grads, sums = micro_grads(*xs)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        zeros = (jax.tree.map(jnp.zeros_like, params), {name: jnp.zeros((), jnp.float32) for name in SUM_NAMES})
        (grads, sums), _ = jax.lax.scan(body, zeros, (batch, jnp.arange(accum)))
    denominator = jnp.maximum(sums["weight"], 1.0)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    return grads, sums


def make_train_step(model: BertForMaskedLM, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    prng_impl: str = "threefry", accuracy_every: int = 1, last_step: int = 0,
                    padded: bool = True, sums_fn=mlm_sums):
    """The jitted step's function. accuracy_every, last_step: MLM accuracy (an argmax pass over the
    logits) only on the steps that end a logging interval: step numbers (after the update) that are
    multiples of accuracy_every, and last_step. padded: see loss_and_grads."""
    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=PRNG_IMPLS[prng_impl]), state.step)
        with_accuracy = ((state.step + 1) % accuracy_every == 0) | (state.step + 1 == last_step)
        grads, sums = loss_and_grads(model, state.params, batch, rng, with_accuracy, padded, sums_fn)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        loss = sums["loss_sum"] / jnp.maximum(sums["weight"], 1.0)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        # A non-finite step leaves the state untouched; the host stops the run on seeing `finite` false.
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        metrics = {**sums, "loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "finite": finite}
        return new_state, metrics

    return train_step


def make_eval_step(model: BertForMaskedLM, sums_fn=mlm_sums):
    """sums_fn: the eval sums (objective.sums_fns: the objective's, and the figures given the true k)."""
    def eval_step(params, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        logits = _apply(model, params, batch, deterministic=True)
        sums = sums_fn(logits, batch["masked_lm_ids"], batch["masked_lm_weights"])
        sums["examples"] = jnp.sum(jnp.max(batch["input_mask"], axis=-1) > 0).astype(jnp.float32)
        return sums

    return eval_step


def abstract_batch(shape: tuple[int, ...], seq_length: int, max_predictions: int, batch_sharding) -> dict:
    """ShapeDtypeStructs of a global batch whose leading dims are `shape`."""
    def spec(width, dtype):
        return jax.ShapeDtypeStruct((*shape, width), dtype, sharding=batch_sharding)

    return {"input_ids": spec(seq_length, jnp.int32), "input_mask": spec(seq_length, jnp.int32),
            "segment_ids": spec(seq_length, jnp.int32), "masked_lm_positions": spec(max_predictions, jnp.int32),
            "masked_lm_ids": spec(max_predictions, jnp.int32),
            "masked_lm_weights": spec(max_predictions, jnp.float32)}
