"""The BERT model: BERT's numerics, the MLM head at masked positions, remat, dtypes, FLOPs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jaxpr_equations, load_config_file

from dnavec_jax import model as M
from dnavec_jax.training import batches, steps

CFG = M.BertConfig(vocab_size=69, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                   max_position_embeddings=32)


def batch(rows=2, seq=16, pred=3, vocab=69, seed=0):
    return batches.synthetic_examples(np.random.default_rng(seed), rows, seq, pred, vocab)


@pytest.fixture(scope="module")
def params():
    return jax.jit(lambda: M.init_params(CFG, jax.random.key(0)))()


def apply(cfg, params, b, **kw):
    return M.BertForMaskedLM(cfg).apply({"params": params}, b["input_ids"], b["input_mask"], b["segment_ids"],
                                        b["masked_lm_positions"], **kw)


def test_heads_must_divide_hidden_and_base_config_says_why():
    with pytest.raises(ValueError, match=r"hidden_size \(512\) must be divisible by model.num_heads \(12\).*8 heads"):
        M.BertConfig(num_heads=12)
    base = load_config_file("base")
    config = M.BertConfig.from_dict(base.model.to_dict())
    assert (config.num_heads, config.head_dim, config.vocab_size) == (8, 64, 87_365)
    assert (config.num_layers, config.hidden_size, config.intermediate_size) == (12, 512, 2048)
    assert config.layer_norm_eps == 1e-12 and config.hidden_dropout_rate == 0.1


def test_bert_numerics():
    assert float(M.gelu(jnp.float32(1.0))) == pytest.approx(0.8413447, abs=1e-6)  # erf form, not tanh (0.841192)
    # Inference's form (transformers'): the same function to float32 rounding (a couple of ulps; in the
    # negative tail 1 + erf cancels, and values below 1e-6 there become 0).
    x = jnp.linspace(-12.0, 12.0, 4801, dtype=jnp.float32)
    np.testing.assert_allclose(M.gelu(x, "erf"), M.gelu(x), atol=1e-6, rtol=0)
    assert float(jnp.abs(M.gelu(x, "erf") - M.gelu(x)).max()) > 0  # two computations, not one
    assert float(M.gelu(jnp.float32(1.0), "erf")) == pytest.approx(0.8413447, abs=1e-6)
    assert M._layer_norm(CFG).epsilon == 1e-12


def test_mlm_head_runs_at_the_masked_positions_with_the_tied_decoder(params):
    b = batch()
    out = apply(CFG, params, b)
    # The vocabulary rows are padded to a multiple of 128 inside the model; the padded ids are never predicted.
    assert out["mlm_logits"].shape == (2, 3, 128) and out["mlm_logits"].dtype == jnp.float32
    assert params["embeddings"]["word_embeddings"]["embedding"].shape == (128, 32)
    assert params["mlm_bias"].shape == (128,) and CFG.padded_vocab_size == 128
    assert np.all(np.isneginf(out["mlm_logits"][..., 69:]))
    picked = np.take_along_axis(np.asarray(out["hidden_states"]), b["masked_lm_positions"][..., None], axis=1)
    dense = params["mlm_transform"]
    transformed = M.gelu(picked @ dense["kernel"] + dense["bias"])
    mean = transformed.mean(-1, keepdims=True)
    var = ((transformed - mean) ** 2).mean(-1, keepdims=True)
    ln = params["mlm_transform_LayerNorm"]
    normed = (transformed - mean) / np.sqrt(var + 1e-12) * ln["scale"] + ln["bias"]
    table = params["embeddings"]["word_embeddings"]["embedding"][:69]
    expected = normed @ table.T + params["mlm_bias"][:69]
    np.testing.assert_allclose(out["mlm_logits"][..., :69], expected, rtol=2e-4, atol=2e-5)


def test_dropout_only_when_not_deterministic(params):
    b = batch()
    eval_a = apply(CFG, params, b)["mlm_logits"]
    eval_b = apply(CFG, params, b)["mlm_logits"]
    train_a = apply(CFG, params, b, deterministic=False, rngs={"dropout": jax.random.key(1)})["mlm_logits"]
    train_b = apply(CFG, params, b, deterministic=False, rngs={"dropout": jax.random.key(2)})["mlm_logits"]
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(train_a, train_b) and not np.allclose(train_a, eval_a)


def test_padding_keys_are_masked(params):
    b = batch(rows=1)
    b["input_mask"][:, 12:] = 0
    b["masked_lm_positions"][:] = [[1, 2, 3]]
    other = {k: v.copy() for k, v in b.items()}
    other["input_ids"][:, 12:] = 7  # different tokens behind the padding mask
    np.testing.assert_allclose(apply(CFG, params, b)["mlm_logits"], apply(CFG, params, other)["mlm_logits"],
                               rtol=1e-5, atol=1e-6)


def test_remat_and_bfloat16(params):
    b = batch()

    def loss(cfg, p):
        return apply(cfg, p, b)["mlm_logits"][..., :69].sum()

    plain = jax.jit(jax.value_and_grad(functools.partial(loss, CFG)))(params)
    remat_config = M.BertConfig(**{**CFG.to_dict(), "remat": True})
    remat = jax.jit(jax.value_and_grad(functools.partial(loss, remat_config)))(params)
    np.testing.assert_allclose(remat[0], plain[0], rtol=1e-5)
    for a, c in zip(jax.tree.leaves(remat[1]), jax.tree.leaves(plain[1])):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)
    bf16 = M.BertConfig(**{**CFG.to_dict(), "dtype": "bfloat16"})
    out = jax.jit(functools.partial(apply, bf16))(params, b)
    assert out["hidden_states"].dtype == jnp.bfloat16 and out["mlm_logits"].dtype == jnp.bfloat16
    np.testing.assert_allclose(out["mlm_logits"], apply(CFG, params, b)["mlm_logits"], atol=0.1)


def test_flops_per_token_matches_xla_cost_analysis():
    cfg = M.BertConfig(vocab_size=1349, hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512,
                       max_position_embeddings=128, hidden_dropout_rate=0.0)
    rows, seq, pred = 8, 128, 20
    b = {k: v[None] for k, v in batch(rows, seq, pred, cfg.vocab_size).items()}
    abstract = jax.eval_shape(lambda: M.init_params(cfg, jax.random.key(0)))
    compiled = jax.jit(functools.partial(steps.loss_and_grads, M.BertForMaskedLM(cfg))).lower(
        abstract, b, jax.random.key(0)).compile()
    xla = compiled.cost_analysis()["flops"] / (rows * seq)
    formula = M.flops_per_token(cfg, seq, pred)
    assert 1.0 <= xla / formula < 1.1  # XLA also counts softmax, LayerNorm, GELU, Adam-free elementwise work
    # The paper model: ~0.305 GFLOP per trained token.
    base = M.BertConfig()
    assert M.flops_per_token(base, 512, 77) == pytest.approx(304_840_326, rel=1e-9)


def base_model_config(**overrides) -> M.BertConfig:
    return M.BertConfig.from_dict({**load_config_file("base").model.to_dict(), **overrides})


def cudnn_attention_calls(equations) -> list:
    return [eqn for eqn in equations if eqn.primitive.name.startswith("dot_product_attention_")]


@pytest.mark.usefixtures("stub_cudnn")
def test_cudnn_attention_traces_forward_and_backward_of_the_base_model():
    cfg = base_model_config(attention_implementation="cudnn")
    assert cfg.dtype == "bfloat16"
    b = batch(rows=2, seq=512, pred=77, vocab=cfg.vocab_size)
    b["input_mask"][1, 300:] = 0  # padding in one example: passed to cuDNN as key lengths, not a mask
    abstract = jax.eval_shape(lambda: M.init_params(cfg, jax.random.key(0)))

    def loss(params, input_mask):
        out = M.BertForMaskedLM(cfg).apply({"params": params}, b["input_ids"], input_mask, b["segment_ids"],
                                           b["masked_lm_positions"], deterministic=False,
                                           rngs={"dropout": jax.random.key(1)})
        return out["mlm_logits"][..., : cfg.vocab_size].astype(jnp.float32).sum()

    for input_mask, mask_type in ((b["input_mask"], "PADDING"), (None, "NO_MASK")):
        equations = jaxpr_equations(jax.jit(jax.grad(loss)).trace(abstract, input_mask).jaxpr)
        calls = cudnn_attention_calls(equations)
        names = sorted({eqn.primitive.name for eqn in calls})
        assert names == ["dot_product_attention_bwd_wrapper", "dot_product_attention_fwd_wrapper"]
        assert len([e for e in calls if e.primitive.name.endswith("fwd_wrapper")]) == cfg.num_layers
        for eqn in calls:
            assert eqn.params["mask_type"].name == mask_type
            query, key, value, bias = (v.aval for v in eqn.invars[:4])
            assert query.dtype == jnp.bfloat16 and query.shape == (2, 512, 8, 64)
            assert bias.shape == (0,)  # no bias: the padding travels as lengths


def test_float32_cudnn_is_a_config_error_and_auto_picks_cudnn_only_on_nvidia_half_precision(monkeypatch):
    with pytest.raises(ValueError, match="needs model.dtype bfloat16 or float16"):
        base_model_config(attention_implementation="cudnn", dtype="float32")
    with pytest.raises(ValueError, match="attention_implementation must be one of auto, xla, cudnn"):
        base_model_config(attention_implementation="flash")
    assert M.BertConfig.from_dict({"attention_implementation": None}).attention_implementation == "auto"
    assert M.attention_implementation(base_model_config()) == "xla"  # this CPU

    class FakeDevice:
        device_kind = "NVIDIA H200"

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda *args: [FakeDevice()])
    assert M.attention_implementation(base_model_config()) == "cudnn"
    assert M.attention_implementation(base_model_config(dtype="float32")) == "xla"
    assert M.attention_implementation(base_model_config(attention_implementation="xla")) == "xla"
    assert M.attention_implementation(base_model_config(hidden_size=1536, intermediate_size=64)) == "xla"  # head 192
    FakeDevice.device_kind = "AMD Instinct MI300X"
    assert M.attention_implementation(base_model_config()) == "xla"


def test_no_input_mask_equals_a_mask_of_ones(params):
    b = batch()
    with_mask = apply(CFG, params, b)
    without = M.BertForMaskedLM(CFG).apply({"params": params}, b["input_ids"], None, b["segment_ids"],
                                           b["masked_lm_positions"])
    np.testing.assert_allclose(without["mlm_logits"], with_mask["mlm_logits"], rtol=1e-6, atol=1e-7)


def test_embeddings_look_up_float32_rows_without_colliding_scatters():
    cfg = M.BertConfig(**{**CFG.to_dict(), "dtype": "bfloat16"})
    b = batch(rows=4, seq=16)
    abstract = jax.eval_shape(lambda: M.init_params(cfg, jax.random.key(0)))
    word_shape = (cfg.padded_vocab_size, cfg.hidden_size)

    def loss(params):
        return jax.nn.logsumexp(apply(cfg, params, b)["mlm_logits"].astype(jnp.float32), axis=-1).sum()

    equations = jaxpr_equations(jax.jit(jax.grad(loss)).trace(abstract).jaxpr)
    gathers = [e for e in equations if e.primitive.name == "gather"]
    scatters = [e for e in equations if e.primitive.name.startswith("scatter")]
    # The word rows are gathered from the float32 table (no bf16 copy of it is made for the lookup) and
    # their gradient is the one scatter-add into a table: float32, into the word table itself.
    table_gathers = [e for e in gathers if e.invars[0].aval.shape == word_shape]
    assert [e.invars[0].aval.dtype for e in table_gathers] == [jnp.float32]
    table_scatters = [e for e in scatters if e.invars[0].aval.shape[-1] == cfg.hidden_size
                      and e.invars[0].aval.ndim == 2]
    assert [(e.invars[0].aval.shape, e.invars[0].aval.dtype) for e in table_scatters] == [(word_shape, jnp.float32)]
    # Positions and token types: no gather at all (a slice and a one-hot product).
    small_tables = {(cfg.max_position_embeddings, cfg.hidden_size), (cfg.type_vocab_size, cfg.hidden_size)}
    assert not [e for e in gathers + scatters if e.invars[0].aval.shape in small_tables]


def test_token_types_and_positions_add_the_right_rows(params):
    b = batch(rows=2, seq=16)
    b["segment_ids"][1, 8:] = 1
    out = apply(CFG, params, b)
    # Reference: the same model with the embedding sum written as plain indexing.
    emb = params["embeddings"]
    summed = (np.asarray(emb["word_embeddings"]["embedding"])[b["input_ids"]]
              + np.asarray(emb["position_embeddings"]["embedding"])[np.arange(16)]
              + np.asarray(emb["token_type_embeddings"]["embedding"])[b["segment_ids"]])
    ln = emb["LayerNorm"]
    mean, var = summed.mean(-1, keepdims=True), summed.var(-1, keepdims=True)
    expected = (summed - mean) / np.sqrt(var + 1e-12) * np.asarray(ln["scale"]) + np.asarray(ln["bias"])
    hidden = M.BertForMaskedLM(CFG).apply({"params": params}, b["input_ids"], b["segment_ids"],
                                          method=lambda m, ids, seg: m.embeddings(ids, seg, True))
    np.testing.assert_allclose(hidden, expected, rtol=1e-5, atol=1e-5)
    other = apply(CFG, params, batch(rows=2, seq=16))["hidden_states"]
    assert not np.allclose(out["hidden_states"][1, 8:], other[1, 8:])
