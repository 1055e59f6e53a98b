"""Sequence embeddings (`dnavec embed`): contextual vectors of DNA sequences, pooled per record.

A record is split into A/C/G/T contigs, tokenized (by default every k-mer of one k, default_k: the
middle of the model's k range; or random k seeded by the record's own letters, so its vectors
depend on nothing else), cut into near-equal windows of at most max_tokens, and encoded in batches
padded by window length; `cls` averages the windows' [CLS] states, `mean` the states of all k-mer
tokens. embed_sequences is the Python entry point (the classify probes use it), run_embed the
command. docs/outputs.md ("Sequence embeddings") has the choices, the .npz arrays and --per_token.
"""

from __future__ import annotations

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
from dnavec_jax.tools.loaded_model import Encoder, LoadedModel, check_dna, kmer_tokens, load_model, sequence_windows
from dnavec_jax.tools.settings import EmbedSettings

# The last Encoder built, reused while the same LoadedModel object and settings come back
# (classification embeds train, dev and test with one model: one compilation per shape).
_ENCODER_CACHE: list = []


def _pool_head(hidden, input_ids, input_mask):
    real = kmer_tokens(input_ids, input_mask).astype(jnp.float32)
    return {"cls": hidden[:, 0], "sum": jnp.einsum("bl,blh->bh", real, hidden)}


def _token_head(hidden, input_ids, input_mask):
    return {**_pool_head(hidden, input_ids, input_mask), "hidden": hidden}


def _encoder(loaded: LoadedModel, batch_size: int, per_token: bool) -> Encoder:
    key = (int(batch_size), bool(per_token))
    if _ENCODER_CACHE and _ENCODER_CACHE[0] is loaded and _ENCODER_CACHE[1] == key:
        return _ENCODER_CACHE[2]
    encoder = Encoder(loaded, batch_size=batch_size, head=_token_head if per_token else _pool_head)
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


def _embed(loaded: LoadedModel, records: Iterable[tuple[str, np.ndarray]], num_records: int, *, seed: int,
           num_tokenizations: int, batch_size: int, per_token: bool, progress: bool, k: int | None) -> dict:
    """The pooled (and per-token) vectors of (name, raw letters) records (embed_sequences' keys)."""
    _check_settings(seed, num_tokenizations, batch_size, k, loaded)
    hidden_size = loaded.config.hidden_size
    cls_sum = np.zeros((num_records, hidden_size), np.float64)
    token_sum = np.zeros((num_records, hidden_size), np.float64)
    num_tokens = np.zeros(num_records, np.int64)  # all tokenizations; divided at the end
    num_windows = np.zeros(num_records, np.int64)
    token_parts: dict[tuple[int, int, int], np.ndarray] = {}
    window_info: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
    bar = tqdm(total=num_records, desc="embed", unit="seq", disable=not progress)

    def windows() -> Iterator[tuple[tuple[int, int, int], np.ndarray]]:
        seen = 0
        for index, (name, raw) in enumerate(records):
            seen += 1
            for t in range(num_tokenizations):
                pieces = sequence_windows(loaded.tokenizer, raw, record_seed(seed, t, raw), loaded.max_tokens, name,
                                          k=k)
                if not pieces:
                    raise DNAVecError(f"{name}: no k-mer to embed (no run of {k or loaded.tokenizer.k_min} or "
                                      "more A/C/G/T bases)")
                for w, window in enumerate(pieces):
                    num_tokens[index] += len(window.ids)
                    num_windows[index] += 1
                    if per_token:
                        window_info[(index, t, w)] = (window.ids, window.starts)
                    yield (index, t, w), window.ids
            bar.update(1)
        if seen != num_records:
            raise ValueError(f"expected {num_records} records, got {seen}")

    encoder = _encoder(loaded, batch_size, per_token)
    try:
        for keys, outputs in encoder.encode_windows(windows()):
            rows = np.array([key[0] for key in keys])
            np.add.at(cls_sum, rows, outputs["cls"])
            np.add.at(token_sum, rows, outputs["sum"])
            if per_token:
                for key, states in zip(keys, outputs["hidden"]):
                    token_parts[key] = states[1:1 + len(window_info[key][0])]
    finally:
        bar.close()
    if not np.isfinite(cls_sum).all() or not np.isfinite(token_sum).all():
        raise DNAVecError(f"{loaded.source}: the model produced NaN or Inf states (a diverged model?)")
    result = {
        "cls": (cls_sum / np.maximum(num_windows, 1)[:, None]).astype(np.float32),
        "mean": (token_sum / np.maximum(num_tokens, 1)[:, None]).astype(np.float32),
        "num_tokens": num_tokens // num_tokenizations,
        "num_windows": num_windows // num_tokenizations,
    }
    if per_token:
        order = sorted(token_parts)
        empty = np.zeros((0, hidden_size), np.float32)
        result["token_vectors"] = np.concatenate([token_parts[key] for key in order] or [empty]).astype(np.float32)
        result["token_ids"] = np.concatenate([window_info[key][0] for key in order] or [np.zeros(0)]).astype(np.int32)
        result["token_starts"] = np.concatenate([window_info[key][1] for key in order]
                                                or [np.zeros(0)]).astype(np.int64)
        result["token_tokenization"] = np.concatenate(
            [np.full(len(window_info[key][0]), key[1]) for key in order] or [np.zeros(0)]).astype(np.int32)
        result["token_offsets"] = np.concatenate(([0], np.cumsum(num_tokens))).astype(np.int64)
    return result


