"""BERT encoder with an MLM head in Flax Linen; knows nothing of data or checkpoints (docs/training.md).

Parameter names follow transformers' BertForMaskedLM module by module (export.name_table maps them).
BERT's numerics: post-LayerNorm, eps 1e-12, exact erf GELU. Attention runs through
jax.nn.dot_product_attention (cuDNN flash attention on NVIDIA GPUs in bf16, XLA elsewhere); the MLM
head runs only at the masked positions, over the vocabulary padded to a multiple of 128; parameters
are float32, compute in model.dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from dnavec_jax.fields import setting
from dnavec_jax.kernels import cpu_attention
from dnavec_jax.tokenization import KmerTokenizer, k_range_of_vocab_size

# Opt-in attention probabilities: apply the model with mutable=[ATTENTION_COLLECTION] (see
# apply_with_attention) and each layer computes its attention explicitly and sows the probabilities.
# Parameters and the default path (jax.nn.dot_product_attention) are unchanged.
ATTENTION_COLLECTION = "attention"
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "xla_per_head", "cpu_fused")
GELU_FORMS = ("erfc", "erf")
POSITION_INITS = ("normal", "sinusoidal")
WORD_INITS = ("normal", "bases")
# The word-embedding table and MLM bias have padded_vocab_size rows: matmul dimensions that are
# multiples of 128 tile the GPU/TPU matrix units exactly and let FSDP split the vocabulary axis.
VOCAB_PAD_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The model's settings; the defaults are the paper's base model (configs/base.py computes in bf16)."""

    vocab_size: int = setting(87_365, "5 special tokens + all k-mers of k_min..k_max (87,365 for k 3..8)")
    hidden_size: int = setting(512, "hidden width")
    num_layers: int = setting(12, "encoder layers")
    num_heads: int = setting(8, "attention heads: the paper says 12, but 12 does not divide 512 (42.67 dims a "
                                "head), so 8 heads of 64")
    intermediate_size: int = setting(2048, "feed-forward width")
    max_position_embeddings: int = setting(512, "learned absolute positions")
    type_vocab_size: int = setting(2, "token types (for transformers; all our inputs are type 0)")
    hidden_dropout_rate: float = setting(0.1, "dropout on embeddings and sublayer outputs (none on attention "
                                              "probabilities)")
    layer_norm_eps: float = setting(1e-12, "BERT's LayerNorm epsilon")
    initializer_range: float = setting(0.02, "standard deviation of the initial weights")
    dtype: str = setting("float32", "compute dtype (parameters and optimizer state stay float32): bfloat16 "
                                    "on GPUs and TPUs", choices=("float32", "bfloat16", "float16"))
    attention_implementation: str = setting("auto", "auto: cuDNN flash attention where it runs (NVIDIA GPU, "
                                                    "bf16/fp16), else XLA; xla or cudnn force one; xla_per_head: "
                                                    "XLA one (example, head) at a time; cpu_fused: the fused "
                                                    "float32 CPU kernel (kernels/cpu_attention.py; CPU inference "
                                                    "picks it where it builds, else xla_per_head)",
                                            choices=ATTENTION_IMPLEMENTATIONS)
    remat: bool = setting(False, "recompute each layer's activations in the backward pass")
    gelu_form: str = setting("erfc", "how the exact GELU is computed: erfc, 0.5 x erfc(-x / sqrt 2) (jax.nn.gelu's, "
                                     "what training uses), or erf, 0.5 x (1 + erf(x / sqrt 2)) (transformers'; what "
                                     "inference uses, about 40% cheaper on a CPU); they differ by float rounding",
                             choices=GELU_FORMS)
    position_init: str = setting("normal", "initial position table: normal (BERT's N(0, initializer_range)) or "
                                           "sinusoidal (a fixed offset is a rotation, so attending to the k-mers a "
                                           "few positions away is easy to learn); only the start, trained either way",
                                 choices=POSITION_INITS)
    word_init: str = setting("normal", "initial word table: normal (BERT's) or bases (a k-mer's row starts as the sum "
                                       "of one vector per (offset, base), so k-mers that share bases start close); "
                                       "a plain table all the same, trained freely and exported as one",
                             choices=WORD_INITS)

    def __post_init__(self):
        validate_model_config(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the word-embedding table and the MLM bias (the ids >= vocab_size are never used)."""
        return -(-self.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BertConfig:
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown model setting(s): {', '.join(unknown)}")
        if "attention_implementation" in values and values["attention_implementation"] is None:
            values = {**values, "attention_implementation": "auto"}  # what runs before 2026-12 recorded
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
    if config.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {config.dtype!r}")
    for name, allowed in (("position_init", POSITION_INITS), ("word_init", WORD_INITS), ("gelu_form", GELU_FORMS)):
        if getattr(config, name) not in allowed:
            raise ValueError(f"model.{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    if config.word_init == "bases" and k_range_of_vocab_size(config.vocab_size) is None:
        raise ValueError(f"model.word_init 'bases' needs a k-mer vocabulary; vocab_size {config.vocab_size} is "
                         "not 5 special tokens + all k-mers of a k range")
    if config.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"model.attention_implementation must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, "
                         f"got {config.attention_implementation!r}")
    if config.attention_implementation == "cudnn" and config.dtype == "float32":
        raise ValueError("model.attention_implementation='cudnn' needs model.dtype bfloat16 or float16 "
                         "(cuDNN flash attention has no float32 kernel); use 'auto' or 'xla' for float32")
    if config.attention_implementation == "cpu_fused" and config.dtype != "float32":
        raise ValueError("model.attention_implementation='cpu_fused' needs model.dtype float32 (the fused CPU "
                         "kernel computes in float32); use 'xla_per_head' or 'xla'")


def attention_implementation(config: BertConfig) -> str:
    """The implementation that runs: "auto" is cuDNN flash attention on an NVIDIA GPU in bf16/fp16 with a
    head size it supports (a multiple of 8, at most 128), XLA everywhere else."""
    if config.attention_implementation != "auto":
        return config.attention_implementation
    if on_nvidia_gpu() and config.dtype != "float32" and config.head_dim % 8 == 0 and config.head_dim <= 128:
        return "cudnn"
    return "xla"


def on_nvidia_gpu() -> bool:
    return jax.default_backend() == "gpu" and "NVIDIA" in jax.devices()[0].device_kind.upper()


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


def kmer_bases_init(scale: float, vocab_size: int):
    """Initializer of a (rows, hidden) k-mer table, rows >= vocab_size: row of k-mer c = sum_i B[i, c_i] /
    sqrt(k) + F[c] / 2, with B (k_max, 4, hidden) and F ~ N(0, scale): B[i, b] stands for base b at offset i.
    Special tokens get N(0, scale) rows; rows from vocab_size on (the padding) are returned as drawn."""
    def init(key, shape, dtype=jnp.float32):
        rows, hidden = shape
        tokenizer = KmerTokenizer(*k_range_of_vocab_size(vocab_size))
        lengths = np.zeros(rows, np.int64)
        lengths[:vocab_size] = tokenizer.kmer_lengths()
        base_of = np.zeros((rows, tokenizer.k_max), np.int32)  # (static) base code at each offset
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


def gelu(x, form: str = "erfc"):
    # BERT's GELU is the exact erf form; flax/jax default to the tanh approximation. XLA expands erfc into two
    # polynomial branches, an exponential and two divisions per element; erf into one rational polynomial.
    if form == "erf":
        return x * 0.5 * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))
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


class EmbeddingTable(nn.Module):
    """One float32 (rows, features) table, param "embedding" (the name transformers' BERT maps from).

    Rows from used_rows on (the vocabulary padding) start at zero and stay there: no input id selects
    them and their -inf logits send them no gradient, so weight decay and Adam leave them at 0.
    """

    rows: int
    features: int
    initializer_range: float
    used_rows: int | None = None
    start: Any = None  # an initializer (key, shape, dtype) -> table; None: N(0, initializer_range)

    @nn.compact
    def __call__(self) -> jax.Array:
        def init(key, shape, dtype):
            table = (self.start or nn.initializers.normal(self.initializer_range))(key, shape, dtype)
            if self.used_rows is not None:
                table = jnp.where(jnp.arange(shape[0])[:, None] < self.used_rows, table, 0)
            return table

        return self.param("embedding", init, (self.rows, self.features), jnp.float32)


class BertEmbeddings(nn.Module):
    config: BertConfig

    def setup(self):
        cfg = self.config
        word_start = kmer_bases_init(cfg.initializer_range, cfg.vocab_size) if cfg.word_init == "bases" else None
        position_start = sinusoidal_init(cfg.initializer_range) if cfg.position_init == "sinusoidal" else None
        self.word_embeddings = EmbeddingTable(cfg.padded_vocab_size, cfg.hidden_size, cfg.initializer_range,
                                              used_rows=cfg.vocab_size, start=word_start)
        self.position_embeddings = EmbeddingTable(cfg.max_position_embeddings, cfg.hidden_size,
                                                  cfg.initializer_range, start=position_start)
        self.token_type_embeddings = EmbeddingTable(cfg.type_vocab_size, cfg.hidden_size, cfg.initializer_range)
        self.LayerNorm = _layer_norm(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout_rate)

    def __call__(self, input_ids, segment_ids, deterministic: bool):
        cfg = self.config
        # float32 rows, cast once after the LayerNorm: a bf16 copy of the whole table (and a scatter-add
        # into it in the backward pass) is never made.
        hidden = jnp.take(self.word_embeddings(), input_ids, axis=0)
        # Positions 0..L-1 are a slice, not a gather: their gradient is a sum over the batch, not
        # batch x L colliding scatter-adds.
        hidden = hidden + self.position_embeddings()[: input_ids.shape[-1]]
        types = self.token_type_embeddings()
        if segment_ids is None:
            hidden = hidden + types[0]
        else:
            # A one-hot product over the few token types (almost every id is 0): its gradient is a small
            # matmul instead of batch x L scatter-adds into one row.
            one_hot = jax.nn.one_hot(segment_ids, cfg.type_vocab_size, dtype=jnp.float32)
            hidden = hidden + jnp.einsum("blt,th->blh", one_hot, types)
        hidden = self.LayerNorm(hidden)
        return self.dropout(hidden, deterministic=deterministic)

    def word_table(self) -> jax.Array:
        return self.word_embeddings()


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden, padding: Padding, deterministic: bool):
        cfg = self.config
        batch, length, _ = hidden.shape
        def split(x):
            return x.reshape(batch, length, cfg.num_heads, cfg.head_dim)
        query = split(_dense(cfg.hidden_size, cfg, "query")(hidden))
        key = split(_dense(cfg.hidden_size, cfg, "key")(hidden))
        value = split(_dense(cfg.hidden_size, cfg, "value")(hidden))
        # Opt-in explicit path (init makes every collection mutable: it keeps the default path).
        if self.is_mutable_collection(ATTENTION_COLLECTION) and not self.is_initializing():
            context = self._explicit_attention(query, key, value, padding.mask)
        elif attention_implementation(cfg) == "cudnn":
            # cuDNN takes padding as per-example key lengths (a (batch, 1, 1, keys) mask would become a bias
            # it rejects); None: no padding, no mask at all.
            context = jax.nn.dot_product_attention(query, key, value, key_value_seq_lengths=padding.key_lengths,
                                                   implementation="cudnn")
        elif attention_implementation(cfg) == "xla_per_head":
            context = per_head_attention(query, key, value, padding.mask)
        elif attention_implementation(cfg) == "cpu_fused":
            context = cpu_attention.attention(query, key, value, padding.mask)
        else:
            context = jax.nn.dot_product_attention(query, key, value, mask=padding.mask, implementation="xla")
        context = context.reshape(batch, length, cfg.hidden_size)
        out = _dense(cfg.hidden_size, cfg, "output")(context)
        out = nn.Dropout(cfg.hidden_dropout_rate)(out, deterministic=deterministic)
        return _layer_norm(cfg, "LayerNorm")(out + hidden)


    def _explicit_attention(self, query, key, value, attention_mask):
        """softmax(Q K^T / sqrt(d) + mask) V written out (jax.nn.dot_product_attention's XLA path, step by
        step), sowing the probabilities (batch, heads, queries, keys), float32, into ATTENTION_COLLECTION."""
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
        logits = logits * jnp.float32(1.0 / self.config.head_dim**0.5)
        if attention_mask is not None:
            logits = jnp.where(attention_mask, logits, jnp.float32(-0.7 * jnp.finfo(jnp.float32).max))
        probs = jax.nn.softmax(logits, axis=-1)
        self.sow(ATTENTION_COLLECTION, "probs", probs)
        return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(value.dtype), value)


def per_head_attention(query, key, value, mask):
    """jax.nn.dot_product_attention's XLA path (scores scaled after the product, padding at 0.7 x the float32
    minimum, float32 softmax) run one (example, head) at a time with lax.map: the same numbers.

    On a CPU the batched form writes the (batch, heads, L, L) scores to memory and reads them back for the
    mask, the softmax and the product with V (268 MB a layer at 32 x 512 tokens, base width); one head's
    (L, L) scores (1 MB) stay in cache, and its two products are plain matrix products. Q, K and V are laid
    out (batch x heads, L, head_dim) once, before the loop. Measured about 2x faster at that shape
    (docs/benchmarks.md). A loop is what a GPU does not want: "auto" never picks it, inference on a CPU does.
    """
    batch, length, heads, head_dim = query.shape
    scale = jnp.asarray(1.0 / head_dim ** 0.5, jnp.float32)
    masked = jnp.asarray(0.7 * jnp.finfo(jnp.float32).min, jnp.float32)

    def one(pair):
        q, k, v, m = pair  # (L, head_dim) each; m (1, keys) or None
        logits = jnp.einsum("qd,kd->qk", q, k, preferred_element_type=jnp.float32) * scale
        if m is not None:
            logits = jnp.where(m, logits, masked)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("qk,kd->qd", probs, v)

    pairs = [jnp.transpose(x, (0, 2, 1, 3)).reshape(batch * heads, -1, head_dim) for x in (query, key, value)]
    if mask is not None:  # (batch, 1, 1, keys) -> one (1, keys) row per pair
        mask = jnp.broadcast_to(mask, (batch, heads, 1, mask.shape[-1])).reshape(batch * heads, 1, -1)
    out = jax.lax.map(one, (*pairs, mask)).reshape(batch, heads, length, head_dim)
    return jnp.transpose(out, (0, 2, 1, 3))


class Padding(NamedTuple):
    """Which keys are padding, in the two forms the attention implementations take (both None: none).

    mask: (batch, 1, 1, keys) bool, True for real keys (XLA and the explicit path);
    key_lengths: (batch,) int32 real keys per example (cuDNN). Padding is at the end of each example,
    as in all of this project's inputs ([CLS] tokens [SEP] [PAD]...), so the two agree.
    """

    mask: jax.Array | None
    key_lengths: jax.Array | None

    @classmethod
    def from_input_mask(cls, input_mask) -> Padding:
        if input_mask is None:
            return cls(None, None)
        # (batch, 1, 1, keys): broadcasts over heads and queries in dot_product_attention.
        # Lengths of at least 1: the filler rows that pad the last eval batch have no real key, and a softmax
        # over zero keys is not defined for cuDNN (XLA's mask gives such rows uniform attention); their
        # outputs carry no weight either way.
        lengths = jnp.maximum(jnp.sum(input_mask, axis=-1, dtype=jnp.int32), 1)
        return cls(input_mask.astype(bool)[:, None, None, :], lengths)


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden, padding: Padding, deterministic: bool):
        cfg = self.config
        hidden = BertSelfAttention(cfg, name="attention")(hidden, padding, deterministic)
        inner = gelu(_dense(cfg.intermediate_size, cfg, "intermediate")(hidden), cfg.gelu_form)
        out = _dense(cfg.hidden_size, cfg, "output")(inner)
        out = nn.Dropout(cfg.hidden_dropout_rate)(out, deterministic=deterministic)
        return _layer_norm(cfg, "output_LayerNorm")(out + hidden)


class BertEncoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden, padding: Padding, deterministic: bool):
        layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if self.config.remat else BertLayer
        for index in range(self.config.num_layers):
            hidden = layer_cls(self.config, name=f"layer_{index}")(hidden, padding, deterministic)
        return hidden


class BertForMaskedLM(nn.Module):
    """BERT encoder + pooler + MLM head.

    __call__ returns a dict:
      hidden_states: (batch, length, hidden) last-layer states, compute dtype;
      pooled: (batch, hidden) tanh(dense([CLS])) as in BertModel;
      mlm_logits: (batch, num_predictions, padded_vocab_size) in the compute dtype, only if
        masked_lm_positions is given; the columns from vocab_size on (the padding) are -inf.
    input_mask None means no padding at all: no attention mask is built (what full synthetic batches use).
    """

    config: BertConfig

    def setup(self):
        cfg = self.config
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = _dense(cfg.hidden_size, cfg)
        self.mlm_transform = _dense(cfg.hidden_size, cfg)
        self.mlm_transform_LayerNorm = _layer_norm(cfg)
        self.mlm_bias = self.param("mlm_bias", nn.initializers.zeros_init(), (cfg.padded_vocab_size,), jnp.float32)

    def encode(self, input_ids, input_mask, segment_ids=None, deterministic: bool = True):
        hidden = self.embeddings(input_ids, segment_ids, deterministic)
        return self.encoder(hidden, Padding.from_input_mask(input_mask), deterministic)

    def mlm_logits(self, hidden_states, masked_lm_positions):
        picked = jnp.take_along_axis(hidden_states, masked_lm_positions[..., None], axis=1)
        transformed = self.mlm_transform_LayerNorm(gelu(self.mlm_transform(picked), self.config.gelu_form))
        dtype = transformed.dtype
        # Compute-dtype operands and output: XLA's GPU and TPU matmuls accumulate bf16 products in float32,
        # and the backward matmuls then run in bf16 too (a float32 output would make them float32).
        logits = jnp.einsum("bph,vh->bpv", transformed, self.embeddings.word_table().astype(dtype))
        # The padded ids get a -inf bias: never predicted, no probability, no gradient. Slicing them off
        # instead would cost an extra logits-sized copy each way (measured: benchmarks/step_anatomy.py).
        real = jnp.arange(self.config.padded_vocab_size) < self.config.vocab_size
        return logits + jnp.where(real, self.mlm_bias, -jnp.inf).astype(dtype)

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
