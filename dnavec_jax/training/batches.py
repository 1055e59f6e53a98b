"""Input: the prepared TFRecord shards (or in-memory or synthetic data) -> this process's batches (docs/training.md).

Batches are dicts of numpy arrays (ids int32, masked_lm_weights float32): train
(grad_accum_steps, per-process microbatch, ...), eval (per-process batch, ...);
the loop makes global jax.Arrays of them. Training: process p reads shards
files[p::P], epoch e in a (seed, e) order, interleaved and shuffled with seeded
buffers; a position is (epoch, batches consumed), and a resume rebuilds epoch e
and skips the consumed records unparsed, so it sees exactly the batches the
uninterrupted run would have. Evaluation covers the whole split on every process
(padded with weight-0 examples). A damaged shard is a one-line DNAVecError.
TensorFlow is imported (tf_runtime.tensorflow) inside the shard readers only: the in-memory ('fasta') and
synthetic sources run without it. The in-memory source's examples are data prep's (data/memory.py), in a seeded
order per epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from dnavec_jax import data as data_lib
from dnavec_jax.data.features import BERT_FEATURES, tf_feature_spec
from dnavec_jax.errors import DNAVecError
from dnavec_jax.model import BertConfig
from dnavec_jax.tf_runtime import tensorflow
from dnavec_jax.tokenization import CLS_ID, MASK_ID, NUM_SPECIAL, SEP_ID
from dnavec_jax.training.checkpointing import DATA_SHAPE_FIELDS
from dnavec_jax.training.settings import RunSettings

FEATURES = BERT_FEATURES  # what a batch holds (the shards also hold trace features: record_index, ...)
Batch = dict[str, np.ndarray]
Position = tuple[int, int]  # (epoch, batches consumed in that epoch) of one process
PREPARE_HINT = ("prepare it with `python data_prep/prepare_data.py --data_dir DIR` (docs/data.md) or set "
                "--config.data.prepare_if_missing=true to prepare it from config.data.prep")


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """Per-process batch geometry of one training step."""

    grad_accum_steps: int
    micro_batch: int  # examples per microbatch on this process
    seq_length: int
    max_predictions: int

    @property
    def examples(self) -> int:
        return self.grad_accum_steps * self.micro_batch


def zeros_batch(rows: int, seq_length: int, max_predictions: int) -> Batch:
    """All-padding examples: contribute nothing to any sum (masked_lm_weights 0)."""
    def ints(width):
        return np.zeros((rows, width), np.int32)
    return {
        "input_ids": ints(seq_length), "input_mask": ints(seq_length), "segment_ids": ints(seq_length),
        "masked_lm_positions": ints(max_predictions), "masked_lm_ids": ints(max_predictions),
        "masked_lm_weights": np.zeros((rows, max_predictions), np.float32),
    }


def _parse_fn(seq_length: int, max_predictions: int):
    tf = tensorflow()

    spec = {name: feature for name, feature in tf_feature_spec(seq_length, max_predictions).items()
            if name in FEATURES}

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        return {name: tf.cast(parsed[name], tf.float32 if name == "masked_lm_weights" else tf.int32)
                for name in FEATURES}

    return parse


def process_files(files: Sequence[str], process_index: int, process_count: int, split: str = "train") -> list[str]:
    """The disjoint share of the training shards that one process reads."""
    files = [str(f) for f in files]
    if len(files) < process_count:
        raise DNAVecError(
            f"the {split} split has {len(files)} shard file(s), fewer than the {process_count} processes; "
            "prepare the dataset with at least one shard per process"
        )
    return files[process_index::process_count]


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


def _epoch_dataset(files: Sequence[str], epoch: int, seed: int, shape: BatchShape, shuffle_buffer: int,
                   skip_batches: int, compression: str | None):
    tf = tensorflow()

    order = np.random.default_rng([seed, epoch]).permutation(len(files))
    ds = tf.data.Dataset.from_tensor_slices([files[i] for i in order])
    ds = ds.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=compression or ""),
        cycle_length=min(len(files), 8), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    )
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=_epoch_seed(seed, epoch), reshuffle_each_iteration=False)
    ds = ds.skip(skip_batches * shape.examples)  # serialized records: skipped without parsing
    ds = ds.batch(shape.examples, drop_remainder=True)
    ds = ds.map(_parse_fn(shape.seq_length, shape.max_predictions), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.map(lambda batch: {k: tf.reshape(v, [shape.grad_accum_steps, shape.micro_batch, -1])
                               for k, v in batch.items()})
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(2)


def tfrecord_train_batches(files: Sequence[str], shape: BatchShape, seed: int, shuffle_buffer: int,
                           start: Position = (0, 0), compression: str | None = None,
                           ) -> Iterator[tuple[Batch, Position]]:
    """Endless (batch, position after it) pairs over this process's shards, from `start`."""
    epoch, skip = int(start[0]), int(start[1])
    parse = _parse_fn(shape.seq_length, shape.max_predictions)
    while True:
        consumed = skip
        dataset = _epoch_dataset(files, epoch, seed, shape, shuffle_buffer, skip, compression)
        for batch in _checked(dataset.as_numpy_iterator(), files, compression, parse, "training"):
            consumed += 1
            yield batch, (epoch, consumed)
        if consumed == 0:
            raise DNAVecError(
                f"the training shards of this process ({len(files)} file(s)) hold fewer than one batch "
                f"({shape.examples} examples); use a smaller batch or more data"
            )
        epoch, skip = epoch + 1, 0


