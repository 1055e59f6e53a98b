"""Fine-tuning for `dnavec classify`: SequenceClassifier (the encoder, its pooler and a linear head)
trained with training.optim's AdamW schedule on a fresh random tokenization each epoch; the epoch
is chosen on dev MCC (docs/classify.md).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from tqdm import tqdm

from dnavec_jax.errors import DNAVecError
from dnavec_jax.model import BertConfig, BertForMaskedLM, init_params
from dnavec_jax.tokenization import CLS_ID, SEP_ID
from dnavec_jax.tools.classify.classifier import Classifier, Predictor, pooler_input, window_ids
from dnavec_jax.tools.classify.metrics import SELECT_METRIC, better, classification_metrics
from dnavec_jax.tools.classify.settings import FinetuneSettings
from dnavec_jax.tools.classify.tables import SPLITS, Task
from dnavec_jax.tools.loaded_model import bound_in_flight, check_dna, kmer_tokens, padded_length
from dnavec_jax.training import optim, sharding, steps


def optimizer_settings(settings: FinetuneSettings, total_steps: int) -> optim.OptimizerSettings:
    """Pretraining's optimizer for fine-tuning: linear warmup over warmup_fraction of the steps, linear decay
    to 0; Adam's betas and epsilon are pretraining's defaults."""
    return optim.OptimizerSettings(
        learning_rate=float(settings.learning_rate), num_train_steps=int(total_steps),
        warmup_steps=int(round(settings.warmup_fraction * total_steps)), schedule="linear",
        end_learning_rate_factor=0.0, weight_decay=float(settings.weight_decay),
        grad_clip_norm=float(settings.grad_clip_norm))


class SequenceClassifier(nn.Module):
    """All windows of a sequence -> per window encoder, pooler tanh(dense(.)) on classifier.pooler_input (the
    mean of the k-mer states, or [CLS] as transformers' BertForSequenceClassification), dropout, dense
    logits -> the mean of the windows' logits.

    Inputs (batch, windows, length) int32; windows without k-mers (the empty [CLS] [SEP] slots of
    _pack) are left out of the mean. Parameters: "bert" (BertForMaskedLM's embeddings, encoder and
    pooler, plus the mlm_bias its setup declares, unused here) and "classifier" (the dense head), so the
    export is a plain BertForSequenceClassification; classifier.Predictor applies the same rule window by
    window. The pooler starts from the checkpoint's (MLM does not train it: a fresh random layer then).
    """

    config: BertConfig
    num_classes: int
    pooling: str = "mean"  # settings.POOLINGS

    @nn.compact
    def __call__(self, input_ids, input_mask, deterministic: bool = True):
        cfg = self.config
        batch, windows, length = input_ids.shape
        ids, mask = input_ids.reshape(batch * windows, length), input_mask.reshape(batch * windows, length)
        bert = BertForMaskedLM(cfg, name="bert")
        hidden = bert(ids, mask, deterministic=deterministic)["hidden_states"]
        pooled = jnp.tanh(bert.pooler(pooler_input(hidden, ids, mask, self.pooling).astype(hidden.dtype)))
        pooled = nn.Dropout(cfg.hidden_dropout_rate)(pooled.astype(jnp.float32), deterministic=deterministic)
        logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(cfg.initializer_range),
                          param_dtype=jnp.float32, name="classifier")(pooled).reshape(batch, windows, -1)
        real = kmer_tokens(input_ids, input_mask).any(-1).astype(jnp.float32)  # windows that hold k-mers
        return jnp.einsum("bw,bwc->bc", real, logits) / jnp.maximum(real.sum(-1, keepdims=True), 1.0)


def _window_ids(loaded, sequences: Sequence[str], names: Sequence[str], seed: int, tokenization: int
                ) -> list[list[np.ndarray]]:
    """Per sequence, its windows' k-mer ids under tokenization t (what classifier.Predictor classifies for t = 0)."""
    return [window_ids(loaded, check_dna(sequence, name), seed, tokenization, name)
            for sequence, name in zip(sequences, names)]


def _pack(window_lists: Sequence[list[np.ndarray]], rows: int, windows: int, length: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, windows, length) int32 ids and mask; unused slots are empty [CLS] [SEP] windows."""
    input_ids = np.zeros((rows, windows, length), np.int32)
    input_mask = np.zeros((rows, windows, length), np.int32)
    input_ids[:, :, 0], input_ids[:, :, 1] = CLS_ID, SEP_ID
    input_mask[:, :, :2] = 1
    for row, sequence_windows in enumerate(window_lists):
        for slot, ids in enumerate(sequence_windows):
            n = len(ids)
            input_ids[row, slot, 1:n + 1] = ids
            input_ids[row, slot, n + 1] = SEP_ID
            input_mask[row, slot, :n + 2] = 1
    return input_ids, input_mask


def finetune(loaded, task: Task, settings: FinetuneSettings,
             log: Callable[[str], None] | None = None, progress: bool = False) -> dict[str, Any]:
    """Fine-tunes the encoder with a classification head (see the module docstring).

    Returns dev/test metrics, "selected", and (not for results.json) "classifier": the best epoch's
    classifier.Classifier, "probs": its dev/test probabilities by classifier.Predictor's rule.
    """
    settings.check()
    log = log or (lambda message: None)
    seed, batch_size = int(settings.seed), int(settings.batch_size)
    mesh = sharding.make_mesh(False)
    divisor = sharding.batch_size_divisor(mesh)
    if batch_size % divisor:
        raise DNAVecError(f"--batch_size ({batch_size}) must be divisible by the {divisor} data-parallel devices")
    process_count, process_index = jax.process_count(), jax.process_index()
    local_rows = batch_size // process_count

    names = {split: task.splits[split].row_names() for split in SPLITS}
    sequences = {split: task.sequences(split) for split in SPLITS}
    labels = {split: task.labels(split) for split in SPLITS}
    eval_windows = {split: _window_ids(loaded, sequences[split], names[split], seed, 0) for split in ("dev", "test")}
    train_windows = _window_ids(loaded, sequences["train"], names["train"], seed, 0)
    # Window counts and sizes depend on the lengths only, never on the tokenization.
    every = [w for split in (train_windows, *eval_windows.values()) for w in split]
    num_windows = max(len(w) for w in every)
    length = padded_length(max(len(ids) for w in every for ids in w), loaded.window_length)
    num_classes = len(task.classes)

    model = SequenceClassifier(loaded.config, num_classes, settings.pooling)
    example = jnp.zeros((1, num_windows, length), jnp.int32)
    initial = model.init(jax.random.fold_in(jax.random.key(seed), 0), example, example)["params"]
    pretrained = {name: loaded.params.get(name) for name in initial["bert"]}
    if jax.tree.structure(pretrained) != jax.tree.structure(initial["bert"]) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(pretrained), jax.tree.leaves(initial["bert"]))):
        raise DNAVecError(f"{loaded.source}: its encoder parameters do not have the shapes of its config")
    # The pretrained encoder, and a fresh head (normal(initializer_range) kernel, zero bias).
    host_params = {"bert": jax.tree.map(lambda x: np.asarray(x, np.float32), pretrained),
                   "classifier": jax.device_get(initial["classifier"])}

    steps_per_epoch = -(-len(sequences["train"]) // batch_size)
    schedule = optimizer_settings(settings, steps_per_epoch * settings.epochs)
    tx, _ = optim.make_optimizer(schedule)

    def init_state(params):
        return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)))

    state_sh = steps.train_state_shardings(jax.eval_shape(init_state, host_params), mesh)
    batch_sh = sharding.batch_sharding(mesh, 0)
    state = jax.jit(init_state, in_shardings=(state_sh.params,), out_shardings=state_sh)(
        jax.device_put(host_params, state_sh.params))

    def train_step(state, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            logits = model.apply({"params": params}, batch["input_ids"], batch["input_mask"], deterministic=False,
                                 rngs={"dropout": rng})
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["labels"])
            return jnp.sum(ce * batch["weights"]) / jnp.maximum(jnp.sum(batch["weights"]), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state)
        return new_state, {"loss": loss, "weight": jnp.sum(batch["weights"])}

    def eval_step(params, batch):
        logits = model.apply({"params": params}, batch["input_ids"], batch["input_mask"], deterministic=True)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    replicated = sharding.replicated(mesh)
    train_step = jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                         donate_argnums=0)
    eval_step = jax.jit(eval_step, in_shardings=(state_sh.params, batch_sh), out_shardings=replicated)

    def make_batch(window_lists, batch_labels):
        ids, mask = _pack(window_lists, batch_size, num_windows, length)
        rows = len(window_lists)
        local = {"input_ids": ids, "input_mask": mask,
                 "labels": np.pad(np.asarray(batch_labels, np.int32), (0, batch_size - rows)),
                 "weights": (np.arange(batch_size) < rows).astype(np.float32)}
        local = {name: array[process_index * local_rows:(process_index + 1) * local_rows]
                 for name, array in local.items()}
        return sharding.global_batch(local, batch_sh, batch_size, example_axis=0)

    def predict(params, split):
        outputs = []
        for start in range(0, len(eval_windows[split]), batch_size):
            chunk = eval_windows[split][start:start + batch_size]
            outputs.append((len(chunk), eval_step(params, make_batch(chunk, np.zeros(len(chunk))))))
        return np.concatenate([np.asarray(jax.device_get(probs))[:rows] for rows, probs in outputs])

    best_score, best_epoch, best_params, history = None, 0, None, []
    waited = 0
    started = time.perf_counter()
    for epoch in range(settings.epochs):
        windows = train_windows if epoch == 0 or not settings.retokenize else _window_ids(
            loaded, sequences["train"], names["train"], seed, epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(windows))
        step_metrics = []
        for start in tqdm(range(0, len(order), batch_size), desc=f"finetune epoch {epoch + 1}", unit="step",
                          disable=not progress, leave=False):
            rows = order[start:start + batch_size]
            state, metrics = train_step(state, make_batch([windows[i] for i in rows], labels["train"][rows]))
            step_metrics.append(metrics)  # fetched once per epoch
            bound_in_flight(step_metrics)
        fetched = jax.device_get(step_metrics)
        loss = math.fsum(float(m["loss"]) * float(m["weight"]) for m in fetched) / len(order)
        if not math.isfinite(loss):
            raise DNAVecError(f"fine-tuning diverged in epoch {epoch + 1} (train loss {loss}); lower --learning_rate")
        dev = classification_metrics(labels["dev"], predict(state.params, "dev"))
        improved = better(dev[SELECT_METRIC], best_score)
        history.append({"epoch": epoch + 1, "train_loss": round(loss, 6), **{f"dev_{k}": v for k, v in dev.items()}})
        log(f"finetune epoch {epoch + 1}/{settings.epochs}: train loss {loss:.4f}, dev accuracy "
            f"{dev['accuracy']:.4f}, dev MCC {dev['mcc']:.4f}" + (" (best)" if improved else ""))
        if improved:
            best_score, best_epoch, waited = dev[SELECT_METRIC], epoch + 1, 0
            best_params = jax.device_get(state.params)  # a host copy: the next step donates state's buffers
        elif (epoch + 1) * steps_per_epoch > schedule.warmup_steps:  # warmup epochs do not count
            waited += 1
            if waited >= settings.patience:
                break
    train_time = time.perf_counter() - started
    # The reported metrics come from the rule predictions/*.csv and `dnavec predict` use (window by window,
    # as transformers runs the export); the per-epoch dev figures above batch whole sequences (same math,
    # other padding: they agree to float rounding).
    classifier = Classifier(dataclasses.replace(loaded, params={**loaded.params, **best_params["bert"]}),
                            np.asarray(best_params["classifier"]["kernel"], np.float32),
                            np.asarray(best_params["classifier"]["bias"], np.float32),
                            tuple(task.classes), seed, task.max_length, settings.pooling)
    predictor = Predictor(classifier)
    probs = {split: predictor.probabilities(zip(names[split], sequences[split]), len(sequences[split]))
             for split in ("dev", "test")}
    return {"dev": classification_metrics(labels["dev"], probs["dev"]),
            "test": classification_metrics(labels["test"], probs["test"]),
            "selected": {"epoch": best_epoch, "epochs_run": len(history),
                         "windows_per_sequence": num_windows, "window_length": length,
                         "steps": steps_per_epoch * len(history),
                         "train_time_s": round(train_time, 2), "history": history},
            "probs": probs, "classifier": classifier}


def random_init_model(loaded, seed: int):
    """`loaded` with the weights pretraining starts from (model.init_params, key `seed`): the control model, its
    random-init twin. Same architecture, init settings (word_init, position_init, initializer_range), dropout and
    tokenizer, from a run directory or an export alike (loaded_model.INIT_FIELDS); only the weights differ."""
    params = jax.device_get(init_params(loaded.config, jax.random.key(seed)))
    return dataclasses.replace(loaded, params=params, source=f"random init (seed {seed}) of {loaded.source}",
                               step=None, initialized=())


def twin_settings(loaded) -> dict[str, Any]:
    """What the random-init twin is built with (results.json): its init settings, dropout and their source."""
    config = loaded.config
    return {"word_init": config.word_init, "position_init": config.position_init,
            "initializer_range": config.initializer_range, "hidden_dropout_rate": config.hidden_dropout_rate,
            "init_settings_from": loaded.init_source}
