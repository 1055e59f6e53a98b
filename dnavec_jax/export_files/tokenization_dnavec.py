"""The tokenizer of a DNAVec export: raw DNA (or k-mer text) -> the model's k-mer token ids.

Shipped inside every export and loaded by AutoTokenizer.from_pretrained(export,
trust_remote_code=True). It needs numpy and transformers only: dnavec_kmers.py next to it is a
verbatim copy of DNAVec's own tokenizer module. The rule is in the export's README.md and in
DNAVec's docs/export.md.
"""

from __future__ import annotations

import os

import numpy as np
from transformers import PreTrainedTokenizer

from .dnavec_kmers import (
    CLS_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    KmerTokenizer,
    non_dna_positions,
    record_seed,
    sequence_to_raw,
)


class DNAVecTokenizer(PreTrainedTokenizer):
    """Variable-length k-mer tokenizer for raw DNA.

    A string is read as k-mer text when it holds several whitespace-separated words (or one special
    token) and every word is a vocabulary token; anything else is raw DNA: A/C/G/T in any case
    (soft-masked bases read as upper case), N and IUPAC codes split it into runs, any other
    character is a ValueError. Raw DNA gives KmerTokenizer.encode_sequence(dna, seed=
    record_seed(seed, draw, dna), k=k): with a fixed k every k-mer of each run; with k None one
    random k per position (DNAVec's training rule) from a generator seeded by `seed`, `draw` and
    a SHA-256 of the upper-cased sequence, so one sequence always gets the same ids. The runs'
    tokens are concatenated in order inside one [CLS] ... [SEP]. k, seed and draw are set at load
    time (tokenizer_config.json holds the export's defaults), as attributes, or per call
    (tokenizer(dna, k=None)).
    """

    vocab_files_names = {"vocab_file": "vocab.txt"}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    def __init__(self, vocab_file: str | None = None, k_min: int = 3, k_max: int = 8,
                 k_weights: list[float] | None = None, k: int | None = None, seed: int = 0, draw: int = 0,
                 **kwargs):
        self.kmers = KmerTokenizer(k_min, k_max, k_weights)
        if vocab_file is not None:
            with open(vocab_file, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
            if lines != self.kmers.vocab:
                raise ValueError(f"{vocab_file}: not the DNAVec k-mer vocabulary for k {k_min}..{k_max} "
                                 f"({len(lines):,} lines, expected {self.kmers.vocab_size:,})")
        self._ids = {token: index for index, token in enumerate(self.kmers.vocab)}
        self._check_k(k)
        self.k, self.seed, self.draw = k, int(seed), int(draw)
        for name, token in zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL_TOKENS):
            kwargs.setdefault(name, token)
        super().__init__(k_min=k_min, k_max=k_max, k_weights=k_weights, k=k, seed=seed, draw=draw, **kwargs)

    def _check_k(self, k: int | None) -> None:
        if k is not None and not self.kmers.k_min <= k <= self.kmers.k_max:
            raise ValueError(f"k={k} is outside this model's k range {self.kmers.k_min}..{self.kmers.k_max}")

    # ---- raw DNA -------------------------------------------------------------------
    def _dna_ids(self, dna: str, k: int | None, seed: int, draw: int) -> np.ndarray:
        """int64 token ids of raw DNA (no [CLS]/[SEP])."""
        self._check_k(k)
        raw = sequence_to_raw(dna)  # non-ASCII characters become '?', one byte each: positions stay
        bad = non_dna_positions(raw)
        if bad.size:
            raise ValueError(self._not_dna_message(dna, int(bad[0])))
        runs = self.kmers.encode_sequence(raw, seed=None if k is not None else record_seed(seed, draw, raw), k=k)
        if not runs:
            if dna:
                raise ValueError(f"no k-mer in {self._excerpt(dna)}: no run of {k or self.kmers.k_min} "
                                 "or more A/C/G/T bases")
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([ids for _, ids in runs])

    def _not_dna_message(self, text: str, position: int) -> str:
        message = (f"{self._excerpt(text)} is not DNA: {text[position]!r} at position {position} (DNA is A/C/G/T, "
                   "N and IUPAC codes, any case")
        words = text.split()
        if len(words) > 1:
            unknown = next(word for word in words if word not in self._ids)
            message += (f"; nor is it k-mer text, whose words are vocabulary tokens (upper-case k-mers with k "
                        f"{self.kmers.k_min}..{self.kmers.k_max} or special tokens), as {unknown[:20]!r} is not")
        return message + ")"

    @staticmethod
    def _excerpt(text: str) -> str:
        return repr(text) if len(text) <= 30 else repr(text[:27] + "...")

    def _is_kmer_text(self, text: str) -> bool:
        words = text.split()
        if len(words) == 1 and words[0] not in SPECIAL_TOKENS:
            return False  # one word is a DNA string, even one as short as a k-mer
        return bool(words) and all(word in self._ids for word in words)

    # ---- PreTrainedTokenizer ----------------------------------------------------------
    def tokenize(self, text: str, **kwargs) -> list[str]:
        k, seed, draw = kwargs.pop("k", self.k), kwargs.pop("seed", self.seed), kwargs.pop("draw", self.draw)
        if self._is_kmer_text(text):
            return super().tokenize(text, **kwargs)
        return self.kmers.decode_ids(self._dna_ids(text, k, int(seed), int(draw)))

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return text.split()  # k-mer text only: tokenize() checked that every word is a token

    @property
    def vocab_size(self) -> int:
        return self.kmers.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return dict(self._ids)

    def _convert_token_to_id(self, token: str) -> int:
        return self._ids.get(token, UNK_ID)

    def _convert_id_to_token(self, index: int) -> str:
        return self.kmers.vocab[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return " ".join(tokens)  # k-mer text, which this tokenizer reads back to the same ids

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                         ) -> list[int]:
        ids = [CLS_ID, *token_ids_0, SEP_ID]
        return ids if token_ids_1 is None else [*ids, *token_ids_1, SEP_ID]

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        mask = [1, *[0] * len(token_ids_0), 1]
        return mask if token_ids_1 is None else [*mask, *[0] * len(token_ids_1), 1]

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                             ) -> list[int]:
        types = [0] * (len(token_ids_0) + 2)
        return types if token_ids_1 is None else [*types, *[1] * (len(token_ids_1) + 1)]

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "vocab.txt")
        self.kmers.write_vocab(path)
        return (path,)