# ---- damaged shards ---------------------------------------------------------------
# TensorFlow's read errors ("truncated record at 732550", "corrupted record at 0")
# do not say which file; tf.data interleaves several. On such an error the
# shards are read again one at a time to find the damaged one (error path only:
# record framing and checksums first, then parsing), and the run stops with a
# one-line DNAVecError naming the file and the problem.

def _checked(iterator, files: Sequence[str], compression: str | None, parse, split: str) -> Iterator:
    """Passes a tf.data numpy iterator through; a shard TensorFlow cannot read becomes a DNAVecError."""
    tf = tensorflow()

    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError:
            damaged = find_damaged_shard(files, compression, parse)
            if damaged is None:
                raise  # not a problem of one shard (e.g. an I/O error that went away): keep TF's error
            path, problem = damaged
            raise DNAVecError(
                f"{path}: damaged {split} shard: {problem}; the prepared dataset is not usable: delete "
                f"{os.path.dirname(path) or '.'} and prepare it again"
            ) from None
        yield item


def find_damaged_shard(files: Sequence[str], compression: str | None = None, parse=None) -> tuple[str, str] | None:
    """(file, problem) of the first shard TensorFlow cannot read, or None if every shard reads.

    Checks the record framing and checksums of every file, then (with `parse`)
    that every record parses as an example of the dataset.
    """
    tf = tensorflow()

    for with_parse in (False, True) if parse is not None else (False,):
        for path in files:
            ds = tf.data.TFRecordDataset(str(path), compression_type=compression or "").batch(1024)
            if with_parse:
                ds = ds.map(parse)
            try:
                for _ in ds:
                    pass
            except tf.errors.OpError as error:
                return str(path), describe_read_error(error)
    return None


