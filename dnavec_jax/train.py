"""Pretraining: settings checks, optimizer, sharded train/eval steps, metrics, and the loop.

Reads top to bottom. The entry point is train_and_evaluate(config, workdir),
called by run_pretrain.py. Everything a user can get wrong (settings, data,
batch vs devices, workdir) is checked and reported as a one-line DNAVecError
before anything is compiled.

Loss: cross-entropy at the masked positions only, summed over the GLOBAL batch
(all devices, all processes, all accumulated microbatches) and divided by the
global sum of masked_lm_weights (the number of real masked tokens).

Metrics (train rows cover the `log_every_steps` steps since the last row; eval
rows the whole validation split):
  loss        = sum(w * CE) / sum(w), w = masked_lm_weights (nats per masked token)
  accuracy    = sum(w * [argmax(logits) == masked_lm_id]) / sum(w), argmax over the
                full vocabulary, ties to the lowest id (as numpy/torch argmax)
  perplexity  = exp(loss)
  tokens/s    = global_batch_size * seq_length * steps / wall time of those steps
  mfu         = tokens/s * model.flops_per_token(...) / (devices * peak FLOP/s of one device);
                omitted for devices without a known peak (CPU)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from dnavec_jax import checkpointing, input_pipeline, objective, sharding, structure
from dnavec_jax.errors import DNAVecError
from dnavec_jax.model import BertConfig, BertForMaskedLM, flops_per_token, init_params
from dnavec_jax.tokenization import KmerTokenizer

SCHEDULES = ("linear", "cosine", "constant")
SOURCES = ("tfrecord", "synthetic")
PREPARE_HINT = ("prepare it with `python data_prep/prepare_data.py --data_dir DIR` (docs/data.md) or set "
                "--config.data.prepare_if_missing=true to prepare it from config.data.prep")


# ---- settings -----------------------------------------------------------------

def model_config_from(config) -> BertConfig:
    try:
        return BertConfig.from_dict(config.model.to_dict())
    except (TypeError, ValueError) as error:
        raise DNAVecError(str(error)) from None


def check_train_settings(config) -> None:
    """Checks of config.train / config.data that need neither data nor devices."""
    t = config.train
    for name in ("global_batch_size", "num_train_steps", "grad_accum_steps", "log_every_steps",
                 "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size"):
        if int(t[name]) <= 0:
            raise DNAVecError(f"train.{name} must be positive, got {t[name]}")
    if t.warmup_steps < 0 or t.warmup_steps > t.num_train_steps:
        raise DNAVecError(f"train.warmup_steps must lie in 0..num_train_steps ({t.num_train_steps}), "
                          f"got {t.warmup_steps}")
    if t.eval_every_steps < 0:
        raise DNAVecError(f"train.eval_every_steps must be >= 0 (0: only at the end), got {t.eval_every_steps}")
    if t.schedule not in SCHEDULES:
        raise DNAVecError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {t.schedule!r}")
    if not t.learning_rate > 0 or t.weight_decay < 0 or t.grad_clip_norm < 0:
        raise DNAVecError("train.learning_rate must be > 0, train.weight_decay and train.grad_clip_norm >= 0")
    if t.global_batch_size % t.grad_accum_steps:
        raise DNAVecError(f"train.global_batch_size ({t.global_batch_size}) must be divisible by "
                          f"train.grad_accum_steps ({t.grad_accum_steps})")
    if config.data.source not in SOURCES:
        raise DNAVecError(f"data.source must be one of {', '.join(SOURCES)}, got {config.data.source!r}")
    objective.check_objective(t.get("mlm_objective", "vocabulary"))


def check_devices(config, num_devices: int) -> None:
    t = config.train
    micro = t.global_batch_size // t.grad_accum_steps
    if micro % num_devices:
        raise DNAVecError(
            f"train.global_batch_size ({t.global_batch_size}"
            + (f" = {t.grad_accum_steps} microbatches of {micro}" if t.grad_accum_steps > 1 else "")
            + f") must be divisible by the {num_devices} data-parallel devices"
        )
    if t.eval_batch_size % num_devices:
        raise DNAVecError(f"train.eval_batch_size ({t.eval_batch_size}) must be divisible by the "
                          f"{num_devices} data-parallel devices")


@dataclasses.dataclass(frozen=True)
class DataInfo:
    source: str
    seq_length: int
    max_predictions: int
    train_files: tuple[str, ...] = ()
    validation_files: tuple[str, ...] = ()
    num_validation_examples: int = 0
    path: str = ""
    settings: dict[str, Any] | None = None  # the data-prep settings the shards were written with
    fingerprint: str = ""


def resolve_data(config, model_config: BertConfig) -> DataInfo:
    """Finds (or prepares) the dataset and checks it against the model and data configs.

    With data.prepare_if_missing, prepare_dataset(config.data.prep, data_dir)
    returns the dataset of exactly those settings (prepared now if missing);
    otherwise data_dir must hold one prepared dataset (load_prepared).
    """
    prep = config.data.prep
    if config.data.source == "synthetic":
        info = DataInfo("synthetic", int(prep.seq_length), int(prep.max_predictions),
                        num_validation_examples=int(config.data.synthetic_eval_examples))
        _check_data_shapes(info, model_config, "config.data.prep")
        return info

    data_dir = str(config.data.data_dir or "")
    if not data_dir:
        raise DNAVecError(f"set --config.data.data_dir to the prepared dataset's directory; {PREPARE_HINT}")
    from dnavec_jax import data as data_lib

    if config.data.prepare_if_missing:
        settings = data_lib.PrepSettings.from_dict(prep.to_dict())  # DNAVecError on bad settings
        if jax.process_index() == 0:
            version_dir = data_lib.prepare_dataset(settings, data_dir, progress=True)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("dnavec: dataset prepared")
            if jax.process_index() != 0:
                version_dir = data_lib.prepare_dataset(settings, data_dir, progress=False)  # finds it
        dataset = data_lib.load_prepared(version_dir)
    else:
        try:
            dataset = data_lib.load_prepared(data_dir)
        except DNAVecError as error:
            raise DNAVecError(f"{error}, or set --config.data.prepare_if_missing=true to prepare it from "
                              "config.data.prep") from None

    meta = dataset.metadata
    where = str(dataset.path)
    # config.json records the data's settings (the export builds its tokenizer from
    # them), so the shapes the user configured must be those of the data.
    for field in checkpointing.DATA_SHAPE_FIELDS:
        if field in meta and int(meta[field]) != int(prep[field]):
            raise DNAVecError(f"the dataset {where} was prepared with {field}={meta[field]}, but "
                              f"config.data.prep.{field} is {prep[field]}; set --config.data.prep.{field}="
                              f"{meta[field]} or prepare a new dataset")
    if int(meta["vocab_size"]) != model_config.vocab_size:
        raise DNAVecError(f"the dataset {where} has a vocabulary of {meta['vocab_size']} ids (k {meta.get('k_min')}"
                          f"..{meta.get('k_max')}), but model.vocab_size is {model_config.vocab_size}; set "
                          f"--config.model.vocab_size={meta['vocab_size']}")
    train_files = tuple(str(f) for f in dataset.files("train"))
    if not train_files or dataset.num_examples("train") == 0:
        raise DNAVecError(f"the dataset {where} has no training examples; {PREPARE_HINT}")
    info = DataInfo("tfrecord", int(meta["seq_length"]), int(meta["max_predictions"]), train_files,
                    tuple(str(f) for f in dataset.files("validation")), dataset.num_examples("validation"),
                    where, dict(meta.get("settings") or {}), str(meta.get("fingerprint", "")))
    _check_data_shapes(info, model_config, where)
    return info


def _check_data_shapes(info: DataInfo, model_config: BertConfig, where: str) -> None:
    if info.seq_length > model_config.max_position_embeddings:
        raise DNAVecError(f"{where}: sequences of {info.seq_length} tokens do not fit "
                          f"model.max_position_embeddings ({model_config.max_position_embeddings})")
    if info.max_predictions > info.seq_length:
        raise DNAVecError(f"{where}: max_predictions ({info.max_predictions}) exceeds seq_length ({info.seq_length})")


def check_vocabulary(config, model_config: BertConfig) -> None:
    prep = config.data.prep
    try:
        vocab = KmerTokenizer(int(prep.k_min), int(prep.k_max)).vocab_size
    except ValueError as error:
        raise DNAVecError(f"config.data.prep: {error}") from None
    if vocab != model_config.vocab_size:
        raise DNAVecError(f"model.vocab_size ({model_config.vocab_size}) does not match the k-mer vocabulary of "
                          f"k {prep.k_min}..{prep.k_max} ({vocab} ids); set --config.model.vocab_size={vocab}")


# ---- optimizer ------------------------------------------------------------------

def learning_rate_schedule(t) -> optax.Schedule:
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


def make_optimizer(t) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(t)
    clip = float(t.grad_clip_norm) if t.grad_clip_norm > 0 else float("inf")  # same state tree either way
    tx = optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps, weight_decay=t.weight_decay,
                    mask=weight_decay_mask),
    )
    return tx, schedule


# ---- state ----------------------------------------------------------------------

@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any  # float32
    opt_state: Any  # float32
    rng: jax.Array  # uint32 key data; step s uses fold_in(rng, s), so a resumed run draws the same dropout


def make_init_fn(model_config: BertConfig, tx: optax.GradientTransformation, seed: int):
    def init() -> TrainState:
        key = jax.random.key(seed)
        params = init_params(model_config, jax.random.fold_in(key, 0))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.key_data(jax.random.fold_in(key, 1)))

    return init


def state_shardings(abstract_state: TrainState, mesh) -> TrainState:
    return TrainState(
        step=sharding.replicated(mesh),
        params=sharding.state_shardings(abstract_state.params, mesh),
        opt_state=sharding.state_shardings(abstract_state.opt_state, mesh),
        rng=sharding.replicated(mesh),
    )


# ---- loss and steps -------------------------------------------------------------

def mlm_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    """Sums over all masked slots: loss_sum, correct and weight (see the module docstring); the paper's
    objective (objective.mlm_sums; objective.sums_fns gives the configured one)."""
    return objective.mlm_sums(logits, labels, weights)


def _apply(model: BertForMaskedLM, params, batch, deterministic: bool, rng=None):
    return model.apply(
        {"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
        batch["masked_lm_positions"], deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )["mlm_logits"]


def loss_and_grads(model: BertForMaskedLM, params, batch, rng, sums_fn=mlm_sums) -> tuple[Any, dict[str, jax.Array]]:
    """Gradients of the globally normalised MLM loss over a (microbatches, examples, ...) batch.

    Each microbatch's summed CE is differentiated and accumulated (lax.scan),
    then everything is divided by the total weight of all microbatches: the
    result equals one large batch's gradient, whatever the accumulation.
    """
    def micro_grads(micro, index):
        def loss_fn(p):
            logits = _apply(model, p, micro, deterministic=False, rng=jax.random.fold_in(rng, index))
            sums = sums_fn(logits, micro["masked_lm_ids"], micro["masked_lm_weights"])
            return sums["loss_sum"], sums
        return jax.grad(loss_fn, has_aux=True)(params)

    accum = batch["input_ids"].shape[0]
    if accum == 1:
        grads, sums = micro_grads(jax.tree.map(lambda x: x[0], batch), 0)
    else:
        def body(carry, xs):
            grads, sums = micro_grads(*xs)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        zeros = (jax.tree.map(jnp.zeros_like, params),
                 {name: jnp.zeros((), jnp.float32) for name in ("loss_sum", "correct", "weight")})
        (grads, sums), _ = jax.lax.scan(body, zeros, (batch, jnp.arange(accum)))
    denominator = jnp.maximum(sums["weight"], 1.0)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    return grads, sums


def make_train_step(model: BertForMaskedLM, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    sums_fn=mlm_sums):
    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grads, sums = loss_and_grads(model, state.params, batch, rng, sums_fn)
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


def log_memory(name: str, compiled) -> None:
    try:
        stats = compiled.memory_analysis()
    except Exception as error:  # not every backend implements it
        logging.info("%s: no memory analysis (%s)", name, error)
        return
    if stats is None:
        logging.info("%s: no memory analysis on this backend", name)
        return
    mib = lambda n: f"{n / 2**20:.1f} MiB"
    logging.info("%s memory per device: arguments %s, outputs %s (aliased %s), temporaries %s, code %s", name,
                 mib(stats.argument_size_in_bytes), mib(stats.output_size_in_bytes), mib(stats.alias_size_in_bytes),
                 mib(stats.temp_size_in_bytes), mib(stats.generated_code_size_in_bytes))


# ---- metrics ----------------------------------------------------------------------

# Dense bf16 peak FLOP/s of one device (one chip for TPUs), first substring match of device_kind wins.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("V100", 125e12),
    ("TPU v6", 918e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12), ("TPU v4", 275e12),
)


def peak_flops_per_device(device: jax.Device) -> float | None:
    if device.platform == "cpu":
        return None
    return peak_flops_for_kind(getattr(device, "device_kind", ""))


def peak_flops_for_kind(kind: str) -> float | None:
    """PEAK_FLOPS of an accelerator named `kind` (jax's device_kind, torch.cuda.get_device_name), None if unknown."""
    for name, peak in PEAK_FLOPS:
        if name in kind:
            return peak
    return None


class MetricWriter:
    """metrics.jsonl (one JSON object per row) + TensorBoard event files, written by process 0 only.

    Every row has "step", "split" ("train" or "eval") and "time" (unix seconds)
    next to the metric names.
    """

    def __init__(self, workdir: Path, enabled: bool, resume_step: int, tensorboard: bool = True):
        self.enabled = enabled
        self.path = workdir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        if self.path.exists():  # rows of an interrupted run beyond the restored checkpoint are replaced
            rows = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line).get("step", 0) <= resume_step]
            if len(kept) != len(rows):
                self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        if not tensorboard:
            logging.warning("TensorFlow is not installed: metrics go to %s only, no TensorBoard files", self.path)
            return
        import tensorflow as tf

        from tensorflow.core.framework import summary_pb2

        self._tb = tf.summary.create_file_writer(str(workdir / "tensorboard"))
        self._scalar_tag = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}, "time": time.time()}
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        except OSError as error:
            raise DNAVecError(f"{self.path}: cannot write the metrics ({error.strerror or error}); free disk space "
                              "or make the workdir writable, then run the same command again to resume") from None
        if self._tb is None:
            return
        import tensorflow as tf

        # tf.summary.write with the "scalars" plugin tag: what tf.summary.scalar writes, without
        # needing the tensorboard package at training time (only to view the files).
        with self._tb.as_default(step=int(step)):
            for name, value in metrics.items():
                tf.summary.write(f"{split}/{name}", tf.constant(float(value), tf.float32), metadata=self._scalar_tag)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class TrainMeter:
    """Accumulates the fetched per-step metrics of one logging interval."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None, num_devices: int):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.num_devices = peak_flops, num_devices
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.loss_sum = self.correct = self.weight = self.grad_norm = 0.0
        self.learning_rate = 0.0
        self.started = time.perf_counter()

    def add(self, metrics: dict[str, Any]) -> None:
        self.steps += 1
        self.loss_sum += float(metrics["loss_sum"])
        self.correct += float(metrics["correct"])
        self.weight += float(metrics["weight"])
        self.grad_norm += float(metrics["grad_norm"])
        self.learning_rate = float(metrics["learning_rate"])

    def summary(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        loss = self.loss_sum / max(self.weight, 1.0)
        tokens_per_s = self.tokens_per_step * self.steps / elapsed
        row = {"loss": loss, "accuracy": self.correct / max(self.weight, 1.0),
               "perplexity": math.exp(min(loss, 700.0)), "learning_rate": self.learning_rate,
               "grad_norm": self.grad_norm / max(self.steps, 1), "step_time_s": elapsed / max(self.steps, 1),
               "tokens_per_s": tokens_per_s, "masked_tokens": self.weight}
        if self.peak_flops:
            row["mfu"] = tokens_per_s * self.flops_per_token / (self.num_devices * self.peak_flops)
        return row


def evaluate(eval_step, params, batches, batch_sharding, global_batch: int) -> dict[str, float]:
    """Whole-split evaluation; the per-batch sums are fetched once and added in float64."""
    sums = []
    for batch in batches:
        arrays = sharding.global_batch(batch, batch_sharding, global_batch, example_axis=0)
        sums.append(eval_step(params, arrays))
    fetched = jax.device_get(sums)
    totals = {name: math.fsum(float(s[name]) for s in fetched) for name in fetched[0]}
    loss = totals["loss_sum"] / max(totals["weight"], 1.0)
    row = {"loss": loss, "accuracy": totals["correct"] / max(totals["weight"], 1.0),
           "perplexity": math.exp(min(loss, 700.0)), "masked_tokens": totals["weight"],
           "examples": totals["examples"]}
    if "correct_given_k" in totals:  # objective.eval_sums: the figures given the true k
        row.update(objective.given_k_columns(totals))
    return row


# ---- preemption ---------------------------------------------------------------------

class Preemption:
    """SIGTERM -> save at the next step boundary and stop.

    One process: a Python SIGTERM handler sets a flag. Several processes:
    jax.distributed's preemption service (which owns SIGTERM there) picks a step
    that every process reaches (multihost_utils.reached_preemption_sync_point).
    """

    def __init__(self, preempt_at_step: int | None = None):
        self.requested = False
        self.preempt_at_step = preempt_at_step  # tests: behave as if SIGTERM arrived before this step ended
        self._previous = None
        if jax.process_count() == 1:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handler)
            except ValueError:  # not the main thread
                self._previous = None

    def _handler(self, signum, frame):
        self.requested = True

    def reached(self, step: int) -> bool:
        if self.preempt_at_step is not None and step >= self.preempt_at_step:
            return True
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # preemption service disabled
                return False
        return self.requested

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


# ---- the loop -----------------------------------------------------------------------

def config_to_dict(config) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_dict(), default=lambda value: list(value) if isinstance(value, tuple)
                                 else str(value)))


def data_fingerprint(config, data: DataInfo, shape: input_pipeline.BatchShape) -> dict[str, Any]:
    files = hashlib.sha256("\n".join(os.path.basename(f) for f in data.train_files).encode()).hexdigest()[:16]
    return {"source": data.source, "seed": int(config.train.seed), "process_count": jax.process_count(),
            "examples_per_step": shape.examples, "grad_accum_steps": shape.grad_accum_steps,
            "shuffle_buffer": int(config.data.shuffle_buffer), "train_files": files}


def quiet_library_logs() -> None:
    """Orbax logs every save step by step at INFO; keep its warnings, drop its chatter."""
    import logging as py_logging

    class _Filter(py_logging.Filter):
        def filter(self, record):
            return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname.replace(os.sep, "/")

    handler = logging.get_absl_handler()
    if not any(isinstance(f, _Filter) or type(f).__name__ == "_Filter" for f in handler.filters):
        handler.addFilter(_Filter())


def train_and_evaluate(config, workdir: str | os.PathLike, *, preempt_at_step: int | None = None) -> dict[str, Any]:
    """Trains (or resumes) in `workdir`; returns the last train and eval metric rows.

    preempt_at_step (tests): behave as if SIGTERM arrived during that step.
    """
    workdir = Path(workdir)
    quiet_library_logs()
    model_config = model_config_from(config)
    check_train_settings(config)
    check_vocabulary(config, model_config)
    have_tf = input_pipeline.configure_tf(int(config.data.tf_threads))
    if not have_tf and config.data.source != "synthetic":
        raise DNAVecError(f"data.source {config.data.source!r} reads TFRecord shards with TensorFlow, which is not "
                          "installed (pip install tensorflow-cpu); data.source='synthetic' needs none")
    is_main = jax.process_index() == 0
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DNAVecError(f"{workdir}: cannot create the workdir ({error.strerror or error})") from None
    lock = checkpointing.WorkdirLock(workdir).acquire() if is_main else None
    try:
        return _train(config, workdir, model_config, is_main, preempt_at_step, have_tf)
    finally:
        if lock is not None:
            lock.release()


def _train(config, workdir: Path, model_config: BertConfig, is_main: bool, preempt_at_step: int | None,
           have_tf: bool) -> dict[str, Any]:
    t = config.train
    # -- everything a user can get wrong, before anything compiles --
    data = resolve_data(config, model_config)
    num_devices, process_count, process_index = jax.device_count(), jax.process_count(), jax.process_index()
    check_devices(config, num_devices)
    config_dict = config_to_dict(config)
    if data.settings:  # record what the shards were really written with
        differing = sorted(k for k, v in data.settings.items() if config_dict["data"]["prep"].get(k) != v)
        if differing and not config.data.prepare_if_missing:
            logging.warning("config.data.prep differs from the settings of the dataset %s in %s; config.json "
                            "records the dataset's", data.path, ", ".join(differing))
        config_dict["data"]["prep"] = {**config_dict["data"]["prep"], **data.settings}
        config_dict["dataset"] = {"path": data.path, "fingerprint": data.fingerprint}
    saved_config = checkpointing.read_config(workdir)
    manager = checkpointing.make_manager(workdir, keep=int(t.keep_checkpoints), async_save=bool(t.async_checkpointing))
    latest = manager.latest_step()
    if latest is not None and saved_config is not None:
        checkpointing.check_config_compatible(saved_config, config_dict, str(workdir))

    model = BertForMaskedLM(model_config)
    # ---- issue 17: the configured objective, its ceiling and the copy probe (dnavec_jax/objective.py) ----
    prep_used = config_dict["data"]["prep"]
    tokenizer = KmerTokenizer(int(prep_used["k_min"]), int(prep_used["k_max"]), prep_used.get("k_weights"))
    mlm_objective = objective.check_objective(t.get("mlm_objective", "vocabulary"))
    train_sums, eval_sums = objective.sums_fns(mlm_objective, tokenizer)
    # ---- end issue 17 ----
    tx, schedule = make_optimizer(t)
    init_fn = make_init_fn(model_config, tx, int(t.seed))
    abstract_state = jax.eval_shape(init_fn)
    if latest is not None:
        checkpointing.check_param_shapes(checkpointing.checkpoint_param_shapes(manager, latest),
                                         abstract_state.params, str(workdir))
    if is_main:
        checkpointing.write_config(workdir, config_dict)

    # -- mesh, shardings, state --
    mesh = sharding.make_mesh(bool(t.fsdp))
    state_sh = state_shardings(abstract_state, mesh)
    abstract_state = sharding.with_shardings(abstract_state, state_sh)
    accum = int(t.grad_accum_steps)
    global_micro = int(t.global_batch_size) // accum
    shape = input_pipeline.BatchShape(accum, global_micro // process_count, data.seq_length, data.max_predictions)
    train_batch_sh, eval_batch_sh = sharding.batch_sharding(mesh, 1), sharding.batch_sharding(mesh, 0)
    fingerprint = data_fingerprint(config, data, shape)
    logging.info("mesh %s over %d devices in %d process(es); parameter shardings: %s", dict(mesh.shape),
                 num_devices, process_count, sharding.describe(state_sh.params))

    start_position: input_pipeline.Position = (0, 0)
    train_time = 0.0
    if latest is None:
        state = jax.jit(init_fn, out_shardings=state_sh)()
        step = 0
    else:
        params, opt_state, meta = checkpointing.restore_train_state(manager, latest, abstract_state.params,
                                                                    abstract_state.opt_state)
        step = int(meta["step"])
        state = TrainState(
            step=jax.device_put(jnp.asarray(step, jnp.int32), state_sh.step), params=params, opt_state=opt_state,
            rng=jax.device_put(np.asarray(meta["rng"], np.uint32), state_sh.rng))
        train_time = float(meta.get("train_time_s", 0.0))
        start_position = _resume_position(meta.get("data", {}), fingerprint, process_index)
        logging.info("resumed from %s at step %d, data position (epoch, batch) %s", manager.directory, step,
                     start_position)

    # -- compile ahead of time --
    train_step = jax.jit(make_train_step(model, tx, schedule, train_sums), in_shardings=(state_sh, train_batch_sh),
                         out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
    train_step = train_step.lower(abstract_state, abstract_batch((accum, global_micro), data.seq_length,
                                                                 data.max_predictions, train_batch_sh)).compile()
    log_memory("train step", train_step)
    global_eval = int(t.eval_batch_size)
    eval_step = None
    if data.num_validation_examples > 0:
        eval_step = jax.jit(make_eval_step(model, eval_sums), in_shardings=(state_sh.params, eval_batch_sh),
                            out_shardings=sharding.replicated(mesh))
        eval_step = eval_step.lower(abstract_state.params, abstract_batch((global_eval,), data.seq_length,
                                                                         data.max_predictions, eval_batch_sh)).compile()
        log_memory("eval step", eval_step)
    else:
        logging.warning("no validation examples: evaluation is skipped")

    def eval_batches():
        local = global_eval // process_count
        if data.source == "synthetic":
            return input_pipeline.synthetic_eval_batches(
                data.num_validation_examples, local, data.seq_length, data.max_predictions,
                model_config.vocab_size, int(t.seed), process_index, process_count)
        return input_pipeline.tfrecord_eval_batches(
            data.validation_files, local, data.seq_length, data.max_predictions, process_index, process_count,
            input_pipeline.num_eval_batches(data.num_validation_examples, local, process_count))

    if data.source == "synthetic":
        train_iter = input_pipeline.synthetic_train_batches(shape, model_config.vocab_size, int(t.seed),
                                                            process_index, process_count, start_position)
    else:
        files = input_pipeline.process_files(data.train_files, process_index, process_count)
        train_iter = input_pipeline.tfrecord_train_batches(files, shape, int(t.seed), int(config.data.shuffle_buffer),
                                                           start_position)

    # -- the loop --
    total = int(t.num_train_steps)
    writer = MetricWriter(workdir, is_main, resume_step=step, tensorboard=have_tf)
    meter = TrainMeter(int(t.global_batch_size) * data.seq_length,
                       flops_per_token(model_config, data.seq_length, data.max_predictions),
                       peak_flops_per_device(jax.devices()[0]), num_devices)
    preemption = Preemption(preempt_at_step)
    position = start_position
    last_saved = latest
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    pending = None  # (step, device metrics) of the step before the newest: fetched one step late

    def record(item) -> None:
        done_step, metrics = item
        metrics = jax.device_get(metrics)
        if not bool(metrics["finite"]):
            raise DNAVecError(
                f"step {done_step}: the loss or gradient is not finite (loss {float(metrics['loss'])}, grad norm "
                f"{float(metrics['grad_norm'])}); stopped without saving this state; last good checkpoint: "
                f"{manager.latest_step() if manager.latest_step() is not None else 'none'}. Lower "
                "train.learning_rate or check the data"
            )
        meter.add(metrics)

    def save(at_step: int) -> None:
        nonlocal last_saved
        if last_saved == at_step:
            return
        positions = [list(position)]
        if process_count > 1:
            from jax.experimental import multihost_utils
            positions = multihost_utils.process_allgather(np.asarray(position, np.int64)).tolist()
        meta = {"step": at_step, "rng": np.asarray(jax.device_get(state.rng)).tolist(),
                "data": {"positions": positions, "fingerprint": fingerprint}, "train_time_s": train_time}
        jax.block_until_ready(state)
        started = time.perf_counter()
        checkpointing.save(manager, at_step, state.params, state.opt_state, meta)
        last_saved = at_step
        logging.info("checkpoint of step %d started (%.2fs blocking)", at_step, time.perf_counter() - started)

    def run_eval(at_step: int) -> None:
        nonlocal last_eval
        if eval_step is None:
            return
        started = time.perf_counter()
        last_eval = evaluate(eval_step, state.params, eval_batches(), eval_batch_sh, global_eval)
        # ---- issue 17: what the objective allows, and the copy probe on the same split ----
        probe = evaluate(eval_step, state.params, structure.copy_probe_batches(eval_batches(), tokenizer,
                                                                               data.max_predictions),
                         eval_batch_sh, global_eval)
        last_eval.update(objective.eval_columns(tokenizer, mlm_objective, probe))
        # ---- end issue 17 ----
        last_eval["eval_time_s"] = time.perf_counter() - started
        writer.write(at_step, "eval", last_eval)
        logging.info("eval at step %d: loss %.4f, accuracy %.4f over %d masked tokens", at_step,
                     last_eval["loss"], last_eval["accuracy"], last_eval["masked_tokens"])

    progress = _progress_bar(total, step, is_main)
    preempted = False
    try:
        meter.reset()
        while step < total:
            local_batch, next_position = next(train_iter)
            batch = sharding.global_batch(local_batch, train_batch_sh, global_micro, example_axis=1)
            state, metrics = train_step(state, batch)
            step += 1
            position = next_position
            if pending is not None:
                record(pending)
            pending = (step, metrics)
            progress.update(1)
            preempted = preemption.reached(step)
            boundary = step % t.log_every_steps == 0 or step == total or preempted
            checkpoint_now = step % t.checkpoint_every_steps == 0 or step == total or preempted
            eval_now = eval_step is not None and ((t.eval_every_steps and step % t.eval_every_steps == 0)
                                                  or step == total)
            if boundary or checkpoint_now or eval_now:
                record(pending)  # blocks on this step: its metrics are checked before any save
                pending = None
                interval = time.perf_counter() - meter.started
                train_time += interval
                if boundary and meter.steps:
                    last_train = meter.summary()
                    writer.write(step, "train", last_train)
                    progress.set_postfix(loss=f"{last_train['loss']:.4f}", acc=f"{last_train['accuracy']:.3f}")
                    meter.reset()
                if checkpoint_now:
                    save(step)
                if eval_now and not preempted:
                    run_eval(step)
                if preempted:
                    break
                meter.started = time.perf_counter()  # eval and checkpoint time are not step time
        if pending is not None:
            record(pending)
        if not preempted:
            if latest is not None and latest >= total and not last_eval and eval_step is not None:
                run_eval(step)  # resumed a finished run: report its figures
            save(step)
    finally:
        progress.close()
        preemption.close()
        try:
            checkpointing.wait(manager)  # the last async save is on disk, or a one-line DNAVecError
        finally:
            manager.close()
            writer.close()
    if preempted:
        logging.warning("preemption: saved step %d; run the same command again to resume", step)
    return {"step": step, "train": last_train, "eval": last_eval, "preempted": preempted}


def _resume_position(data_meta: dict[str, Any], fingerprint: dict[str, Any],
                     process_index: int) -> input_pipeline.Position:
    positions = data_meta.get("positions") or [[0, 0]]
    if data_meta.get("fingerprint") == fingerprint and len(positions) > process_index:
        epoch, batch = positions[process_index]
        return int(epoch), int(batch)
    next_epoch = max(int(p[0]) for p in positions) + 1
    changed = sorted(k for k in fingerprint if (data_meta.get("fingerprint") or {}).get(k) != fingerprint[k])
    logging.warning("the data pipeline changed since the checkpoint (%s): the exact data position cannot be "
                    "carried over; continuing at the start of epoch %d", ", ".join(changed), next_epoch)
    return next_epoch, 0


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, desc="train", unit="step")
