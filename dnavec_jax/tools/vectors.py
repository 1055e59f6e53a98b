"""k-mer vectors of a trained model and their nearest neighbours (`dnavec vectors`, `dnavec neighbors`).

One row per vocabulary id (special tokens included): `input`, the word-embedding table, and
`contextual`, the last-layer state of the token presented alone as [CLS] token [SEP]. Written as
.npy and word2vec text; neighbours rank every k-mer by cosine similarity (nearest). docs/outputs.md
("k-mer vectors") has the kinds, the output files and the neighbour rules.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dnavec_jax import files
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import CLS_ID, NUM_SPECIAL, SEP_ID, KmerTokenizer
from dnavec_jax.tools.loaded_model import Encoder, LoadedModel, load_model
from dnavec_jax.tools.settings import NeighborsSettings, VectorsSettings

KINDS = ("input", "contextual")
NPY_FILES = {"input": "input_embeddings.npy", "contextual": "contextual_vectors.npy"}
W2V_FILES = {"input": "input_embeddings.w2v.txt", "contextual": "contextual_vectors.w2v.txt"}
VOCAB_FILE = "vocab.txt"
INFO_FILE = "vectors.json"
W2V_DIGITS = 7


# ---- the vectors ----------------------------------------------------------------

def input_embeddings(loaded: LoadedModel) -> np.ndarray:
    """float32 (vocab_size, hidden): the input word-embedding table, row i = token id i."""
    table = loaded.params["embeddings"]["word_embeddings"]["embedding"]
    return np.array(table[: loaded.config.vocab_size], dtype=np.float32)  # the model pads the rows (model.py)


def _token_state(hidden, input_ids, input_mask):
    del input_ids, input_mask
    return hidden[:, 1]  # [CLS] token [SEP]: the token's own position


def contextual_vectors(loaded: LoadedModel, batch_size: int = 512, progress: bool = False) -> np.ndarray:
    """float32 (vocab_size, hidden): last-layer state of every token id presented alone as [CLS] id [SEP]."""
    vocab_size = loaded.config.vocab_size
    encoder = Encoder(loaded, batch_size=batch_size, head=_token_state)
    out = np.empty((vocab_size, loaded.config.hidden_size), dtype=np.float32)
    # Every id as [CLS] id [SEP], unpadded: one (batch_size, 3) program, compiled once.
    ids = np.stack([np.full(vocab_size, CLS_ID), np.arange(vocab_size), np.full(vocab_size, SEP_ID)], axis=1)
    ids = ids.astype(np.int32)
    chunk = encoder.batch_size * 16
    with tqdm(total=vocab_size, desc="contextual vectors", unit="tok", disable=not progress) as bar:
        for start in range(0, vocab_size, chunk):
            rows = ids[start:start + chunk]
            out[start:start + len(rows)] = encoder.encode(rows, np.ones_like(rows))
            bar.update(len(rows))
    return out


def compute_vectors(loaded: LoadedModel, kind: str, batch_size: int = 512, progress: bool = False) -> np.ndarray:
    if kind == "input":
        return input_embeddings(loaded)
    if kind == "contextual":
        return contextual_vectors(loaded, batch_size=batch_size, progress=progress)
    raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")


# ---- files ----------------------------------------------------------------------

def write_word2vec(path: str | os.PathLike, vocab: Sequence[str], vectors: np.ndarray) -> None:
    """word2vec text format: "V H", then one "token v1 ... vH" line per row (W2V_DIGITS significant digits)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vocab) != len(vectors):
        raise ValueError(f"{len(vocab)} tokens for vectors of shape {vectors.shape}")
    row_format = " ".join([f"%.{W2V_DIGITS}g"] * vectors.shape[1])
    with open(path, "w", encoding="ascii") as handle:
        handle.write(f"{vectors.shape[0]} {vectors.shape[1]}\n")
        for start in range(0, len(vectors), 4096):
            block = vectors[start:start + 4096].tolist()
            handle.write("".join(f"{token} {row_format % tuple(row)}\n"
                                 for token, row in zip(vocab[start:start + 4096], block)))


