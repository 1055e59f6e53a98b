"""sentence-transformers modules of a DNAVec export: BERT, then the mean state of the k-mer tokens.

KmerMeanPooling leaves [CLS], [SEP] and padding out (ids below first_kmer_id, or attention mask
0), which is `dnavec embed`'s `mean` vector; sentence-transformers' own mean Pooling would count
[CLS] and [SEP]. modules.json lists DNAVecTransformer then KmerMeanPooling; loaded by
SentenceTransformer(export, trust_remote_code=True). See the export's README.md.
"""

from __future__ import annotations

import torch
from sentence_transformers.base.modules.module import Module
from sentence_transformers.base.modules.transformer import Transformer


class DNAVecTransformer(Transformer):
    """sentence-transformers' Transformer unchanged, named here so that loading without
    trust_remote_code stops at once with sentence-transformers' own message about it; the stock
    class would first fail on the tokenizer with an unrelated "Unrecognized processing class"."""


class KmerMeanPooling(Module):
    """sentence_embedding = mean of token_embeddings over the tokens with id >= first_kmer_id and mask 1."""

    config_keys = ["embedding_dimension", "first_kmer_id"]

    def __init__(self, embedding_dimension: int, first_kmer_id: int = 5):
        super().__init__()
        self.embedding_dimension = int(embedding_dimension)
        self.first_kmer_id = int(first_kmer_id)

    def forward(self, features: dict, **kwargs) -> dict:
        if "cu_seq_lens_q" in features:  # sentence_bert_config.json sets unpad_inputs false for this reason
            raise ValueError("KmerMeanPooling needs padded inputs (unpad_inputs false), not flattened ones")
        states = features["token_embeddings"]
        real = (features["input_ids"] >= self.first_kmer_id) & (features["attention_mask"] > 0)
        weights = real.unsqueeze(-1).to(torch.float32)
        total = (states.to(torch.float32) * weights).sum(dim=1)
        # An input without k-mers (only the empty string: the tokenizer refuses other such DNA) pools to 0.
        features["sentence_embedding"] = (total / weights.sum(dim=1).clamp(min=1.0)).to(states.dtype)
        return features

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def get_sentence_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def save(self, output_path: str, *args, **kwargs) -> None:
        self.save_config(output_path)
