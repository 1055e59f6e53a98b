"""Probes on frozen DNAVec features: pooled vectors (static, cls, mean) with logistic regression, and
per-token linear scores pooled by log-sum-exp (static_tokens, tokens), trained with AdamW on minibatches read
from the token features spilled to disk (docs/classify.md has the features and the measured memory table).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from dnavec_jax.errors import DNAVecError
from dnavec_jax.tools.classify.baseline import logistic_regression
from dnavec_jax.tools.classify.metrics import SELECT_METRIC, better, classification_metrics
from dnavec_jax.tools.classify.settings import PROBE_FEATURES, TOKEN_FEATURES, TokenProbeSettings
from dnavec_jax.tools.classify.tables import SPLITS, Task
from dnavec_jax.tools.embed import embedded_records, record_seed
from dnavec_jax.tools.loaded_model import bound_in_flight, check_dna, tokenize_sequence
from dnavec_jax.tools.vectors import input_embeddings


class SpilledRows:
    """Rows appended to an anonymous temporary file (in TMPDIR; gone when closed or when the process ends) and
    read back by slice, `rows[start:end]`, with explicit reads: the process holds only the rows it reads. (A
    memory map would count every page it has read as the process's memory until the map closes.)"""

    def __init__(self, dtype, row_shape: tuple[int, ...] = ()):
        self.dtype, self.row_shape = np.dtype(dtype), tuple(row_shape)
        self._row_bytes = self.dtype.itemsize * math.prod(self.row_shape)
        self._file = tempfile.TemporaryFile(prefix="dnavec_probe_features_")
        self._dirty = False
        self.length = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.length, *self.row_shape)

    @property
    def nbytes(self) -> int:
        return self.length * self._row_bytes

    def __len__(self) -> int:
        return self.length

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        self._file.write(rows.tobytes())
        self._dirty = True
        self.length += len(rows)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("SpilledRows reads slices of rows")
        start, stop, step = index.indices(self.length)
        if step != 1:
            raise ValueError("SpilledRows reads contiguous rows")
        if self._dirty:
            self._file.flush()
            self._dirty = False
        count = max(stop - start, 0)
        data = os.pread(self._file.fileno(), count * self._row_bytes, start * self._row_bytes)
        return np.frombuffer(data, self.dtype).reshape(count, *self.row_shape)


