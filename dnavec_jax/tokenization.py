"""The one k-mer tokenizer: vocabulary and vectorised variable-k token ids.

Every position i of a contig starts one token, the k-mer S[i:i+k], with k drawn
per position from k_min..k_max. Near the contig's end k is limited to the bases
left, so every token lies inside the contig; the last k_min-1 positions, which
cannot hold even the shortest k-mer, start no token.

Vocabulary order (line number in vocab.txt = id):
  0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], 4 [MASK], then all k_min-mers, then all
  (k_min+1)-mers, ..., then all k_max-mers; within one k in lexicographic order
  over A < C < G < T. With A,C,G,T coded 0..3 this is base-4 order, so the id
  of a k-mer is 5 + (number of shorter k-mers in the vocabulary) + its code.

This module imports nothing else of the project: data prep, training,
embedding, analysis and export all tokenize through it. Every Hugging Face
export carries a verbatim copy (dnavec_kmers.py, see docs/export.md), which its
tokenizer runs where DNAVec is not installed: keep it to numpy and the standard
library.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
NUM_SPECIAL = len(SPECIAL_TOKENS)
BASES = "ACGT"
MAX_K = 12  # 4**12 = 16.8 M k-mers: a larger vocabulary is no longer a useful model input.

# Byte -> 2-bit base code; 255 for anything that is not A/C/G/T (N, IUPAC, ...).
# Lower case (soft-masked repeats) maps like upper case; callers that want to
# drop soft-masked bases do so before tokenizing.
INVALID_CODE = 255
BASE_CODES = np.full(256, INVALID_CODE, dtype=np.uint8)
for _code, _base in enumerate(BASES):
    BASE_CODES[ord(_base)] = _code
    BASE_CODES[ord(_base.lower())] = _code


# Letters of a DNA sequence: A/C/G/T are bases, N and the IUPAC ambiguity codes split it into
# contigs (as in data prep); any other character is a mistake in the input.
DNA_LETTERS = np.zeros(256, dtype=bool)
for _letter in BASES + "NRYKMSWBDHV":
    DNA_LETTERS[ord(_letter)] = DNA_LETTERS[ord(_letter.lower())] = True


def non_dna_positions(raw: np.ndarray) -> np.ndarray:
    """Positions of the uint8 letters that are not A/C/G/T, N or an IUPAC code (any case)."""
    return np.flatnonzero(~DNA_LETTERS[raw])


def record_seed(seed: int, tokenization: int, raw: np.ndarray) -> np.random.SeedSequence:
    """The seed of tokenization t of one sequence: np.random.SeedSequence([seed, t, SHA-256 words]).

    The SHA-256 is of the sequence's own letters, upper-cased (raw: uint8 letters), so its tokens do
    not depend on its name, its place in a file or the other sequences; equal sequences get equal tokens.
    """
    upper = np.where((raw >= ord("a")) & (raw <= ord("z")), raw - 32, raw).astype(np.uint8)
    digest = hashlib.sha256(upper.tobytes()).digest()
    return np.random.SeedSequence([int(seed), int(tokenization), *np.frombuffer(digest, dtype="<u4").tolist()])


def validate_k_range(k_min: int, k_max: int) -> None:
    """Raises ValueError with a one-line message for an unusable k range."""
    if not (1 <= k_min <= MAX_K and 1 <= k_max <= MAX_K):
        raise ValueError(f"k must lie in 1..{MAX_K}, got k_min={k_min}, k_max={k_max}")
    if k_min > k_max:
        raise ValueError(f"k_min ({k_min}) must not exceed k_max ({k_max})")


def k_range_of_vocab_size(vocab_size: int) -> tuple[int, int] | None:
    """(k_min, k_max) of the k-mer vocabulary with this many ids, None if no k range gives it.

    Unique: the number of k-mer ids, sum of 4**k for k in k_min..k_max, has base-4 digits
    1 exactly at k_min..k_max.
    """
    for k_min in range(1, MAX_K + 1):
        for k_max in range(k_min, MAX_K + 1):
            if NUM_SPECIAL + sum(4**k for k in range(k_min, k_max + 1)) == vocab_size:
                return k_min, k_max
    return None


def sequence_to_codes(sequence: str | bytes | np.ndarray) -> np.ndarray:
    """Maps a DNA string (any case) to uint8 base codes; non-ACGT become INVALID_CODE."""
    if isinstance(sequence, np.ndarray):
        return BASE_CODES[sequence.astype(np.uint8, copy=False)]
    return BASE_CODES[sequence_to_raw(sequence)]


def acgt_runs(codes: np.ndarray) -> np.ndarray:
    """(start, end) pairs of the maximal runs of valid bases, as an (n, 2) int64 array.

    N runs and any other non-ACGT letter split a sequence into contigs here.
    """
    valid = np.concatenate(([False], codes != INVALID_CODE, [False]))
    edges = np.flatnonzero(np.diff(valid.view(np.int8)))
    return edges.reshape(-1, 2).astype(np.int64)


class KmerTokenizer:
    """Variable-length k-mer tokenizer over a fixed, documented vocabulary.

    Args:
      k_min, k_max: the k range (inclusive), each in 1..12.
      k_weights: relative probability of each k in k_min..k_max; uniform if None.
    """

    def __init__(self, k_min: int = 3, k_max: int = 8, k_weights: Sequence[float] | None = None):
        validate_k_range(k_min, k_max)
        self.k_min, self.k_max = int(k_min), int(k_max)
        self.k_values = np.arange(self.k_min, self.k_max + 1)
        if k_weights is None:
            self.k_probs = None
        else:
            weights = np.asarray(k_weights, dtype=np.float64)
            if weights.shape != self.k_values.shape or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(
                    f"k_weights needs {len(self.k_values)} non-negative numbers with a positive sum "
                    f"(one per k in {self.k_min}..{self.k_max}), got {list(k_weights)}"
                )
            self.k_probs = weights / weights.sum()
        # offsets[k] = id of the first k-mer of length k.
        self._offsets = np.zeros(self.k_max + 1, dtype=np.int64)
        next_id = NUM_SPECIAL
        for k in range(self.k_min, self.k_max + 1):
            self._offsets[k] = next_id
            next_id += 4**k
        self.vocab_size = next_id
        self._vocab: list[str] | None = None
        self._token_index: dict[str, int] | None = None

    # ---- vocabulary -------------------------------------------------------
    @property
    def first_kmer_id(self) -> int:
        return NUM_SPECIAL

    def kmer_offset(self, k: int) -> int:
        """Id of the first k-mer of length k."""
        if not self.k_min <= k <= self.k_max:
            raise ValueError(f"k={k} is outside the tokenizer's range {self.k_min}..{self.k_max}")
        return int(self._offsets[k])

    @property
    def vocab(self) -> list[str]:
        """All tokens in id order (built lazily: 87,365 strings for 3..8)."""
        if self._vocab is None:
            vocab = list(SPECIAL_TOKENS)
            for k in range(self.k_min, self.k_max + 1):
                vocab.extend(self.decode_codes(np.arange(4**k), k))
            self._vocab = vocab
        return self._vocab

    def decode_codes(self, codes: np.ndarray, k: int) -> list[str]:
        """k-mer strings of the given base-4 codes."""
        codes = np.asarray(codes, dtype=np.int64)
        letters = np.frombuffer(BASES.encode(), dtype=np.uint8)
        shifts = 2 * np.arange(k - 1, -1, -1)
        chars = letters[(codes[:, None] >> shifts) & 3]
        return [row.tobytes().decode() for row in chars] if k else []

    def kmer_lengths(self) -> np.ndarray:
        """Length of each vocabulary entry in id order (0 for special tokens)."""
        lengths = np.zeros(self.vocab_size, dtype=np.int32)
        for k in range(self.k_min, self.k_max + 1):
            lengths[self._offsets[k] : self._offsets[k] + 4**k] = k
        return lengths

    def write_vocab(self, path) -> None:
        """Writes vocab.txt: one token per line, line number (from 0) = id. path: a str or a pathlib-like
        object (data prep passes an etils.epath.Path for a gs:// dataset, which writes UTF-8 only: the
        tokens are ASCII, so the bytes are the same)."""
        with (path.open("w", encoding="utf-8") if hasattr(path, "open") else open(path, "w", encoding="utf-8")
              ) as handle:
            handle.write("\n".join(self.vocab))
            handle.write("\n")

    def token_to_id(self, token: str) -> int:
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        k = len(token)
        codes = sequence_to_codes(token)
        if not self.k_min <= k <= self.k_max or (codes == INVALID_CODE).any() or token != token.upper():
            raise ValueError(
                f"unknown token {token!r}: not a special token nor an upper-case A/C/G/T k-mer "
                f"with k in {self.k_min}..{self.k_max}"
            )
        code = 0
        for base_code in codes:
            code = (code << 2) | int(base_code)
        return int(self._offsets[k]) + code

    def id_to_token(self, token_id: int) -> str:
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        if token_id < NUM_SPECIAL:
            return SPECIAL_TOKENS[token_id]
        k = int(np.searchsorted(self._offsets[self.k_min :], token_id, side="right")) + self.k_min - 1
        return self.decode_codes(np.array([token_id - self._offsets[k]]), k)[0]

    def ids_to_kmer_lengths(self, ids: np.ndarray) -> np.ndarray:
        """Length of the k-mer behind each id (0 for special tokens), vectorised."""
        ids = np.asarray(ids, dtype=np.int64)
        starts = self._offsets[self.k_min : self.k_max + 1]
        lengths = np.searchsorted(starts, ids, side="right") + self.k_min - 1
        return np.where(ids < NUM_SPECIAL, 0, lengths)

    # ---- tokenizing -------------------------------------------------------
    def sample_k(self, num_positions: int, rng: np.random.Generator) -> np.ndarray:
        """Draws one k per position from the configured distribution."""
        if self.k_probs is None:
            return rng.integers(self.k_min, self.k_max + 1, size=num_positions, dtype=np.int64)
        return rng.choice(self.k_values, size=num_positions, p=self.k_probs)

    def num_tokens(self, contig_length: int) -> int:
        """Number of tokens a contig of this many valid bases starts."""
        return max(0, contig_length - self.k_min + 1)

    def encode_contig_codes(self, codes: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """Token ids of a contig of valid base codes with the k drawn per position.

        `ks` holds at least num_tokens(len(codes)) values; k is clipped to the bases
        left at the contig's end. Vectorised: one rolling k_max-mer code per position,
        and each token id is a prefix of it (a right shift).
        """
        length = len(codes)
        num = self.num_tokens(length)
        if num == 0:
            return np.zeros(0, dtype=np.int64)
        k_max = self.k_max
        padded = np.zeros(length + k_max, dtype=np.uint32)
        padded[:length] = codes
        rolling = np.zeros(num, dtype=np.uint32)
        for offset in range(k_max):
            rolling <<= 2
            rolling |= padded[offset : offset + num]
        room = length - np.arange(num, dtype=np.int64)
        k = np.minimum(np.asarray(ks[:num], dtype=np.int64), room)
        ids = (rolling >> (2 * (k_max - k)).astype(np.uint32)).astype(np.int64)
        ids += self._offsets[k]
        return ids

    def _contig_codes(self, sequence: str | bytes) -> np.ndarray:
        codes = sequence_to_codes(sequence)
        bad = np.flatnonzero(codes == INVALID_CODE)
        if bad.size:
            letter = chr(sequence_to_raw(sequence)[bad[0]])
            raise ValueError(
                f"invalid letter {letter!r} at position {bad[0]}: a sequence to encode must be A/C/G/T only "
                "(split at N and IUPAC codes first)"
            )
        return codes

    def encode(self, sequence: str | bytes, seed: int | None = 0, k: int | None = None) -> np.ndarray:
        """Token ids (no [CLS]/[SEP]) of one contig: seeded random k, or a fixed k."""
        codes = self._contig_codes(sequence)
        num = self.num_tokens(len(codes))
        if k is not None:
            if not self.k_min <= k <= self.k_max:
                raise ValueError(f"fixed k={k} is outside the tokenizer's range {self.k_min}..{self.k_max}")
            ks = np.full(num, k, dtype=np.int64)
            # A fixed k starts tokens only where a whole k-mer fits.
            num = max(0, len(codes) - k + 1)
            return self.encode_contig_codes(codes, ks)[:num]
        return self.encode_contig_codes(codes, self.sample_k(num, np.random.default_rng(seed)))

    def encode_sequence(self, sequence: str | bytes | np.ndarray, seed=0, k: int | None = None
                        ) -> list[tuple[int, np.ndarray]]:
        """(start, ids) of every A/C/G/T run of a sequence that starts a token, in sequence order.

        Any non-ACGT letter splits (lower case reads as upper case; check letters first with
        non_dna_positions if some must be errors). Random k: one k per position of the whole
        sequence from np.random.default_rng(seed) (an int or a SeedSequence), each token takes the
        k of its start position, clipped at its run's end; so a sequence that is one run gets
        encode(sequence, seed). Fixed k: each run gives encode(run, k=k).
        """
        codes = sequence_to_codes(sequence)
        if k is not None and not self.k_min <= k <= self.k_max:
            raise ValueError(f"fixed k={k} is outside the tokenizer's range {self.k_min}..{self.k_max}")
        num = self.num_tokens(len(codes))
        ks = np.full(num, k, dtype=np.int64) if k is not None else self.sample_k(num, np.random.default_rng(seed))
        runs = []
        for start, end in acgt_runs(codes):
            start, end = int(start), int(end)
            count = max(0, end - start - (k if k is not None else self.k_min) + 1)
            if count:
                runs.append((start, self.encode_contig_codes(codes[start:end], ks[start:])[:count]))
        return runs

    def tokenize(self, sequence: str | bytes, seed: int | None = 0, k: int | None = None) -> list[str]:
        """k-mer strings of one contig (same tokens as encode)."""
        return self.decode_ids(self.encode(sequence, seed=seed, k=k))

    def decode_ids(self, ids: np.ndarray) -> list[str]:
        vocab = self.vocab
        return [vocab[int(i)] for i in ids]

    def kmer_text(self, sequence: str | bytes, seed: int | None = 0, k: int | None = None) -> str:
        """Space-separated k-mers: the text a Hugging Face BertTokenizer over vocab.txt maps one to one."""
        return " ".join(self.tokenize(sequence, seed=seed, k=k))


def sequence_to_raw(sequence: str | bytes) -> np.ndarray:
    if isinstance(sequence, str):
        sequence = sequence.encode("ascii", errors="replace")
    return np.frombuffer(sequence, dtype=np.uint8)
