"""Inference with a trained model: load it, tokenize and window DNA, run the encoder in jitted batches.

The shared floor of the analysis tools (vectors, embed, attention, classify, predict): load_model
(a run directory or an export -> LoadedModel), tokenize_sequence / split_windows / sequence_windows
(DNA -> windows, as training tokenizes), padded_length / pack_windows, and Encoder (one jit per
input length, never per batch), over all devices (DataParallel). docs/outputs.md ("Python API of the
shared machinery") has the full reference.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dnavec_jax import export  # Orbax loads only for run directories
from dnavec_jax.errors import DNAVecError
from dnavec_jax.kernels import cpu_attention
from dnavec_jax.model import BertConfig, BertForMaskedLM
from dnavec_jax.tokenization import (
    CLS_ID,
    NUM_SPECIAL,
    PAD_ID,
    SEP_ID,
    KmerTokenizer,
    non_dna_positions,
    sequence_to_raw,
)
from dnavec_jax.training import checkpointing, sharding

MIN_LENGTH = 8  # shortest padded input: [CLS] + up to 6 k-mers + [SEP]

# ---- loading -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)  # identity semantics: params hold arrays
class LoadedModel:
    params: Any
    config: BertConfig
    tokenizer: KmerTokenizer
    source: str
    max_tokens: int
    step: int | None = None
    initialized: tuple[str, ...] = ()
    # Where config's init settings (INIT_FIELDS) come from: what a random-init twin starts from (docs/classify.md).
    init_source: str = "the run's config.json"

    @property
    def window_length(self) -> int:
        return self.max_tokens + 2


# The settings model.init_params reads that config.json cannot hold (its initializer_range and dropout are
# there): an export keeps them in dnavec.json's "model" (every export writes it); one written before a setting
# existed lacks it and gets BertConfig's default (normal, BERT's), which its model was trained from.
INIT_FIELDS = ("position_init", "word_init")


def _inference_config(config: BertConfig) -> BertConfig:
    return dataclasses.replace(config, dtype="float32", attention_implementation="xla", remat=False)


def _is_export(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file())


def load_model(path: str | os.PathLike, step: int | None = None) -> LoadedModel:
    """A training run directory or a Hugging Face export -> LoadedModel (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DNAVecError(f"--model {path}: no such file or directory")
    if not path.is_dir():
        raise DNAVecError(f"--model {path}: not a directory (expected a training run directory or an export)")
    if (path / "checkpoints").is_dir():
        loaded = _load_run(path, step)
    elif _is_export(path):
        if step is not None:
            raise DNAVecError(f"--model {path}: --step applies to a training run directory, this is an export")
        loaded = _load_export(path)
    else:
        raise DNAVecError(
            f"--model {path}: holds no model (expected a training run directory with config.json and "
            "checkpoints/, or a Hugging Face export with config.json and model.safetensors)"
        )
    if loaded.tokenizer.vocab_size != loaded.config.vocab_size:
        raise DNAVecError(
            f"--model {path}: the model's vocab_size is {loaded.config.vocab_size:,} but its tokenizer "
            f"(k {loaded.tokenizer.k_min}..{loaded.tokenizer.k_max}) has {loaded.tokenizer.vocab_size:,} ids "
            "(incompatible config)"
        )
    if not 1 <= loaded.max_tokens <= loaded.config.max_position_embeddings - 2:
        raise DNAVecError(
            f"--model {path}: {loaded.max_tokens} k-mer tokens per window do not fit "
            f"max_position_embeddings {loaded.config.max_position_embeddings} with [CLS] and [SEP]"
        )
    return loaded


def _load_run(path: Path, step: int | None) -> LoadedModel:
    params, config, train_config, loaded_step = checkpointing.load_for_inference(path, step=step)
    tokenizer = export.tokenizer_from_train_config(train_config, source=str(path / "config.json"))
    try:
        seq_length = int(train_config["data"]["prep"].get("seq_length", config.max_position_embeddings))
    except (KeyError, TypeError, AttributeError, ValueError):
        seq_length = config.max_position_embeddings
    max_tokens = min(seq_length, config.max_position_embeddings) - 2
    return LoadedModel(params, _inference_config(config), tokenizer, f"run {path} (step {loaded_step})",
                       max_tokens, loaded_step)


def _load_export(path: Path) -> LoadedModel:
    imported = export.load_hf_pretrained(path, allow_init=("pooler", "mlm_head"))
    tokenizer = imported.tokenizer
    if tokenizer is None:
        tokenizer = export.kmer_tokenizer_from_export(path)  # raises the reason it is not ours
    info = {}
    try:
        info = json.loads((path / export.DNAVEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    info = info if isinstance(info, dict) else {}
    step = info.get("step")
    recorded = info.get("model") if isinstance(info.get("model"), dict) else {}
    inits = {name: recorded[name] for name in INIT_FIELDS if name in recorded}
    try:
        config = dataclasses.replace(imported.model_config, **inits)
    except (TypeError, ValueError) as error:
        raise DNAVecError(f"--model {path}: {export.DNAVEC_FILE} model init settings: {error}") from None
    missing = [name for name in INIT_FIELDS if name not in inits]
    init_source = f"{export.DNAVEC_FILE}" + (f" (not recorded, BERT's default: {', '.join(missing)})" if missing
                                             else "")
    source = f"export {path}" + (f" (step {step})" if step is not None else "")
    return LoadedModel(imported.params, _inference_config(config), tokenizer, source,
                       config.max_position_embeddings - 2, step, tuple(imported.initialized), init_source)


# ---- tokenizing and windows ---------------------------------------------------------

class Contig(NamedTuple):
    start: int  # base offset in the sequence
    ids: np.ndarray  # int64 token ids


class Window(NamedTuple):
    ids: np.ndarray  # int32 k-mer ids, no [CLS]/[SEP]
    starts: np.ndarray  # int64 base offset in the sequence of each token's first base


def _raw(sequence: str | bytes | np.ndarray) -> np.ndarray:
    if isinstance(sequence, np.ndarray):
        return sequence.astype(np.uint8, copy=False)
    if isinstance(sequence, str):
        try:
            return np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError:
            return sequence_to_raw(sequence)  # non-ASCII letters become '?' and are reported below
    return sequence_to_raw(sequence)


def check_dna(sequence: str | bytes | np.ndarray, name: str = "sequence") -> np.ndarray:
    """Raw uint8 letters of a DNA sequence; DNAVecError naming `name` at the first non-DNA letter."""
    raw = _raw(sequence)
    bad = non_dna_positions(raw)
    if bad.size:
        position = int(bad[0])
        letter = chr(raw[position]) if isinstance(sequence, (bytes, np.ndarray)) else sequence[position]
        raise DNAVecError(
            f"{name}: invalid letter {letter!r} at position {position} ({bad.size:,} such letter(s)); "
            "a DNA sequence holds A/C/G/T, N and IUPAC codes (N and IUPAC codes split it into contigs)"
        )
    return raw


def tokenize_sequence(tokenizer: KmerTokenizer, sequence: str | bytes | np.ndarray,
                      seed: int | np.random.SeedSequence | None, name: str = "sequence",
                      k: int | None = None) -> list[Contig]:
    """Contigs of a DNA sequence and their token ids (see the module docstring)."""
    raw = check_dna(sequence, name)
    return [Contig(start, ids) for start, ids in tokenizer.encode_sequence(raw, seed=seed, k=k)]


def split_windows(contigs: Sequence[Contig], max_tokens: int) -> list[Window]:
    """Each contig's tokens in ceil(n / max_tokens) near-equal windows (see the module docstring)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    windows = []
    for contig in contigs:
        n = len(contig.ids)
        starts = np.arange(contig.start, contig.start + n, dtype=np.int64)
        pieces = -(-n // max_tokens)
        for ids, positions in zip(np.array_split(contig.ids, pieces), np.array_split(starts, pieces)):
            windows.append(Window(ids.astype(np.int32), positions))
    return windows


def sequence_windows(tokenizer: KmerTokenizer, sequence: str | bytes | np.ndarray,
                     seed: int | np.random.SeedSequence | None, max_tokens: int,
                     name: str = "sequence", k: int | None = None) -> list[Window]:
    return split_windows(tokenize_sequence(tokenizer, sequence, seed, name, k), max_tokens)


def padded_length(num_tokens: int, window_length: int) -> int:
    """Input length for a window of num_tokens k-mers (see the module docstring)."""
    needed = int(num_tokens) + 2
    if needed > window_length:
        raise ValueError(f"a window of {num_tokens} tokens does not fit {window_length} positions")
    return min(window_length, max(MIN_LENGTH, 1 << (needed - 1).bit_length()))


def pack_windows(windows_ids: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] ids [SEP] [PAD]... rows and their mask, int32 (len(windows_ids), length)."""
    input_ids = np.full((len(windows_ids), length), PAD_ID, dtype=np.int32)
    input_mask = np.zeros((len(windows_ids), length), dtype=np.int32)
    for row, ids in enumerate(windows_ids):
        n = len(ids)
        if n + 2 > length:
            raise ValueError(f"a window of {n} tokens does not fit {length} positions")
        input_ids[row, 0] = CLS_ID
        input_ids[row, 1:n + 1] = ids
        input_ids[row, n + 1] = SEP_ID
        input_mask[row, :n + 2] = 1
    return input_ids, input_mask


# ---- the encoder ----------------------------------------------------------------

def kmer_tokens(input_ids, input_mask):
    """Boolean, input_ids' shape: the real k-mer tokens (not [CLS], [SEP], [MASK] or padding), what is pooled."""
    return (input_mask > 0) & (input_ids >= NUM_SPECIAL)


def last_hidden(hidden, input_ids, input_mask):
    """The default Encoder head: the float32 last-layer hidden states."""
    del input_ids, input_mask
    return hidden


def inference_config(config: BertConfig, dtype: str = "float32") -> BertConfig:
    """`config` as inference runs it: compute dtype `dtype` (parameters stay float32; DNAVecError for a dtype
    the model has not), no remat, transformers' form of the exact GELU (model.gelu: float rounding apart, the
    same function, cheaper). Attention on a CPU: the fused float32 kernel where it builds
    (kernels/cpu_attention.py, about 2.5x faster than XLA's), else one (example, head) at a time
    (model.per_head_attention, about 2x faster than XLA's batched form); both keep the numbers. Elsewhere
    "auto" (cuDNN flash attention for bfloat16 on an NVIDIA GPU, XLA otherwise)."""
    attention = "auto"
    if jax.default_backend() == "cpu":
        attention = "cpu_fused" if dtype == "float32" and cpu_attention.available() else "xla_per_head"
    try:  # the model's own check of the dtype (the flags offer float32 and bfloat16: tools/settings.py)
        return dataclasses.replace(config, dtype=dtype, attention_implementation=attention, remat=False,
                                   gelu_form="erf")
    except ValueError as error:
        raise DNAVecError(f"--dtype {dtype!r}: {error}") from None


def compiler_options() -> dict[str, Any]:
    """XLA options of the inference programs. On a CPU: dots on XLA's Eigen kernels rather than YNNPACK's
    (12% faster end to end on the 2-core box), and max without NaN propagation (the softmax's max was the
    slowest loop; a NaN still reaches the outputs through the exponentials and the NaN check). Both keep
    the numbers of finite inputs (docs/benchmarks.md)."""
    if jax.default_backend() != "cpu":
        return {}
    return {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_enable_fast_min_max": True}


MAX_STEPS_IN_FLIGHT = 2


def bound_in_flight(step_outputs: list, limit: int = MAX_STEPS_IN_FLIGHT) -> None:
    """Waits for the step `limit` places back in `step_outputs` (each dispatched step's outputs, appended in
    order). JAX dispatches asynchronously: a training loop that never waits queues every step of an epoch,
    each holding its input batch until it runs (32 MiB a token-probe step at 1 kb sequences), so the peak
    memory grew with the task (docs/classify.md). Two in flight keep the host one batch ahead."""
    if len(step_outputs) > limit:
        jax.block_until_ready(step_outputs[-limit - 1])


class DataParallel:
    """Inference over every device of every process: the training mesh (sharding.make_mesh, data parallel),
    parameters replicated, the batch axis split. Batches hold whole rows per device (rows()); every process
    feeds the same batches and gets every row back (to_host)."""

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        self.mesh = sharding.make_mesh(fsdp=False, devices=None if devices is None else list(devices))
        self.num_devices = sharding.batch_size_divisor(self.mesh)
        self.replicated = sharding.replicated(self.mesh)
        self.batch = sharding.batch_sharding(self.mesh)

    def rows(self, batch_size: int) -> int:
        """batch_size rounded up to a multiple of the device count."""
        return -(-int(batch_size) // self.num_devices) * self.num_devices

    def put_params(self, params: Any) -> Any:
        return jax.device_put(params, self.replicated)

    def put_batch(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
        return tuple(sharding.host_batch(np.asarray(array), self.batch) for array in arrays)

    @staticmethod
    def to_host(tree: Any) -> Any:
        return sharding.to_host(tree)


class Encoder:
    """Jitted, batched BertForMaskedLM.encode (+ an optional head) over all devices; see the module docstring."""

    def __init__(self, loaded: LoadedModel, batch_size: int = 64,
                 head: Callable[[Any, Any, Any], Any] | None = None, *, dtype: str = "float32",
                 devices: Sequence[jax.Device] | None = None):
        if batch_size < 1:
            raise DNAVecError(f"--batch_size must be positive, got {batch_size}")
        self.loaded = loaded
        self.batch_size = int(batch_size)
        self.window_length = loaded.window_length
        self.parallel = DataParallel(devices)
        # Rows per dispatched batch: whole rows per device; the rows past the inputs are filler.
        self.rows = self.parallel.rows(self.batch_size)
        model = BertForMaskedLM(inference_config(loaded.config, dtype))
        head = head or last_hidden
        self._traces = 0

        def forward(params, input_ids, input_mask):
            self._traces += 1  # runs once per compiled shape (at trace time)
            hidden = model.apply({"params": params}, input_ids, input_mask, method=BertForMaskedLM.encode)
            return head(hidden.astype(jnp.float32), input_ids, input_mask)

        parallel = self.parallel
        # Each device runs the model on its own rows (every head is per row): XLA's partitioner cannot split
        # a custom call (the fused CPU attention) and would gather the batch onto every device instead.
        rows, params = parallel.batch.spec, jax.sharding.PartitionSpec()
        local = jax.shard_map(forward, mesh=parallel.mesh, in_specs=(params, rows, rows), out_specs=rows)
        self._forward = jax.jit(local, in_shardings=(parallel.replicated, parallel.batch, parallel.batch),
                                out_shardings=parallel.batch, compiler_options=compiler_options())
        self._params = parallel.put_params(jax.tree.map(lambda x: np.asarray(x, np.float32), loaded.params))

    @property
    def num_compiled(self) -> int:
        """How many input shapes have been traced and compiled so far."""
        return self._traces

    def padded_length(self, num_tokens: int) -> int:
        return padded_length(num_tokens, self.window_length)

    def _dispatch(self, input_ids: np.ndarray, input_mask: np.ndarray):
        """Starts one (rows, length) batch; rows beyond the inputs are [CLS] [SEP] filler."""
        rows, length = input_ids.shape
        if rows < self.rows:
            ids = np.full((self.rows, length), PAD_ID, dtype=np.int32)
            mask = np.zeros((self.rows, length), dtype=np.int32)
            ids[rows:, :2] = (CLS_ID, SEP_ID)
            mask[rows:, :2] = 1
            ids[:rows], mask[:rows] = input_ids, input_mask
            input_ids, input_mask = ids, mask
        batch = self.parallel.put_batch(np.asarray(input_ids, np.int32), np.asarray(input_mask, np.int32))
        return self._forward(self._params, *batch)

    def _fetch(self, outputs, rows: int):
        return jax.tree.map(lambda x: x[:rows], self.parallel.to_host(outputs))

    def _run(self, batches: Iterable[tuple[Any, np.ndarray, np.ndarray]]) -> Iterator[tuple[Any, Any]]:
        """(tag, ids, mask) batches -> (tag, outputs); batch i+1 is dispatched before batch i is fetched."""
        pending = None
        for tag, input_ids, input_mask in batches:
            started = (tag, self._dispatch(input_ids, input_mask), len(input_ids))
            if pending is not None:
                yield pending[0], self._fetch(pending[1], pending[2])
            pending = started
        if pending is not None:
            yield pending[0], self._fetch(pending[1], pending[2])

    def encode(self, input_ids: np.ndarray, input_mask: np.ndarray):
        """Head outputs (numpy, one row per input row) of (n, length) int inputs, length <= window_length."""
        input_ids, input_mask = np.asarray(input_ids), np.asarray(input_mask)
        if input_ids.ndim != 2 or input_ids.shape != input_mask.shape:
            raise ValueError(f"input_ids {input_ids.shape} and input_mask {input_mask.shape} must be equal 2-D shapes")
        if input_ids.shape[1] > self.window_length:
            raise ValueError(f"inputs of {input_ids.shape[1]} positions exceed the model's {self.window_length}")
        batches = ((None, input_ids[i:i + self.rows], input_mask[i:i + self.rows])
                   for i in range(0, len(input_ids), self.rows))
        parts = [outputs for _, outputs in self._run(batches)]
        if not parts:
            parts = [self._fetch(self._dispatch(input_ids[:0], input_mask[:0]), 0)]
        return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)

    def encode_windows(self, items: Iterable[tuple[Any, Window | np.ndarray]], max_lag: int | None = None
                       ) -> Iterator[tuple[list, Any]]:
        """(key, window) stream -> (keys, outputs) per batch, bucketed by padded length (see the module docstring).

        max_lag (default 16 batches): a window waits in its bucket while at most this many later windows
        arrive; then its bucket runs part-full. Callers that emit results in input order (embed's shards)
        thereby hold a bounded number of finished records, even when one window length is rare.
        """
        max_lag = 16 * self.rows if max_lag is None else int(max_lag)

        def batches():
            buckets: dict[int, list[tuple[int, Any, np.ndarray]]] = {}
            for count, (key, window) in enumerate(items):
                ids = window.ids if isinstance(window, Window) else np.asarray(window)
                length = self.padded_length(len(ids))
                bucket = buckets.setdefault(length, [])
                bucket.append((count, key, ids))
                if len(bucket) == self.rows:
                    yield self._pack(buckets.pop(length), length)
                oldest = min(buckets, key=lambda size: buckets[size][0][0], default=None)
                if oldest is not None and count - buckets[oldest][0][0] >= max_lag:
                    yield self._pack(buckets.pop(oldest), oldest)
            for length in sorted(buckets, key=lambda size: buckets[size][0][0]):  # oldest first
                yield self._pack(buckets[length], length)

        yield from self._run(batches())

    @staticmethod
    def _pack(bucket: list[tuple[int, Any, np.ndarray]], length: int):
        keys = [key for _, key, _ in bucket]
        input_ids, input_mask = pack_windows([ids for _, _, ids in bucket], length)
        return keys, input_ids, input_mask