class TokenFeatures(NamedTuple):
    """Per-token features of a split, record after record (embed's per-token layout), stored compactly and on
    disk (SpilledRows) by probe_features: `values` are the vectors in float16 (half of float32's bytes), or int32
    ids into `table` (static_tokens: 4 bytes a token instead of hidden x 4). numpy arrays serve as well."""
    values: np.ndarray | SpilledRows  # (tokens, dim) vectors, or (tokens,) ids into table
    offsets: np.ndarray  # (n + 1,) int64: record i's tokens are rows offsets[i]:offsets[i + 1]
    table: np.ndarray | None = None  # (vocab, dim) float32 when values are ids

    @property
    def dim(self) -> int:
        return int((self.table if self.table is not None else self.values).shape[1])

    def rows(self, start: int, end: int) -> np.ndarray:
        """float32 (end - start, dim) vectors of tokens start..end."""
        values = self.values[start:end]
        return (self.table[values] if self.table is not None else values).astype(np.float32)

    def moments(self, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over all tokens, accumulated in float64 chunk by chunk (no full copy)."""
        total, total_sq, count = np.zeros(self.dim), np.zeros(self.dim), int(self.offsets[-1])
        for start in range(0, count, chunk):
            part = self.rows(start, min(start + chunk, count)).astype(np.float64)
            total += part.sum(axis=0)
            total_sq += np.square(part).sum(axis=0)
        mean = total / max(count, 1)
        return mean, np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0))


def probe_features(loaded, task: Task, seed: int, batch_size: int = 64,
                   features: Sequence[str] = PROBE_FEATURES, num_tokenizations: int = 1, progress: bool = False
                   ) -> dict[str, dict[str, np.ndarray | TokenFeatures]]:
    """{feature: {split: (n, hidden) float32, or TokenFeatures for TOKEN_FEATURES}} (see the module docstring).

    Each is taken over `num_tokenizations` seeded tokenizations (embed_sequences' pooling, random k; the
    token features hold the tokens of every tokenization). Memory: records stream through
    embed.embedded_records one at a time, and their token features go to disk as they come (SpilledRows:
    `tokens` tokens x hidden x 2 bytes, `static_tokens` 4 bytes a token), so the process holds one
    record's tokens, the pooled vectors and the offsets, whatever the number of sequences (docs/classify.md).
    """
    out: dict[str, dict[str, Any]] = {name: {} for name in features}
    per_token = any(name in TOKEN_FEATURES for name in features)
    table = input_embeddings(loaded) if "static" in features or "static_tokens" in features else None
    hidden = loaded.config.hidden_size
    for split in SPLITS:
        sequences, names = task.sequences(split), task.splits[split].row_names()
        if set(features) & {"cls", "mean", "tokens", "static_tokens"}:
            vectors = SpilledRows(np.float16, (hidden,)) if "tokens" in features else None
            ids = SpilledRows(np.int32) if "static_tokens" in features else None
            offsets = np.zeros(len(sequences) + 1, np.int64)
            pooled = {name: np.empty((len(sequences), hidden), np.float32) for name in ("cls", "mean")}
            records = ((name, check_dna(sequence, name)) for name, sequence in zip(names, sequences))
            embedded = embedded_records(loaded, records, seed=seed, num_tokenizations=num_tokenizations,
                                        batch_size=batch_size, per_token=per_token, k=None)
            with tqdm(total=len(sequences), desc=f"features {split}", unit="seq", disable=not progress) as bar:
                for row, result in enumerate(embedded):
                    for name in pooled:
                        pooled[name][row] = result[name]
                    if per_token:
                        if vectors is not None:
                            if np.abs(result["token_vectors"]).max(initial=0.0) > np.finfo(np.float16).max:
                                raise DNAVecError(f"{loaded.source}: token states beyond the float16 range "
                                                  "(a diverged model?)")
                            vectors.append(result["token_vectors"])
                        if ids is not None:
                            ids.append(result["token_ids"])
                        offsets[row + 1] = offsets[row] + len(result["token_ids"])
                    bar.update(1)
            for name in ("cls", "mean"):
                if name in features:
                    out[name][split] = pooled[name]
            if "tokens" in features:
                out["tokens"][split] = TokenFeatures(vectors, offsets)
            if "static_tokens" in features:
                out["static_tokens"][split] = TokenFeatures(ids, offsets, table)
        if "static" in features:
            rows = []
            for sequence, name in zip(sequences, names):
                raw = check_dna(sequence, name)
                token_ids = np.concatenate([contig.ids for t in range(num_tokenizations) for contig in
                                            tokenize_sequence(loaded.tokenizer, raw, record_seed(seed, t, raw), name)]
                                           or [np.zeros(0, np.int64)])
                if not len(token_ids):
                    raise DNAVecError(f"{name}: no k-mer to embed (no run of {loaded.tokenizer.k_min} or more "
                                      "A/C/G/T bases)")
                rows.append(table[token_ids].mean(axis=0))
            out["static"][split] = np.stack(rows).astype(np.float32)
    return out


def run_probe(features: dict[str, np.ndarray], task: Task, seed: int) -> dict[str, Any]:
    scaler = StandardScaler().fit(features["train"])
    scaled = {split: scaler.transform(features[split]) for split in SPLITS}
    return logistic_regression(scaled, {split: task.labels(split) for split in SPLITS}, seed)


def token_probe_logits(params: dict[str, jax.Array], tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """(batch, tokens, dim) standardised features -> (batch, classes): log-sum-exp over the real tokens of a
    per-token linear score."""
    scores = tokens @ params["kernel"] + params["bias"]
    return jax.nn.logsumexp(jnp.where(mask[..., None], scores, -jnp.inf), axis=1)


def _token_batch(features: TokenFeatures, rows: np.ndarray, batch_size: int, max_tokens: int,
                 center: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardised, zero-padded (batch_size, length, dim) features and their mask. Padding rows keep
    one masked-in zero token so that their log-sum-exp stays finite (their loss weight is 0).

    length: the batch's longest sequence rounded up to a power of two (at most max_tokens), so short
    sequences are not padded to the task's longest and only ~log2(max_tokens) shapes are compiled.
    """
    sizes = features.offsets[np.asarray(rows) + 1] - features.offsets[np.asarray(rows)]
    length = min(max_tokens, 1 << (max(int(sizes.max(initial=1)), 1) - 1).bit_length())
    tokens = np.zeros((batch_size, length, features.dim), np.float32)
    mask = np.zeros((batch_size, length), bool)
    for slot, row in enumerate(rows):
        start, end = features.offsets[row], features.offsets[row + 1]
        tokens[slot, :end - start] = (features.rows(start, end) - center) / scale
        mask[slot, :end - start] = True
    mask[len(rows):, 0] = True
    return tokens, mask


def token_probe(features: dict[str, TokenFeatures], labels: dict[str, np.ndarray], num_classes: int,
                settings: TokenProbeSettings, seed: int) -> dict[str, Any]:
    """Fits the token probe (see the module docstring) on train; returns dev/test metrics of the best dev epoch.

    Deterministic: zero-initialised parameters, a seeded example order per epoch, one device.
    """
    settings.check()
    train = features["train"]
    center, scale = train.moments()
    center, scale = center.astype(np.float32), (scale + 1e-6).astype(np.float32)
    max_tokens = max(int(np.diff(features[split].offsets).max()) for split in SPLITS)
    batch_size = int(settings.batch_size)
    params = {"kernel": jnp.zeros((train.dim, num_classes)), "bias": jnp.zeros((num_classes,))}
    tx = optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay,
                     mask={"kernel": True, "bias": False})
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, tokens, mask, batch_labels, weights):
        def loss_fn(params):
            ce = optax.softmax_cross_entropy_with_integer_labels(token_probe_logits(params, tokens, mask), batch_labels)
            return jnp.sum(ce * weights) / jnp.sum(weights)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    predict_step = jax.jit(lambda params, tokens, mask: jax.nn.softmax(token_probe_logits(params, tokens, mask)))

    def predict(params, split):
        count = len(features[split].offsets) - 1
        probs = []
        for start in range(0, count, batch_size):
            rows = np.arange(start, min(start + batch_size, count))
            batch = _token_batch(features[split], rows, batch_size, max_tokens, center, scale)
            probs.append(np.asarray(predict_step(params, *batch))[:len(rows)])
        return np.concatenate(probs)

    best_score, best_epoch, best_params, best_dev, history, waited = None, 0, None, None, [], 0
    for epoch in range(settings.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(labels["train"]))
        losses = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            tokens, mask = _token_batch(train, rows, batch_size, max_tokens, center, scale)
            weights = (np.arange(batch_size) < len(rows)).astype(np.float32)
            params, opt_state, loss = train_step(params, opt_state, tokens, mask,
                                                 np.pad(labels["train"][rows], (0, batch_size - len(rows))), weights)
            losses.append((loss, len(rows)))
            bound_in_flight(losses)
        loss = math.fsum(float(value) * rows for value, rows in losses) / len(order)
        dev = classification_metrics(labels["dev"], predict(params, "dev"))
        history.append({"epoch": epoch + 1, "train_loss": round(loss, 6), f"dev_{SELECT_METRIC}": dev[SELECT_METRIC]})
        if better(dev[SELECT_METRIC], best_score):
            best_score, best_epoch, best_params, best_dev, waited = dev[SELECT_METRIC], epoch + 1, params, dev, 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    probs = {split: predict(best_params, split) for split in ("dev", "test")}
    test = classification_metrics(labels["test"], probs["test"])
    return {"dev": best_dev, "test": test,
            "selected": {"epoch": best_epoch, "epochs_run": len(history), "max_tokens": max_tokens,
                         **dataclasses.asdict(settings), "history": history}, "probs": probs}