def write_vectors(loaded: LoadedModel, output_dir: str | os.PathLike, *, kinds: Sequence[str] = KINDS,
                  batch_size: int = 512, overwrite: bool = False, progress: bool = False) -> dict:
    """Computes and writes the vectors of `kinds` (files: docs/outputs.md); returns the vectors.json dict."""
    output_dir = files.check_output_dir(output_dir, "--output_dir", overwrite)
    vocab = loaded.tokenizer.vocab
    timings = {}
    with files.staged_directory(output_dir, "--output_dir", overwrite) as staging:
        (staging / VOCAB_FILE).write_text("\n".join(vocab) + "\n", encoding="ascii")
        for kind in kinds:
            started = time.perf_counter()
            vectors = compute_vectors(loaded, kind, batch_size=batch_size, progress=progress)
            if not np.isfinite(vectors).all():
                raise DNAVecError(f"{loaded.source}: the {kind} vectors hold NaN or Inf (a diverged model?)")
            computed = time.perf_counter()
            np.save(staging / NPY_FILES[kind], vectors)
            write_word2vec(staging / W2V_FILES[kind], vocab, vectors)
            timings[kind] = {"compute_s": round(computed - started, 3),
                             "write_s": round(time.perf_counter() - computed, 3)}
        info = {
            "model": loaded.source, "step": loaded.step,
            "k_min": loaded.tokenizer.k_min, "k_max": loaded.tokenizer.k_max,
            "vocab_size": len(vocab), "hidden_size": loaded.config.hidden_size,
            "rows": "vocabulary id order (vocab.txt), the 5 special tokens included",
            "kinds": {kind: {"npy": NPY_FILES[kind], "word2vec": W2V_FILES[kind], **timings[kind]}
                      for kind in kinds},
            "contextual": "last-layer hidden state at position 1 of [CLS] token [SEP]",
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def is_vectors_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / INFO_FILE).is_file() and (Path(path) / VOCAB_FILE).is_file()


def load_vectors(directory: str | os.PathLike, kind: str) -> tuple[np.ndarray, list[str], KmerTokenizer]:
    """(vectors, vocab, tokenizer) of one kind from a `dnavec vectors` output directory."""
    directory = Path(directory)
    try:
        info = json.loads((directory / INFO_FILE).read_text(encoding="utf-8"))
        tokenizer = KmerTokenizer(int(info["k_min"]), int(info["k_max"]))
        vocab = (directory / VOCAB_FILE).read_text(encoding="ascii").splitlines()
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DNAVecError(f"{directory}: not a readable `dnavec vectors` directory ({error})") from None
    path = directory / NPY_FILES[kind]
    if not path.is_file():
        raise DNAVecError(f"{path}: not found (that directory was written with another --kind)")
    vectors = np.load(path, allow_pickle=False)
    if vocab != tokenizer.vocab or vectors.shape[0] != len(vocab):
        raise DNAVecError(f"{directory}: {VOCAB_FILE} and {path.name} do not match the k range "
                          f"{tokenizer.k_min}..{tokenizer.k_max}")
    return vectors, vocab, tokenizer


# ---- neighbours -------------------------------------------------------------------

def kmer_id(tokenizer: KmerTokenizer, kmer: str) -> int:
    """Vocabulary id of a k-mer (any case); DNAVecError for anything that is not a k-mer of the model."""
    text = kmer.strip().upper()
    valid = text and set(text) <= set("ACGT") and tokenizer.k_min <= len(text) <= tokenizer.k_max
    if not valid:
        raise DNAVecError(f"--kmer {kmer!r}: not a k-mer of this model (A/C/G/T only, length "
                          f"{tokenizer.k_min}..{tokenizer.k_max})")
    return tokenizer.token_to_id(text)