def embed_sequences(loaded: LoadedModel, sequences: Sequence[str | bytes], seed: int = 0,
                    num_tokenizations: int = 1, batch_size: int = 64, per_token: bool = False, *,
                    names: Sequence[str] | None = None, progress: bool = False,
                    k: int | str | None = "default") -> dict:
    """Pooled (and optionally per-token) vectors of DNA strings: the arrays of docs/outputs.md's .npz table
    (cls, mean, num_tokens, num_windows; with per_token the token_* arrays) without ids, lengths and settings.

    k: "default" (default_k), an int in the model's range, or "random"/None (seed and num_tokenizations > 1
    apply to random k only). names: used in error messages (default "sequence i"). Raises DNAVecError for a
    letter that is not DNA or a sequence without any k-mer.
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
                  batch_size=batch_size, per_token=per_token, progress=progress, k=_resolve_k(k, loaded))


# ---- the command line -------------------------------------------------

def _write_npz(path: Path, arrays: dict[str, np.ndarray], overwrite: bool) -> None:
    files.check_output_file(path, "--output", overwrite)  # again: it may have appeared since
    files.write_atomic(path, lambda handle: np.savez(handle, **arrays))


def run_embed(settings: EmbedSettings) -> int:
    """`dnavec embed`."""
    output = files.check_output_file(settings.output, "--output", settings.overwrite, suffix=".npz")
    k = parse_k(settings.k)
    _check_settings(settings.seed, settings.num_tokenizations, settings.batch_size, k)
    fasta.check_fasta_paths([settings.fasta])  # fail before loading the model
    loaded = load_model(settings.model, step=settings.step)
    k = _resolve_k(k, loaded)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dnavec_embed_") as work_dir:
        index, records = fasta.fasta_records(settings.fasta, Path(work_dir))
        result = _embed(loaded, records, len(index), seed=settings.seed, num_tokenizations=settings.num_tokenizations,
                        batch_size=settings.batch_size, per_token=settings.per_token, progress=sys.stderr.isatty(), k=k)
    seconds = time.perf_counter() - started
    names = [name for name, _ in index]
    arrays = {
        "ids": np.array(names, dtype=str), "lengths": np.array([length for _, length in index], np.int64),
        **result,
        "model": np.array(loaded.source), "k": np.array(k or 0), "seed": np.array(settings.seed),
        "num_tokenizations": np.array(settings.num_tokenizations), "max_tokens": np.array(loaded.max_tokens),
    }
    _write_npz(output, arrays, settings.overwrite)
    tokens = int(result["num_tokens"].sum()) * settings.num_tokenizations
    windows = int(result["num_windows"].sum()) * settings.num_tokenizations
    print(f"embedded {len(names):,} records ({tokens:,} tokens in {windows:,} windows, {settings.num_tokenizations} "
          f"tokenization(s)) with {loaded.source} in {seconds:.1f}s: {len(names) / seconds:,.1f} sequences/s, "
          f"{tokens / seconds:,.0f} tokens/s (compilation included) -> {output}")
    return 0
