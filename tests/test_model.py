"""The BERT model: BERT's numerics, the MLM head at masked positions, remat, dtypes, FLOPs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config_file

from dnavec_jax import input_pipeline, train
from dnavec_jax import model as M

CFG = M.BertConfig(vocab_size=69, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                   max_position_embeddings=32)


def batch(rows=2, seq=16, pred=3, vocab=69, seed=0):
    return input_pipeline.synthetic_examples(np.random.default_rng(seed), rows, seq, pred, vocab)


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
    assert M._layer_norm(CFG).epsilon == 1e-12


def test_mlm_head_runs_at_the_masked_positions_with_the_tied_decoder(params):
    b = batch()
    out = apply(CFG, params, b)
    assert out["mlm_logits"].shape == (2, 3, 69) and out["mlm_logits"].dtype == jnp.float32
    picked = np.take_along_axis(np.asarray(out["hidden_states"]), b["masked_lm_positions"][..., None], axis=1)
    dense = params["mlm_transform"]
    transformed = M.gelu(picked @ dense["kernel"] + dense["bias"])
    mean = transformed.mean(-1, keepdims=True)
    var = ((transformed - mean) ** 2).mean(-1, keepdims=True)
    ln = params["mlm_transform_LayerNorm"]
    normed = (transformed - mean) / np.sqrt(var + 1e-12) * ln["scale"] + ln["bias"]
    expected = normed @ params["embeddings"]["word_embeddings"]["embedding"].T + params["mlm_bias"]
    np.testing.assert_allclose(out["mlm_logits"], expected, rtol=2e-4, atol=2e-5)


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
        return apply(cfg, p, b)["mlm_logits"].sum()

    plain = jax.jit(jax.value_and_grad(functools.partial(loss, CFG)))(params)
    remat_config = M.BertConfig(**{**CFG.to_dict(), "remat": True})
    remat = jax.jit(jax.value_and_grad(functools.partial(loss, remat_config)))(params)
    np.testing.assert_allclose(remat[0], plain[0], rtol=1e-5)
    for a, c in zip(jax.tree.leaves(remat[1]), jax.tree.leaves(plain[1])):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)
    bf16 = M.BertConfig(**{**CFG.to_dict(), "dtype": "bfloat16"})
    out = jax.jit(functools.partial(apply, bf16))(params, b)
    assert out["hidden_states"].dtype == jnp.bfloat16 and out["mlm_logits"].dtype == jnp.float32
    np.testing.assert_allclose(out["mlm_logits"], apply(CFG, params, b)["mlm_logits"], atol=0.1)


def test_flops_per_token_matches_xla_cost_analysis():
    cfg = M.BertConfig(vocab_size=1349, hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512,
                       max_position_embeddings=128, hidden_dropout_rate=0.0)
    rows, seq, pred = 8, 128, 20
    b = {k: v[None] for k, v in batch(rows, seq, pred, cfg.vocab_size).items()}
    abstract = jax.eval_shape(lambda: M.init_params(cfg, jax.random.key(0)))
    compiled = jax.jit(functools.partial(train.loss_and_grads, M.BertForMaskedLM(cfg))).lower(
        abstract, b, jax.random.key(0)).compile()
    xla = compiled.cost_analysis()["flops"] / (rows * seq)
    formula = M.flops_per_token(cfg, seq, pred)
    assert 1.0 <= xla / formula < 1.1  # XLA also counts softmax, LayerNorm, GELU, Adam-free elementwise work
    # The paper model: ~0.305 GFLOP per trained token.
    base = M.BertConfig()
    assert M.flops_per_token(base, 512, 77) == pytest.approx(304_840_326, rel=1e-9)