def describe_read_error(error) -> str:
    """A short description of a TensorFlow read error of one TFRecord file."""
    tf = tensorflow()

    message = str(getattr(error, "message", error)).split(", value:")[0]  # not the record's bytes
    noise = (r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\]( name: ?)?|\[\[\{\{node [^}]*\}\}\]\]|"
             r"Error in user-defined function passed to \S+ transformation with iterator: [\w:]+: ")
    message = re.sub(noise, "", message)
    message = " ".join(message.encode("ascii", "backslashreplace").decode().split())
    if match := re.search(r"truncated record at (\d+)", message):
        return f"truncated (the file ends inside the record at byte {match.group(1)})"
    if match := re.search(r"corrupted record at (\d+)", message):
        if match.group(1) == "0":
            return "corrupt (not a TFRecord file: checksum mismatch at byte 0)"
        return f"corrupt (checksum mismatch in the record at byte {match.group(1)})"
    if isinstance(error, tf.errors.NotFoundError):
        return "file not found"
    if isinstance(error, tf.errors.InvalidArgumentError):
        return f"a record is not a valid example of this dataset ({message[:200]})"
    return message[:300]


def synthetic_examples(rng: np.random.Generator, rows: int, seq_length: int, max_predictions: int,
                       vocab_size: int) -> Batch:
    """Random examples with the shapes, dtypes and [CLS]/[SEP]/[MASK] layout of the real data."""
    if max_predictions > seq_length - 2 or vocab_size <= NUM_SPECIAL:
        raise DNAVecError(f"synthetic data needs max_predictions <= seq_length - 2 and a vocabulary above "
                          f"{NUM_SPECIAL} ids (got {max_predictions}, {seq_length}, {vocab_size})")
    ids = rng.integers(NUM_SPECIAL, vocab_size, size=(rows, seq_length), dtype=np.int32)
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    positions = np.sort(np.argsort(rng.random((rows, seq_length - 2)), axis=1)[:, :max_predictions] + 1, axis=1)
    positions = positions.astype(np.int32)
    labels = np.take_along_axis(ids, positions, axis=1)
    np.put_along_axis(ids, positions, MASK_ID, axis=1)
    return {
        "input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": np.zeros_like(ids),
        "masked_lm_positions": positions, "masked_lm_ids": labels,
        "masked_lm_weights": np.ones((rows, max_predictions), np.float32),
    }


def synthetic_train_batches(shape: BatchShape, vocab_size: int, seed: int, process_index: int,
                            process_count: int, start: Position = (0, 0), pool_size: int = 4,
                            ) -> Iterator[tuple[Batch, Position]]:
    """Endless synthetic batches (for throughput runs and tests), cycling a pool of `pool_size` steps.

    Microbatch a of pool step b is generated as one global array from seed
    (seed, b, a) and each process keeps its rows, so the global batches do not
    depend on the number of processes.
    """
    global_rows = shape.micro_batch * process_count
    rows = slice(process_index * shape.micro_batch, (process_index + 1) * shape.micro_batch)
    cache: dict[int, Batch] = {}

    def pool_batch(b: int) -> Batch:
        if b not in cache:
            micro = [synthetic_examples(np.random.default_rng([seed, b, a]), global_rows, shape.seq_length,
                                        shape.max_predictions, vocab_size)
                     for a in range(shape.grad_accum_steps)]
            cache[b] = {k: np.stack([m[k][rows] for m in micro]) for k in FEATURES}
        return cache[b]

    consumed = int(start[1])
    while True:
        batch = pool_batch(consumed % pool_size)
        consumed += 1
        yield {k: v.copy() for k, v in batch.items()}, (0, consumed)


def num_eval_batches(num_examples: int, local_batch: int, process_count: int) -> int:
    """Eval steps that cover the whole split on every process (process 0 has the most examples)."""
    return max(1, math.ceil(math.ceil(num_examples / process_count) / local_batch))


def pad_batch(batch: Batch, rows: int) -> Batch:
    """Appends all-padding examples (masked_lm_weights 0) up to `rows`."""
    have = batch["input_ids"].shape[0]
    if have == rows:
        return batch
    pad = zeros_batch(rows - have, batch["input_ids"].shape[1], batch["masked_lm_ids"].shape[1])
    return {k: np.concatenate([batch[k], pad[k]]) for k in FEATURES}


