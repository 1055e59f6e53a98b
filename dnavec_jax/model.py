"""BERT encoder with an MLM head in Flax Linen. Knows nothing of data or checkpoints.

Parameter names follow Hugging Face's BertForMaskedLM module by module (see
hf_export.py), so the conversion is a rename plus a transpose of Dense kernels:

  embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
  embeddings/LayerNorm/{scale,bias}
  encoder/layer_N/attention/{query,key,value,output}/{kernel,bias}
  encoder/layer_N/attention/LayerNorm, layer_N/{intermediate,output,output_LayerNorm}
  pooler (BertModel's [CLS] pooler; not trained by MLM, kept so AutoModel loads)
  mlm_transform, mlm_transform_LayerNorm, mlm_bias
The MLM decoder is tied to the word embeddings.

Design choices (each one is BERT's, or says why not):
- post-LayerNorm, eps 1e-12, exact erf GELU (Flax's default is the tanh form);
- attention through jax.nn.dot_product_attention so XLA or cuDNN flash attention
  can run it; it has no dropout on attention probabilities, so that dropout is
  0 here (hidden dropout stays 0.1) and the export says so;
- the MLM head runs only at masked_lm_positions: the 87,365-way projection
  then costs ~15% of the tokens, not all of them;
- parameters float32, compute dtype a setting (bfloat16 on accelerators); the
  logits are returned in float32 for the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# Only the vocabulary layout, for word_init="bases"; the model still knows nothing of data.
from dnavec_jax.tokenization import KmerTokenizer, k_range_of_vocab_size


# Opt-in attention probabilities: apply the model with mutable=[ATTENTION_COLLECTION] (see
# apply_with_attention) and each layer computes its attention explicitly and sows the probabilities.
# Parameters and the default path (jax.nn.dot_product_attention) are unchanged.
ATTENTION_COLLECTION = "attention"
POSITION_INITS = ("normal", "sinusoidal")
WORD_INITS = ("normal", "bases")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 87_365
    hidden_size: int = 512
    num_layers: int = 12
    num_heads: int = 8
    intermediate_size: int = 2048
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype
    attention_implementation: str | None = None  # None: XLA picks; "cudnn": flash attention on GPU
    remat: bool = False  # recompute each layer's activations in the backward pass
    # Initial position table: "normal" (BERT's N(0, initializer_range)) or "sinusoidal" (Vaswani et al.'s
    # table scaled to the same size: a fixed offset is then a rotation, so attending to the k-mers a few
    # positions away is easy to learn; docs/training.md). Only the start: the table is trained either way.
    position_init: str = "normal"
    # Initial word table: "normal" (BERT's) or "bases": a k-mer's row starts as the sum of one vector per
    # (offset in the k-mer, base), so k-mers that share bases start close and a model can read bases off
    # its inputs and outputs from step 0 (docs/training.md). A plain table all the same: it is trained
    # freely and exports as one. Needs a k-mer vocabulary size (tokenization.k_range_of_vocab_size).
    word_init: str = "normal"

    def __post_init__(self):
        validate_model_config(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BertConfig":
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown model setting(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_model_config(config: BertConfig) -> None:
    """One-line ValueErrors for shapes the model cannot have."""
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size"):
        if int(getattr(config, name)) <= 0:
            raise ValueError(f"model.{name} must be positive, got {getattr(config, name)}")
    if config.hidden_size % config.num_heads:
        raise ValueError(
            f"model.hidden_size ({config.hidden_size}) must be divisible by model.num_heads "
            f"({config.num_heads}); the paper's 12 heads do not divide 512, so base.py uses 8 heads of 64"
        )
    if not 0.0 <= config.hidden_dropout_rate < 1.0:
        raise ValueError(f"model.hidden_dropout_rate must lie in [0, 1), got {config.hidden_dropout_rate}")
    if config.position_init not in POSITION_INITS:
        raise ValueError(f"model.position_init must be one of {', '.join(POSITION_INITS)}, "
                         f"got {config.position_init!r}")
    if config.word_init not in WORD_INITS:
        raise ValueError(f"model.word_init must be one of {', '.join(WORD_INITS)}, got {config.word_init!r}")
    if config.word_init == "bases" and k_range_of_vocab_size(config.vocab_size) is None:
        raise ValueError(f"model.word_init 'bases' needs a k-mer vocabulary; vocab_size {config.vocab_size} is "
                         "not 5 special tokens + all k-mers of a k range")
    if config.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {config.dtype!r}")


def sinusoidal_init(scale: float):
    """Initializer of a (positions, hidden) table: sin/cos of position / 10000^(2i/hidden) (Vaswani et al.),
    times scale * sqrt(2), so each entry has the root mean square of N(0, scale)."""
    def init(key, shape, dtype=jnp.float32):
        del key
        positions, hidden = shape
        angle = jnp.arange(positions)[:, None] / 10000.0 ** (jnp.arange(0, hidden, 2)[None, :] / hidden)
        table = jnp.zeros(shape).at[:, 0::2].set(jnp.sin(angle)).at[:, 1::2].set(jnp.cos(angle[:, : hidden // 2]))
        return (table * scale * 2**0.5).astype(dtype)

    return init


def kmer_bases_init(scale: float):
    """Initializer of a (vocab, hidden) k-mer table: row of k-mer c = sum_i B[i, c_i] / sqrt(k) + F[c] / 2,
    with B (k_max, 4, hidden) and F ~ N(0, scale): B[i, b] stands for base b at offset i of the k-mer.
    Special tokens get N(0, scale) rows."""
    def init(key, shape, dtype=jnp.float32):
        import numpy as np

        vocab, hidden = shape
        tokenizer = KmerTokenizer(*k_range_of_vocab_size(vocab))
        lengths = tokenizer.kmer_lengths()
        base_of = np.zeros((vocab, tokenizer.k_max), np.int32)  # (static) base code at each offset
        for k in range(tokenizer.k_min, tokenizer.k_max + 1):
            codes = np.arange(4**k)
            for i in range(k):
                base_of[tokenizer.kmer_offset(k) + codes, i] = (codes >> (2 * (k - 1 - i))) & 3
        in_kmer = np.arange(tokenizer.k_max)[None, :] < lengths[:, None]
        key_bases, key_free = jax.random.split(key)
        bases = jax.random.normal(key_bases, (tokenizer.k_max, 4, hidden)) * scale
        composed = jnp.zeros(shape)
        for i in range(tokenizer.k_max):
            composed += jnp.where(in_kmer[:, i:i + 1], bases[i][base_of[:, i]], 0.0)
        composed = composed / np.sqrt(np.maximum(lengths, 1))[:, None]
        free = jax.random.normal(key_free, shape) * scale * np.where(lengths > 0, 0.5, 1.0)[:, None]
        return (composed + free).astype(dtype)

    return init


def gelu(x):
    # BERT's GELU is the exact erf form; flax/jax default to the tanh approximation.
    return jax.nn.gelu(x, approximate=False)


def _dense(features: int, config: BertConfig, name: str | None = None) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=config.dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(config.initializer_range),
        name=name,
    )


def _layer_norm(config: BertConfig, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.dtype, param_dtype=jnp.float32, name=name)


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, segment_ids, deterministic: bool):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        word_init = kmer_bases_init(cfg.initializer_range) if cfg.word_init == "bases" else init
        word = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=word_init, param_dtype=jnp.float32,
                        dtype=cfg.dtype, name="word_embeddings")
        position_init = sinusoidal_init(cfg.initializer_range) if cfg.position_init == "sinusoidal" else init
        position = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, embedding_init=position_init,
                            param_dtype=jnp.float32, dtype=cfg.dtype, name="position_embeddings")
        token_type = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init,
                              param_dtype=jnp.float32, dtype=cfg.dtype, name="token_type_embeddings")
        positions = jnp.arange(input_ids.shape[-1])[None, :]
        hidden = word(input_ids) + position(positions) + token_type(segment_ids)
        hidden = _layer_norm(cfg, "LayerNorm")(hidden)
        return nn.Dropout(cfg.hidden_dropout_rate)(hidden, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool):
        cfg = self.config
        batch, length, _ = hidden.shape
        split = lambda x: x.reshape(batch, length, cfg.num_heads, cfg.head_dim)
        query = split(_dense(cfg.hidden_size, cfg, "query")(hidden))
        key = split(_dense(cfg.hidden_size, cfg, "key")(hidden))
        value = split(_dense(cfg.hidden_size, cfg, "value")(hidden))
        # Opt-in explicit path (init makes every collection mutable: it keeps the default path).
        if self.is_mutable_collection(ATTENTION_COLLECTION) and not self.is_initializing():
            context = self._explicit_attention(query, key, value, attention_mask)
        else:
            context = jax.nn.dot_product_attention(
                query, key, value, mask=attention_mask, implementation=cfg.attention_implementation
            )
        context = context.reshape(batch, length, cfg.hidden_size)
        out = _dense(cfg.hidden_size, cfg, "output")(context)
        out = nn.Dropout(cfg.hidden_dropout_rate)(out, deterministic=deterministic)
        return _layer_norm(cfg, "LayerNorm")(out + hidden)


    def _explicit_attention(self, query, key, value, attention_mask):
        """softmax(Q K^T / sqrt(d) + mask) V written out (jax.nn.dot_product_attention's XLA path, step by
        step), sowing the probabilities (batch, heads, queries, keys), float32, into ATTENTION_COLLECTION."""
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
        logits = logits * jnp.float32(1.0 / self.config.head_dim**0.5)
        logits = jnp.where(attention_mask, logits, jnp.float32(-0.7 * jnp.finfo(jnp.float32).max))
        probs = jax.nn.softmax(logits, axis=-1)
        self.sow(ATTENTION_COLLECTION, "probs", probs)
        return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(value.dtype), value)


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool):
        cfg = self.config
        hidden = BertSelfAttention(cfg, name="attention")(hidden, attention_mask, deterministic)
        inner = gelu(_dense(cfg.intermediate_size, cfg, "intermediate")(hidden))
        out = _dense(cfg.hidden_size, cfg, "output")(inner)
        out = nn.Dropout(cfg.hidden_dropout_rate)(out, deterministic=deterministic)
        return _layer_norm(cfg, "output_LayerNorm")(out + hidden)


class BertEncoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool):
        layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if self.config.remat else BertLayer
        for index in range(self.config.num_layers):
            hidden = layer_cls(self.config, name=f"layer_{index}")(hidden, attention_mask, deterministic)
        return hidden


class BertForMaskedLM(nn.Module):
    """BERT encoder + pooler + MLM head.

    __call__ returns a dict:
      hidden_states: (batch, length, hidden) last-layer states, compute dtype;
      pooled: (batch, hidden) tanh(dense([CLS])) as in BertModel;
      mlm_logits: (batch, num_predictions, vocab) float32, only if masked_lm_positions is given.
    """

    config: BertConfig

    def setup(self):
        cfg = self.config
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = _dense(cfg.hidden_size, cfg)
        self.mlm_transform = _dense(cfg.hidden_size, cfg)
        self.mlm_transform_LayerNorm = _layer_norm(cfg)
        self.mlm_bias = self.param("mlm_bias", nn.initializers.zeros_init(), (cfg.vocab_size,), jnp.float32)

    def encode(self, input_ids, input_mask, segment_ids=None, deterministic: bool = True):
        if segment_ids is None:
            segment_ids = jnp.zeros_like(input_ids)
        # (batch, 1, 1, keys): broadcasts over heads and queries in dot_product_attention.
        attention_mask = input_mask.astype(bool)[:, None, None, :]
        hidden = self.embeddings(input_ids, segment_ids, deterministic)
        return self.encoder(hidden, attention_mask, deterministic)

    def mlm_logits(self, hidden_states, masked_lm_positions):
        picked = jnp.take_along_axis(hidden_states, masked_lm_positions[..., None], axis=1)
        transformed = self.mlm_transform_LayerNorm(gelu(self.mlm_transform(picked)))
        word_embeddings = self.embeddings.variables["params"]["word_embeddings"]["embedding"]
        logits = jnp.einsum(
            "bph,vh->bpv", transformed, word_embeddings.astype(transformed.dtype),
            preferred_element_type=jnp.float32,
        )
        return logits + self.mlm_bias

    def __call__(self, input_ids, input_mask, segment_ids=None, masked_lm_positions=None,
                 deterministic: bool = True):
        hidden = self.encode(input_ids, input_mask, segment_ids, deterministic)
        outputs = {"hidden_states": hidden, "pooled": jnp.tanh(self.pooler(hidden[:, 0]))}
        if masked_lm_positions is not None:
            outputs["mlm_logits"] = self.mlm_logits(hidden, masked_lm_positions)
        return outputs


def apply_with_attention(config: BertConfig, params, input_ids, input_mask, segment_ids=None):
    """Encoder outputs (as __call__, no MLM head) and the attention probabilities of every layer.

    Returns (outputs, probs): probs is float32 (num_layers, batch, heads, queries, keys), each query's
    row summing to 1 over the keys where input_mask is 1 (0 on padding keys; padding queries attend
    to the real keys as in the default path).
    """
    outputs, state = BertForMaskedLM(config).apply(
        {"params": params}, input_ids, input_mask, segment_ids, mutable=[ATTENTION_COLLECTION]
    )
    layers = state[ATTENTION_COLLECTION]["encoder"]
    probs = jnp.stack([layers[f"layer_{index}"]["attention"]["probs"][0] for index in range(config.num_layers)])
    return outputs, probs


def init_params(config: BertConfig, rng: jax.Array, seq_len: int = 8, num_predictions: int = 2):
    """Initial float32 parameters (shapes do not depend on the batch or length used here)."""
    model = BertForMaskedLM(config)
    ids = jnp.zeros((1, seq_len), jnp.int32)
    positions = jnp.zeros((1, num_predictions), jnp.int32)
    return model.init(rng, ids, jnp.ones_like(ids), jnp.zeros_like(ids), positions)["params"]


def flops_per_token(config: BertConfig, seq_len: int, predictions_per_seq: int) -> float:
    """Model FLOPs of one trained token (forward + backward = 3 x forward, 2 FLOPs per MAC).

    Per layer and token, forward: 4 h^2 MACs (Q, K, V, output projections),
    2 s h MACs (scores and context), 2 h i MACs (feed-forward). The MLM head
    runs on predictions_per_seq / seq_len of the tokens: h^2 (transform) + h V
    (tied decoder) MACs each. Embedding lookups, LayerNorm, softmax and GELU
    are ignored (as in the PaLM/MaxText MFU convention).
    """
    h, i, s, v = config.hidden_size, config.intermediate_size, seq_len, config.vocab_size
    per_layer_macs = 4 * h * h + 2 * s * h + 2 * h * i
    head_macs = (h * h + h * v) * predictions_per_seq / seq_len
    forward_flops = 2 * (config.num_layers * per_layer_macs + head_macs)
    return 3 * forward_flops
