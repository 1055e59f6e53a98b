"""Sequence embeddings (`dnavec embed`): contextual vectors of DNA sequences, pooled per record.

A record is split into A/C/G/T contigs, tokenized (by default every k-mer of one k, default_k: the
middle of the model's k range; or random k seeded by the record's own letters, so its vectors
depend on nothing else), cut into near-equal windows of at most max_tokens, and encoded in batches
padded by window length; `cls` averages the windows' [CLS] states, `mean` the states of all k-mer
tokens. embed_sequences is the Python entry point (the classify probes use it), run_embed the
command. docs/outputs.md ("Sequence embeddings") has the choices, the .npz arrays and --per_token.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from dnavec_jax import files
from dnavec_jax.data import fasta
from dnavec_jax.errors import DNAVecError
from dnavec_jax.export import default_k
from dnavec_jax.tokenization import record_seed
from dnavec_jax.tools.loaded_model import (
    Encoder,
    LoadedModel,
    Window,
    check_dna,
    kmer_tokens,
    load_model,
    sequence_windows,
)
from dnavec_jax.tools.settings import EmbedSettings

# The last Encoder built, reused while the same LoadedModel object and settings come back
# (classification embeds train, dev and test with one model: one compilation per shape).
_ENCODER_CACHE: list = []


def _pool_head(hidden, input_ids, input_mask):
    real = kmer_tokens(input_ids, input_mask).astype(jnp.float32)
    return {"cls": hidden[:, 0], "sum": jnp.einsum("bl,blh->bh", real, hidden)}


def _token_head(hidden, input_ids, input_mask):
    return {**_pool_head(hidden, input_ids, input_mask), "hidden": hidden}


def _encoder(loaded: LoadedModel, batch_size: int, per_token: bool, dtype: str = "float32") -> Encoder:
    key = (int(batch_size), bool(per_token), dtype)
    if _ENCODER_CACHE and _ENCODER_CACHE[0] is loaded and _ENCODER_CACHE[1] == key:
        return _ENCODER_CACHE[2]
    encoder = Encoder(loaded, batch_size=batch_size, head=_token_head if per_token else _pool_head, dtype=dtype)
    _ENCODER_CACHE[:] = [loaded, key, encoder]
    return encoder


def parse_k(value: int | str | None) -> int | str | None:
    """--k / k=: "default", "random" (or None: random k per position) or a fixed k; DNAVecError otherwise."""
    if value is None or value == "random":
        return None
    if value == "default":
        return "default"
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DNAVecError(f"--k must be 'default', 'random' or an integer, got {value!r}") from None


def _resolve_k(value: int | str | None, loaded: LoadedModel) -> int | None:
    k = parse_k(value)
    return default_k(loaded.tokenizer) if k == "default" else k


def _check_settings(seed: int, num_tokenizations: int, batch_size: int, k: int | str | None,
                    loaded: LoadedModel | None = None) -> None:
    """One-line errors for bad settings; k as parse_k returns it (the range is checked once a model is loaded)."""
    if seed < 0:
        raise DNAVecError(f"--seed must be non-negative, got {seed}")
    if num_tokenizations < 1:
        raise DNAVecError(f"--num_tokenizations must be at least 1, got {num_tokenizations}")
    if batch_size < 1:
        raise DNAVecError(f"--batch_size must be positive, got {batch_size}")
    if k is not None and num_tokenizations != 1:
        raise DNAVecError(f"--num_tokenizations {num_tokenizations} needs --k random: with a fixed k every "
                          "tokenization is the same")
    if isinstance(k, int) and loaded is not None and not loaded.tokenizer.k_min <= k <= loaded.tokenizer.k_max:
        raise DNAVecError(f"--k {k} is outside the model's k range "
                          f"{loaded.tokenizer.k_min}..{loaded.tokenizer.k_max}")


class _Record:
    """One record in flight: its windows sent to the encoder, the sums of the outputs received so far."""

    def __init__(self, hidden_size: int):
        self.cls = np.zeros(hidden_size, np.float64)
        self.sum = np.zeros(hidden_size, np.float64)
        self.tokens = 0  # all tokenizations
        self.windows = 0
        self.received = 0
        self.sent_all = False
        self.windows_of: dict[tuple[int, int], Window] = {}  # (tokenization, window) -> window (per_token)
        self.states: dict[tuple[int, int], np.ndarray] = {}  # (tokenization, window) -> its token states

    @property
    def complete(self) -> bool:
        return self.sent_all and self.received == self.windows

    def result(self, num_tokenizations: int, per_token: bool, source: str) -> dict:
        cls = (self.cls / max(self.windows, 1)).astype(np.float32)
        mean = (self.sum / max(self.tokens, 1)).astype(np.float32)
        if not np.isfinite(self.cls).all() or not np.isfinite(self.sum).all():
            raise DNAVecError(f"{source}: the model produced NaN or Inf states (a diverged model?)")
        result = {"cls": cls, "mean": mean, "num_tokens": self.tokens // num_tokenizations,
                  "num_windows": self.windows // num_tokenizations}
        if per_token:
            order = sorted(self.windows_of)
            result["token_vectors"] = np.concatenate([self.states[key] for key in order]).astype(np.float32)
            result["token_ids"] = np.concatenate([self.windows_of[key].ids for key in order]).astype(np.int32)
            result["token_starts"] = np.concatenate([self.windows_of[key].starts for key in order]).astype(np.int64)
            result["token_tokenization"] = np.concatenate(
                [np.full(len(self.windows_of[key].ids), key[0]) for key in order]).astype(np.int32)
        return result


def embedded_records(loaded: LoadedModel, records: Iterable[tuple[str, np.ndarray]], *, seed: int,
                     num_tokenizations: int, batch_size: int, per_token: bool, k: int | None,
                     dtype: str = "float32", progress: bool = False, total: int | None = None
                     ) -> Iterator[dict]:
    """The vectors of each (name, raw letters) record, one dict per record in input order, as soon as its
    windows are done: cls, mean (hidden,) float32, num_tokens, num_windows (per tokenization); with per_token
    token_vectors, token_ids, token_starts, token_tokenization of its tokens.

    Windows of all records are batched by padded length (Encoder.encode_windows, whose max_lag bounds how
    long a window waits), so only the records still in flight are held, whatever the number of records.
    """
    _check_settings(seed, num_tokenizations, batch_size, k, loaded)
    hidden_size = loaded.config.hidden_size
    in_flight: dict[int, _Record] = {}
    finished: dict[int, dict] = {}
    bar = tqdm(total=total, desc="embed", unit="seq", disable=not progress)

    def finish(index: int) -> None:
        record = in_flight.get(index)
        if record is not None and record.complete:
            finished[index] = in_flight.pop(index).result(num_tokenizations, per_token, loaded.source)

    def windows() -> Iterator[tuple[tuple[int, int, int], np.ndarray]]:
        for index, (name, raw) in enumerate(records):
            record = in_flight[index] = _Record(hidden_size)
            for t in range(num_tokenizations):
                pieces = sequence_windows(loaded.tokenizer, raw, record_seed(seed, t, raw), loaded.max_tokens, name,
                                          k=k)
                if not pieces:
                    raise DNAVecError(f"{name}: no k-mer to embed (no run of {k or loaded.tokenizer.k_min} or "
                                      "more A/C/G/T bases)")
                for w, window in enumerate(pieces):
                    record.tokens += len(window.ids)
                    record.windows += 1
                    if per_token:
                        record.windows_of[(t, w)] = window
                    yield (index, t, w), window.ids
            record.sent_all = True
            finish(index)
            bar.update(1)

    encoder = _encoder(loaded, batch_size, per_token, dtype)
    emitted = 0
    try:
        for keys, outputs in encoder.encode_windows(windows()):
            for row, (index, t, w) in enumerate(keys):
                record = in_flight[index]
                record.cls += outputs["cls"][row]
                record.sum += outputs["sum"][row]
                record.received += 1
                if per_token:  # a copy, so that the batch's array is not kept alive
                    record.states[(t, w)] = np.array(outputs["hidden"][row, 1:1 + len(record.windows_of[(t, w)].ids)])
            for index in {key[0] for key in keys}:
                finish(index)
            while emitted in finished:
                yield finished.pop(emitted)
                emitted += 1
        for index in list(in_flight):
            finish(index)
        while emitted in finished:
            yield finished.pop(emitted)
            emitted += 1
    finally:
        bar.close()
    if in_flight or finished:  # cannot happen: every window comes back
        raise RuntimeError(f"{len(in_flight) + len(finished)} records were not emitted")


def _collect(results: Iterable[dict], hidden_size: int, per_token: bool) -> dict:
    """embedded_records' per-record dicts -> embed_sequences' arrays (one row per record; flat token arrays)."""
    rows = list(results)
    result = {
        "cls": np.stack([row["cls"] for row in rows]) if rows else np.zeros((0, hidden_size), np.float32),
        "mean": np.stack([row["mean"] for row in rows]) if rows else np.zeros((0, hidden_size), np.float32),
        "num_tokens": np.array([row["num_tokens"] for row in rows], np.int64),
        "num_windows": np.array([row["num_windows"] for row in rows], np.int64),
    }
    if per_token:
        empty = {"token_vectors": np.zeros((0, hidden_size), np.float32), "token_ids": np.zeros(0, np.int32),
                 "token_starts": np.zeros(0, np.int64), "token_tokenization": np.zeros(0, np.int32)}
        for name, nothing in empty.items():
            result[name] = np.concatenate([row[name] for row in rows] or [nothing])
        counts = [len(row["token_ids"]) for row in rows]
        result["token_offsets"] = np.concatenate(([0], np.cumsum(counts, dtype=np.int64))).astype(np.int64)
    return result


def _embed(loaded: LoadedModel, records: Iterable[tuple[str, np.ndarray]], num_records: int, *, seed: int,
           num_tokenizations: int, batch_size: int, per_token: bool, progress: bool, k: int | None,
           dtype: str = "float32") -> dict:
    """The pooled (and per-token) vectors of (name, raw letters) records (embed_sequences' keys)."""
    seen = [0]

    def counted():
        for record in records:
            seen[0] += 1
            yield record

    result = _collect(embedded_records(loaded, counted(), seed=seed, num_tokenizations=num_tokenizations,
                                       batch_size=batch_size, per_token=per_token, k=k, dtype=dtype,
                                       progress=progress, total=num_records),
                      loaded.config.hidden_size, per_token)
    if seen[0] != num_records:
        raise ValueError(f"expected {num_records} records, got {seen[0]}")
    return result


def embed_sequences(loaded: LoadedModel, sequences: Sequence[str | bytes], seed: int = 0,
                    num_tokenizations: int = 1, batch_size: int = 64, per_token: bool = False, *,
                    names: Sequence[str] | None = None, progress: bool = False,
                    k: int | str | None = "default", dtype: str = "float32") -> dict:
    """Pooled (and optionally per-token) vectors of DNA strings: the arrays of docs/outputs.md's .npz table
    (cls, mean, num_tokens, num_windows; with per_token the token_* arrays) without ids, lengths and settings.

    k: "default" (default_k), an int in the model's range, or "random"/None (seed and num_tokenizations > 1
    apply to random k only). names: used in error messages (default "sequence i"). dtype: the compute dtype,
    float32 (default) or bfloat16 (for accelerators). Raises DNAVecError for a letter that is not DNA or a
    sequence without any k-mer.
    """
    sequences = list(sequences)
    if names is None:
        names = [f"sequence {index}" for index in range(len(sequences))]
    elif len(names) != len(sequences):
        raise ValueError(f"{len(names)} names for {len(sequences)} sequences")
    if not sequences:
        raise DNAVecError("no sequences to embed")
    records = ((name, check_dna(sequence, name)) for name, sequence in zip(names, sequences))
    return _embed(loaded, records, len(sequences), seed=seed, num_tokenizations=num_tokenizations,
                  batch_size=batch_size, per_token=per_token, progress=progress, k=_resolve_k(k, loaded),
                  dtype=dtype)


# ---- the command line -------------------------------------------------

def _write_npz(path: Path, arrays: dict[str, np.ndarray], overwrite: bool) -> None:
    files.check_output_file(path, "--output", overwrite)  # again: it may have appeared since
    files.write_atomic(path, lambda handle: np.savez(handle, **arrays))


SHARDS_FORMAT = "dnavec-embed-shards"
SHARDS_VERSION = 1
INDEX_FILE = "index.json"  # written last: a directory without it is not a finished output
PROGRESS_FILE = "progress.json"  # in the partial directory only: the shards finished so far
RECORD_ARRAYS = ("ids", "lengths", "cls", "mean", "num_tokens", "num_windows")
TOKEN_ARRAYS = ("token_vectors", "token_ids", "token_starts", "token_tokenization", "token_offsets")


def _json(path: Path, value: dict) -> None:
    files.write_atomic(path, lambda handle: handle.write(json.dumps(value, indent=1) + "\n"), binary=False)


class _ShardWriter:
    """Writes records as numbered .npy shards (each file atomically, then progress.json) once the buffered
    arrays hold shard_bytes; `shards` lists what is on disk, as index.json will."""

    def __init__(self, directory: Path, fingerprint: dict, shards: list[dict], shard_bytes: int, per_token: bool):
        self.directory, self.fingerprint, self.shards = directory, fingerprint, shards
        self.shard_bytes, self.per_token = shard_bytes, per_token
        self.buffer: list[tuple[str, int, dict]] = []
        self.bytes = 0

    def add(self, name: str, length: int, result: dict) -> None:
        self.buffer.append((name, length, result))
        self.bytes += sum(value.nbytes for value in result.values() if isinstance(value, np.ndarray))
        if self.bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        rows = [result for _, _, result in self.buffer]
        arrays = {"ids": np.array([name for name, _, _ in self.buffer], dtype=str),
                  "lengths": np.array([length for _, length, _ in self.buffer], np.int64)}
        arrays.update(_collect(rows, len(rows[0]["cls"]), self.per_token))
        number = len(self.shards)
        names = {}
        for array in RECORD_ARRAYS + (TOKEN_ARRAYS if self.per_token else ()):
            names[array] = f"{array}-{number:05d}.npy"
            files.write_atomic(self.directory / names[array],
                               lambda handle, value=arrays[array]: np.save(handle, value, allow_pickle=False))
        self.shards.append({"records": len(rows), "tokens": int(arrays["num_tokens"].sum()),
                            "windows": int(arrays["num_windows"].sum()),
                            "token_rows": int(arrays["token_offsets"][-1]) if self.per_token else 0,
                            "files": names})
        _json(self.directory / PROGRESS_FILE, {"fingerprint": self.fingerprint, "shards": self.shards})
        self.buffer, self.bytes = [], 0


def _fingerprint(settings: EmbedSettings, loaded: LoadedModel, k: int | None, index: list[tuple[str, int]]) -> dict:
    """What must be the same for --resume to continue a partial run: the model, the FASTA's records and every
    setting that changes the vectors (not --batch_size: rows do not depend on their batch)."""
    records = hashlib.sha256()
    for name, length in index:
        records.update(f"{name}\t{length}\n".encode())
    return {"format": SHARDS_FORMAT, "version": SHARDS_VERSION, "model": loaded.source,
            "fasta": str(Path(settings.fasta).absolute()), "records": len(index),
            "records_sha256": records.hexdigest(), "k": k or 0, "seed": settings.seed,
            "num_tokenizations": settings.num_tokenizations, "per_token": settings.per_token,
            "max_tokens": loaded.max_tokens, "dtype": settings.dtype}


def _resumable_shards(partial: Path, fingerprint: dict) -> list[dict]:
    """The finished shards of an interrupted run in `partial` (DNAVecError unless it ran the same command);
    files of an unfinished shard are deleted."""
    try:
        progress = json.loads((partial / PROGRESS_FILE).read_text(encoding="utf-8"))
        shards = list(progress["shards"])
        listed = {name for shard in shards for name in shard["files"].values()}
    except FileNotFoundError:
        progress, shards, listed = {"fingerprint": fingerprint}, [], set()  # stopped before its first shard
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DNAVecError(f"--resume: {partial / PROGRESS_FILE} is unreadable ({error}); delete {partial} to "
                          "start again") from None
    if progress.get("fingerprint") != fingerprint:
        old = progress.get("fingerprint") or {}
        changed = sorted(key for key in set(old) | set(fingerprint) if old.get(key) != fingerprint.get(key))
        raise DNAVecError(f"--resume: the interrupted run in {partial} had other {', '.join(changed)}; run the "
                          f"same command, or pass --overwrite instead of --resume to start again")
    missing = [name for name in listed if not (partial / name).is_file()]
    if missing:
        raise DNAVecError(f"--resume: {partial} lacks {missing[0]}; delete it to start again")
    for path in partial.iterdir():
        if path.name not in listed and path.name != PROGRESS_FILE:
            path.unlink()
    return shards


def _write_shards(settings: EmbedSettings, loaded: LoadedModel, k: int | None, index: list[tuple[str, int]],
                  records: Iterator[tuple[str, np.ndarray]], output: Path, progress: bool) -> tuple[dict, dict]:
    """Embeds into files.partial_directory(output) shard by shard, resuming one left there with --resume, then
    writes index.json and renames it to output. Returns index.json's content and this run's counts (records,
    tokens, windows; resumed: the records found done)."""
    fingerprint = _fingerprint(settings, loaded, k, index)
    partial = files.partial_directory(output)
    shards: list[dict] = []
    if partial.exists():
        if settings.resume:
            shards = _resumable_shards(partial, fingerprint)
        elif settings.overwrite:
            shutil.rmtree(partial)
        else:
            raise DNAVecError(f"--output {output}: an interrupted run left {partial}; pass --resume to continue "
                              "it, or --overwrite to start again")
    partial.mkdir(exist_ok=True)
    done, resumed_shards = sum(shard["records"] for shard in shards), len(shards)
    if done:
        print(f"resuming after {done:,} of {len(index):,} records ({len(shards)} shards)", file=sys.stderr)
    writer = _ShardWriter(partial, fingerprint, shards, settings.shard_bytes, settings.per_token)
    results = embedded_records(loaded, itertools.islice(records, done, None), seed=settings.seed,
                               num_tokenizations=settings.num_tokenizations, batch_size=settings.batch_size,
                               per_token=settings.per_token, k=k, dtype=settings.dtype, progress=progress,
                               total=len(index) - done)
    for (name, length), result in zip(index[done:], results, strict=True):
        writer.add(name, length, result)
    writer.flush()
    this_run = shards[resumed_shards:]
    counts = {"records": len(index) - done, "tokens": sum(shard["tokens"] for shard in this_run),
              "windows": sum(shard["windows"] for shard in this_run), "resumed": done}
    summary = {**fingerprint, "hidden_size": loaded.config.hidden_size,
               "tokens": sum(shard["tokens"] for shard in shards),
               "windows": sum(shard["windows"] for shard in shards),
               "arrays": list(RECORD_ARRAYS + (TOKEN_ARRAYS if settings.per_token else ())), "shards": shards}
    _json(partial / INDEX_FILE, summary)
    (partial / PROGRESS_FILE).unlink()
    files.commit_directory(partial, output, "--output", settings.overwrite)
    return summary, counts


def run_embed(settings: EmbedSettings) -> int:
    """`dnavec embed`."""
    shards = settings.format == "shards"
    if settings.resume and not shards:
        raise DNAVecError("--resume needs --format shards (a .npz is written at the end only)")
    if shards:
        if Path(settings.output).suffix == ".npz":
            raise DNAVecError(f"--output {settings.output}: --format shards writes a directory; name it without .npz")
        output = files.check_output_dir(settings.output, "--output", settings.overwrite)
        if not output.parent.is_dir():
            raise DNAVecError(f"--output {settings.output}: directory {output.parent} does not exist")
    else:
        output = files.check_output_file(settings.output, "--output", settings.overwrite, suffix=".npz")
    k = parse_k(settings.k)
    _check_settings(settings.seed, settings.num_tokenizations, settings.batch_size, k)
    fasta.check_fasta_paths([settings.fasta])  # fail before loading the model
    loaded = load_model(settings.model, step=settings.step)
    k = _resolve_k(k, loaded)
    _check_settings(settings.seed, settings.num_tokenizations, settings.batch_size, k, loaded)
    started = time.perf_counter()
    progress = sys.stderr.isatty()
    with tempfile.TemporaryDirectory(prefix="dnavec_embed_") as work_dir:
        index, records = fasta.fasta_records(settings.fasta, Path(work_dir))
        if shards:
            summary, counts = _write_shards(settings, loaded, k, index, records, output, progress)
            embedded, tokens, windows = counts["records"], counts["tokens"], counts["windows"]
        else:
            result = _embed(loaded, records, len(index), seed=settings.seed,
                            num_tokenizations=settings.num_tokenizations, batch_size=settings.batch_size,
                            per_token=settings.per_token, progress=progress, k=k, dtype=settings.dtype)
            embedded, tokens, windows = len(index), int(result["num_tokens"].sum()), int(result["num_windows"].sum())
    seconds = time.perf_counter() - started
    if not shards:
        arrays = {
            "ids": np.array([name for name, _ in index], dtype=str),
            "lengths": np.array([length for _, length in index], np.int64),
            **result,
            "model": np.array(loaded.source), "k": np.array(k or 0), "seed": np.array(settings.seed),
            "num_tokenizations": np.array(settings.num_tokenizations), "max_tokens": np.array(loaded.max_tokens),
        }
        _write_npz(output, arrays, settings.overwrite)
    tokens *= settings.num_tokenizations
    windows *= settings.num_tokenizations
    where = f"{output} ({len(summary['shards'])} shards)" if shards else str(output)
    resumed = f" after the {counts['resumed']:,} of the interrupted run" if shards and counts["resumed"] else ""
    print(f"embedded {embedded:,} records{resumed} ({tokens:,} tokens in {windows:,} windows, "
          f"{settings.num_tokenizations} tokenization(s)) with {loaded.source} in {seconds:.1f}s: "
          f"{embedded / seconds:,.1f} sequences/s, {tokens / seconds:,.0f} tokens/s (compilation included) -> {where}")
    return 0