def tfrecord_eval_batches(files: Sequence[str], local_batch: int, seq_length: int, max_predictions: int,
                          process_index: int, process_count: int, num_batches: int,
                          compression: str | None = None) -> Iterator[Batch]:
    """The whole split, this process's every P-th example, in file order, padded to num_batches batches."""
    tf = tensorflow()

    ds = tf.data.TFRecordDataset([str(f) for f in files], compression_type=compression or "")
    ds = ds.shard(process_count, process_index).batch(local_batch)
    ds = ds.map(_parse_fn(seq_length, max_predictions), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    produced = 0
    parse = _parse_fn(seq_length, max_predictions)
    for batch in _checked(ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator(), files, compression, parse, "validation"):
        produced += 1
        if produced > num_batches:
            raise DNAVecError(f"the validation shards hold more examples than their metadata says "
                              f"({num_batches} batches of {local_batch} expected); re-prepare the dataset")
        yield pad_batch(batch, local_batch)
    for _ in range(num_batches - produced):
        yield zeros_batch(local_batch, seq_length, max_predictions)


def synthetic_eval_batches(num_examples: int, local_batch: int, seq_length: int, max_predictions: int,
                           vocab_size: int, seed: int, process_index: int, process_count: int) -> Iterator[Batch]:
    """A fixed synthetic 'validation split' of num_examples examples, split and padded like the real one."""
    examples = synthetic_examples(np.random.default_rng([seed, 2**31 - 1]), num_examples, seq_length,
                                  max_predictions, vocab_size)
    return array_eval_batches(examples, local_batch, process_index, process_count)


def array_eval_batches(examples: Batch, local_batch: int, process_index: int, process_count: int,
                       ) -> Iterator[Batch]:
    """A split held as arrays: this process's every P-th example, padded to the same number of batches on
    every process (as tfrecord_eval_batches)."""
    num_examples, seq_length = examples["input_ids"].shape
    max_predictions = examples["masked_lm_ids"].shape[1]
    mine = {k: v[process_index::process_count] for k, v in examples.items()}
    for index in range(num_eval_batches(num_examples, local_batch, process_count)):
        part = {k: v[index * local_batch:(index + 1) * local_batch] for k, v in mine.items()}
        yield pad_batch(part, local_batch) if len(part["input_ids"]) else zeros_batch(
            local_batch, seq_length, max_predictions)


def array_train_batches(examples: Batch, shape: BatchShape, seed: int, process_index: int, process_count: int,
                        start: Position = (0, 0)) -> Iterator[tuple[Batch, Position]]:
    """Endless (batch, position after it) pairs over a training split held as arrays (the in-memory source).

    Epoch e visits the examples in a (seed, e) permutation, whole global batches only; this process takes
    its rows of each microbatch, so the global batches do not depend on the number of processes, and a
    position (epoch, batches consumed) resumes exactly.
    """
    count = len(examples["input_ids"])
    global_micro = shape.micro_batch * process_count
    per_step = shape.grad_accum_steps * global_micro
    steps_per_epoch = count // per_step  # resolve_data checked that one step fits
    mine = slice(process_index * shape.micro_batch, (process_index + 1) * shape.micro_batch)
    epoch, consumed = int(start[0]), int(start[1])
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(count)
        for step in range(consumed, steps_per_epoch):
            rows = order[step * per_step:(step + 1) * per_step].reshape(shape.grad_accum_steps, global_micro)[:, mine]
            yield {k: v[rows] for k, v in examples.items()}, (epoch, step + 1)
        epoch, consumed = epoch + 1, 0


# ---- the run's data: found (or prepared), checked, and its batch streams ----------------------------

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
    # The in-memory source's examples (data.memory.InMemoryExamples); None for the other sources.
    examples: Any = dataclasses.field(default=None, compare=False, repr=False)


def resolve_data(settings: RunSettings) -> DataInfo:
    """Finds (or prepares) the dataset and checks it against the model and data settings.

    With data.prepare_if_missing, prepare_dataset(prep, data_dir) returns the dataset of
    exactly those settings (prepared now if missing); otherwise data_dir must hold one.
    """
    prep, model_config = settings.prep, settings.model
    if settings.data.source == "synthetic":
        info = DataInfo("synthetic", prep.seq_length, prep.max_predictions,
                        num_validation_examples=settings.data.synthetic_eval_examples)
        _check_data_shapes(info, model_config, "config.data.prep")
        return info

    if settings.data.source == "fasta":
        return _in_memory_data(settings)

    data_dir = settings.data.data_dir
    if not data_dir:
        raise DNAVecError(f"set --config.data.data_dir to the prepared dataset's directory; {PREPARE_HINT}")
    if settings.data.prepare_if_missing:
        if jax.process_index() == 0:
            version_dir = data_lib.prepare_dataset(prep, data_dir, progress=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("dnavec: dataset prepared")
            if jax.process_index() != 0:
                version_dir = data_lib.prepare_dataset(prep, data_dir, progress=False)  # finds it
        dataset = data_lib.load_prepared(version_dir)
    else:
        try:
            dataset = data_lib.load_prepared(data_dir)
        except DNAVecError as error:
            raise DNAVecError(f"{error}, or set --config.data.prepare_if_missing=true to prepare it from "
                              "config.data.prep") from None

    stored = dataset.metadata
    where = str(dataset.path)
    # config.json records the data's settings (the export builds its tokenizer from
    # them), so the shapes the user configured must be those of the data.
    for field in DATA_SHAPE_FIELDS:
        if field in stored and int(stored[field]) != int(getattr(prep, field)):
            raise DNAVecError(f"the dataset {where} was prepared with {field}={stored[field]}, but "
                              f"config.data.prep.{field} is {getattr(prep, field)}; set --config.data.prep.{field}="
                              f"{stored[field]} or prepare a new dataset")
    if int(stored["vocab_size"]) != model_config.vocab_size:
        raise DNAVecError(f"the dataset {where} has a vocabulary of {stored['vocab_size']} ids (k "
                          f"{stored.get('k_min')}..{stored.get('k_max')}), but model.vocab_size is "
                          f"{model_config.vocab_size}; set --config.model.vocab_size={stored['vocab_size']}")
    train_files = tuple(str(f) for f in dataset.files("train"))
    if not train_files or dataset.num_examples("train") == 0:
        raise DNAVecError(f"the dataset {where} has no training examples; {PREPARE_HINT}")
    info = DataInfo("tfrecord", int(stored["seq_length"]), int(stored["max_predictions"]), train_files,
                    tuple(str(f) for f in dataset.files("validation")), dataset.num_examples("validation"),
                    where, dict(stored.get("settings") or {}), str(stored.get("fingerprint", "")))
    _check_data_shapes(info, model_config, where)
    return info


def _in_memory_data(settings: RunSettings) -> DataInfo:
    """data.source 'fasta': data.prep.fasta tokenized and masked now, by data prep's own code (data/memory.py)."""
    from dnavec_jax.data.memory import build_examples  # numpy only, but not needed by the other sources

    prep = settings.prep
    examples = build_examples(prep)
    where = "data.prep.fasta " + ", ".join(examples.fasta)
    info = DataInfo("fasta", prep.seq_length, prep.max_predictions, train_files=examples.fasta,
                    num_validation_examples=examples.num_examples("validation"), path=where,
                    fingerprint=prep.fingerprint(), examples=examples)
    _check_data_shapes(info, settings.model, where)
    train = settings.train
    if examples.num_examples("train") < train.global_batch_size:
        raise DNAVecError(f"{where}: {examples.num_examples('train')} training examples, fewer than one global batch "
                          f"({train.global_batch_size}); use a smaller train.global_batch_size, more data or a "
                          "larger data.prep.dupe_factor")
    logging.info("in-memory data from %s: %d training and %d validation examples, %.1f%% of the masked tokens "
                 "readable from their neighbours", where, examples.num_examples("train"),
                 examples.num_examples("validation"),
                 100 * examples.stats["train"]["leaked"] / max(examples.stats["train"]["predictions"], 1))
    return info


def _check_data_shapes(info: DataInfo, model_config: BertConfig, where: str) -> None:
    if info.seq_length > model_config.max_position_embeddings:
        raise DNAVecError(f"{where}: sequences of {info.seq_length} tokens do not fit "
                          f"model.max_position_embeddings ({model_config.max_position_embeddings})")
    if info.max_predictions > info.seq_length:
        raise DNAVecError(f"{where}: max_predictions ({info.max_predictions}) exceeds seq_length ({info.seq_length})")


def batch_shape(settings: RunSettings, data: DataInfo) -> BatchShape:
    """This process's share of one step's batch."""
    train = settings.train
    return BatchShape(train.grad_accum_steps, train.micro_batch_size // jax.process_count(), data.seq_length,
                      data.max_predictions)


def pipeline_fingerprint(settings: RunSettings, data: DataInfo, shape: BatchShape) -> dict[str, Any]:
    """What a saved data position means: resuming keeps the position only if all of this is unchanged."""
    files = hashlib.sha256("\n".join(os.path.basename(f) for f in data.train_files).encode()).hexdigest()[:16]
    return {"source": data.source, "seed": settings.train.seed, "process_count": jax.process_count(),
            "examples_per_step": shape.examples, "grad_accum_steps": shape.grad_accum_steps,
            "shuffle_buffer": settings.data.shuffle_buffer, "train_files": files}


def resume_position(data_meta: dict[str, Any], fingerprint: dict[str, Any], process_index: int) -> Position:
    """This process's saved data position, or the next epoch's start when the pipeline changed."""
    positions = data_meta.get("positions") or [[0, 0]]
    if data_meta.get("fingerprint") == fingerprint and len(positions) > process_index:
        epoch, batch = positions[process_index]
        return int(epoch), int(batch)
    next_epoch = max(int(p[0]) for p in positions) + 1
    changed = sorted(k for k in fingerprint if (data_meta.get("fingerprint") or {}).get(k) != fingerprint[k])
    logging.warning("the data pipeline changed since the checkpoint (%s): the exact data position cannot be "
                    "carried over; continuing at the start of epoch %d", ", ".join(changed), next_epoch)
    return next_epoch, 0


def train_batches(settings: RunSettings, data: DataInfo, shape: BatchShape, start: Position,
                  ) -> Iterator[tuple[Batch, Position]]:
    """This process's endless (batch, position after it) stream from `start`."""
    index, count = jax.process_index(), jax.process_count()
    if data.source == "synthetic":
        return synthetic_train_batches(shape, settings.model.vocab_size, settings.train.seed, index, count, start)
    if data.source == "fasta":
        return array_train_batches(data.examples.splits["train"], shape, settings.train.seed, index, count, start)
    files = process_files(data.train_files, index, count)
    return tfrecord_train_batches(files, shape, settings.train.seed, settings.data.shuffle_buffer, start)


def eval_batches(settings: RunSettings, data: DataInfo) -> Iterator[Batch]:
    """This process's batches of the whole validation split (the same count on every process)."""
    index, count = jax.process_index(), jax.process_count()
    local = settings.train.eval_batch_size // count
    if data.source == "fasta":
        return array_eval_batches(data.examples.splits["validation"], local, index, count)
    if data.source == "synthetic":
        return synthetic_eval_batches(data.num_validation_examples, local, data.seq_length, data.max_predictions,
                                      settings.model.vocab_size, settings.train.seed, index, count)
    return tfrecord_eval_batches(data.validation_files, local, data.seq_length, data.max_predictions, index, count,
                                 num_eval_batches(data.num_validation_examples, local, count))