def nearest(vectors: np.ndarray, vocab: Sequence[str], kmer: str, top: int = 10,
            include_self: bool = False) -> list[tuple[str, float]]:
    """The `top` k-mers most cosine-similar to `kmer` as (token, cosine), best first.

    Candidates are the k-mers of the vocabulary (ids >= 5, never the special tokens); the
    query itself is a candidate only with include_self (its cosine is 1 up to rounding).
    A zero vector has cosine 0 with everything. Ties go to the lower id.
    """
    vocab = list(vocab)
    tokenizer = _tokenizer_of_vocab(vocab)
    query = kmer_id(tokenizer, kmer)
    scores = cosine_to(vectors, query)
    candidates = np.arange(NUM_SPECIAL, len(vocab))
    if not include_self:
        candidates = candidates[candidates != query]
    order = np.lexsort((candidates, -scores[candidates]))[:max(0, int(top))]
    return [(vocab[i], float(scores[i])) for i in candidates[order]]


def cosine_to(vectors: np.ndarray, query: int) -> np.ndarray:
    """Cosine similarity of every row with row `query` (0 where either vector is zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    unit = vectors / np.where(norms > 0, norms, 1.0)[:, None]
    return unit @ unit[query]


def _tokenizer_of_vocab(vocab: Sequence[str]) -> KmerTokenizer:
    if len(vocab) <= NUM_SPECIAL:
        raise ValueError("the vocabulary holds no k-mer")
    tokenizer = KmerTokenizer(len(vocab[NUM_SPECIAL]), len(vocab[-1]))
    if tokenizer.vocab_size != len(vocab):
        raise ValueError(f"{len(vocab)} tokens is not a DNAVec k-mer vocabulary")
    return tokenizer


# ---- command line -----------------------------------------------------------------

def run_vectors(settings: VectorsSettings) -> int:
    """`dnavec vectors`."""
    kinds = settings.kinds
    # Fail before loading the model.
    output_dir = files.check_output_dir(settings.output_dir, "--output_dir", settings.overwrite)
    started = time.perf_counter()
    loaded = load_model(settings.model, step=settings.step)
    info = write_vectors(loaded, output_dir, kinds=kinds, batch_size=settings.batch_size, overwrite=settings.overwrite,
                         progress=sys.stderr.isatty())
    written = ", ".join(f"{NPY_FILES[kind]} + {W2V_FILES[kind]}" for kind in kinds)
    print(f"wrote {info['vocab_size']:,} x {info['hidden_size']} {' and '.join(kinds)} vectors of {loaded.source} "
          f"to {output_dir} ({written}, {VOCAB_FILE}) in {time.perf_counter() - started:.1f}s")
    return 0


def run_neighbors(settings: NeighborsSettings) -> int:
    """`dnavec neighbors`."""
    if is_vectors_dir(settings.model):
        if settings.step is not None:
            raise DNAVecError(f"--model {settings.model}: --step applies to a training run directory, "
                              "this is a `dnavec vectors` directory")
        vectors, vocab, tokenizer = load_vectors(settings.model, settings.kind)
        source = f"vectors {settings.model}"
    else:
        loaded = load_model(settings.model, step=settings.step)
        tokenizer, vocab, source = loaded.tokenizer, loaded.tokenizer.vocab, loaded.source
        kmer_id(tokenizer, settings.kmer)  # a bad --kmer fails before any computing
        vectors = compute_vectors(loaded, settings.kind, batch_size=settings.batch_size, progress=sys.stderr.isatty())
    query = kmer_id(tokenizer, settings.kmer)
    kmer = vocab[query]
    self_score = float(cosine_to(vectors[query][None], 0)[0])
    neighbours = nearest(vectors, vocab, kmer, top=settings.top)
    print(f"nearest k-mers to {kmer} (k={len(kmer)}, id {query}) by cosine similarity of the {settings.kind} "
          f"vectors of {source}")
    print(f"self-similarity {self_score:.6f}")
    width = max(len("kmer"), tokenizer.k_max)
    print(f"{'rank':>4}  {'kmer':<{width}}  cosine")
    for rank, (token, score) in enumerate(neighbours, 1):
        print(f"{rank:>4}  {token:<{width}}  {score:.6f}")
    return 0
