"""The sharded train step: same numbers on 1 and 4 devices, DP vs FSDP, global loss normalisation."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import jaxpr_equations, load_config_file, optimizer_of

from dnavec_jax import model as model_lib
from dnavec_jax.model import BertForMaskedLM
from dnavec_jax.training import batches, loop, metrics, objective, optim, settings, sharding, steps

pytestmark = pytest.mark.usefixtures("compile_cache")

SEQ, PRED = 64, 10


def make_parts(config):
    model_config = settings.model_config_from(config)
    model = BertForMaskedLM(model_config)
    tx, schedule = optimizer_of(config)
    init_fn = steps.make_init_fn(model_config, tx, int(config.train.seed))
    return model_config, model, tx, schedule, init_fn


def uneven_batch(vocab_size: int, accum: int = 1, rows: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic examples whose masked-token counts differ a lot between the 4 device shards."""
    batch = batches.synthetic_examples(np.random.default_rng(seed), rows, SEQ, PRED, vocab_size)
    weights = batch["masked_lm_weights"]
    weights[: rows // 4, 2:] = 0.0  # the first device's rows: 2 real predictions each
    weights[rows // 4: rows // 2, 6:] = 0.0
    batch["input_mask"][rows - 1, SEQ // 2:] = 0  # some padding
    return {k: v.reshape(accum, rows // accum, *v.shape[1:]) for k, v in batch.items()}


def on_mesh(mesh, init_fn, batch):
    abstract = jax.eval_shape(init_fn)
    state_sh = steps.train_state_shardings(abstract, mesh)
    state = jax.jit(init_fn, out_shardings=state_sh)()
    batch_sh = sharding.batch_sharding(mesh, 1)
    return state, state_sh, jax.device_put(batch, batch_sh), batch_sh


def grads_on(mesh, model, init_fn, batch):
    state, state_sh, batch, batch_sh = on_mesh(mesh, init_fn, batch)
    fn = jax.jit(functools.partial(steps.loss_and_grads, model),
                 in_shardings=(state_sh.params, batch_sh, sharding.replicated(mesh)))
    grads, sums = fn(state.params, batch, jax.random.key(7))
    return jax.device_get(grads), jax.device_get(sums), state


def assert_trees_close(a, b, rtol=2e-5, atol=1e-7):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


def test_four_devices_give_the_one_device_loss_and_gradients(tiny_config):
    assert jax.device_count() == 4
    _, model, _, _, init_fn = make_parts(tiny_config)  # dropout 0.1 stays on: same masks under sharding
    batch = uneven_batch(tiny_config.model.vocab_size)
    one = grads_on(sharding.make_mesh(False, jax.devices()[:1]), model, init_fn, batch)
    four = grads_on(sharding.make_mesh(False), model, init_fn, batch)
    assert len(four[2].params["mlm_bias"].sharding.device_set) == 4
    np.testing.assert_allclose(four[1]["loss_sum"], one[1]["loss_sum"], rtol=1e-6)
    assert four[1]["weight"] == one[1]["weight"] == batch["masked_lm_weights"].sum()
    assert_trees_close(four[0], one[0])


def test_loss_is_normalised_by_the_global_masked_token_count(tiny_config):
    tiny_config.model.hidden_dropout_rate = 0.0
    model_config, model, _, _, init_fn = make_parts(tiny_config)
    batch = uneven_batch(model_config.vocab_size)
    _, sums, state = grads_on(sharding.make_mesh(False), model, init_fn, batch)
    # Reference: per-slot cross-entropy from a plain single-device forward pass.
    flat = {k: v[0] for k, v in batch.items()}
    logits = model.apply({"params": jax.device_get(state.params)}, flat["input_ids"], flat["input_mask"],
                         flat["segment_ids"], flat["masked_lm_positions"])["mlm_logits"]
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, flat["masked_lm_ids"]))
    w = flat["masked_lm_weights"]
    expected = (ce * w).sum() / w.sum()
    loss = sums["loss_sum"] / sums["weight"]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # Normalising per device (the old pmap recipe) gives another number on this batch.
    per_device = np.mean([(ce[i:i + 2] * w[i:i + 2]).sum() / w[i:i + 2].sum() for i in range(0, 8, 2)])
    assert abs(per_device - expected) > 1e-3


def test_fsdp_and_data_parallel_agree_over_three_steps(tiny_config):
    _, model, tx, schedule, init_fn = make_parts(tiny_config)
    step_fn = steps.make_train_step(model, tx, schedule)
    results = {}
    for fsdp in (False, True):
        mesh = sharding.make_mesh(fsdp)
        state, state_sh, _, batch_sh = on_mesh(mesh, init_fn, uneven_batch(tiny_config.model.vocab_size))
        step = jax.jit(step_fn, in_shardings=(state_sh, batch_sh),
                       out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
        losses = []
        for index in range(3):
            batch = jax.device_put(uneven_batch(tiny_config.model.vocab_size, seed=index), batch_sh)
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        results[fsdp] = (losses, jax.device_get(state.params), state)
    kernel = results[True][2].params["encoder"]["layer_0"]["intermediate"]["kernel"]  # (32, 64)
    assert kernel.sharding.spec == jax.P(None, "fsdp")
    assert kernel.addressable_shards[0].data.shape == (32, 16)
    mu = results[True][2].opt_state[1][0].mu["encoder"]["layer_0"]["intermediate"]["kernel"]
    assert mu.sharding.spec == jax.P(None, "fsdp")
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-6)
    assert results[True][0][2] != results[True][0][0]  # it trained
    assert_trees_close(results[True][1], results[False][1], rtol=1e-5, atol=1e-6)
    assert int(results[True][2].step) == 3


def test_gradient_accumulation_equals_one_large_batch(tiny_config):
    tiny_config.model.hidden_dropout_rate = 0.0
    _, model, _, _, init_fn = make_parts(tiny_config)
    mesh = sharding.make_mesh(False)
    one = grads_on(mesh, model, init_fn, uneven_batch(tiny_config.model.vocab_size, accum=1))
    two = grads_on(mesh, model, init_fn, uneven_batch(tiny_config.model.vocab_size, accum=2))
    assert two[1]["weight"] == one[1]["weight"]
    np.testing.assert_allclose(two[1]["loss_sum"], one[1]["loss_sum"], rtol=1e-6)
    assert_trees_close(two[0], one[0])


def test_non_finite_step_leaves_the_state_alone(tiny_config):
    _, model, tx, schedule, init_fn = make_parts(tiny_config)
    state = jax.jit(init_fn)()
    params = dict(state.params)
    params["mlm_bias"] = params["mlm_bias"].at[7].set(jnp.inf)
    state = state.replace(params=params)
    batch = uneven_batch(tiny_config.model.vocab_size)
    new_state, metrics = jax.jit(steps.make_train_step(model, tx, schedule))(state, batch)
    assert not bool(metrics["finite"])
    assert int(new_state.step) == 0
    assert_trees_close(new_state.params, state.params, rtol=0, atol=0)


def test_mlm_sums_ignore_padding_slots_and_break_ties_to_the_lowest_id():
    logits = jnp.array([[[1.0, 3.0, 3.0, 0.0], [jnp.nan, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]]])
    labels = jnp.array([[1, 0, 2]])
    weights = jnp.array([[1.0, 0.0, 1.0]])
    sums = jax.device_get(objective.mlm_sums(logits, labels, weights))
    assert sums["weight"] == 2.0 and sums["correct"] == 1.0  # slot 0: argmax 1 (first of the tie); slot 2 wrong
    assert sums["accuracy_weight"] == 2.0
    expected = -jax.nn.log_softmax(logits[0, 0])[1] - jax.nn.log_softmax(logits[0, 2])[2]
    np.testing.assert_allclose(sums["loss_sum"], expected, rtol=1e-6)
    skipped = jax.device_get(jax.jit(objective.mlm_sums)(logits, labels, weights, jnp.bool_(False)))
    assert skipped["correct"] == skipped["accuracy_weight"] == 0.0 and skipped["loss_sum"] == sums["loss_sum"]


def test_cross_entropy_equals_optax_and_its_gradient_scatters_nothing():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5, 300)) * 4, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 300, size=(3, 5)))
    np.testing.assert_allclose(objective.cross_entropy(logits, labels),
                               optax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6)
    grad = jax.grad(lambda x: objective.cross_entropy(x, labels).sum())
    reference = jax.grad(lambda x: optax.softmax_cross_entropy_with_integer_labels(x, labels).sum())
    np.testing.assert_allclose(grad(logits), reference(logits), rtol=1e-5, atol=1e-7)
    # bf16 logits: the gradient comes back in bf16 and nothing scatters into a logits-sized buffer.
    names = {e.primitive.name for e in jaxpr_equations(jax.make_jaxpr(grad)(logits.astype(jnp.bfloat16)))}
    assert not [name for name in names if name.startswith("scatter")]
    optax_names = {e.primitive.name for e in jaxpr_equations(jax.make_jaxpr(reference)(logits))}
    assert any(name.startswith("scatter") for name in optax_names)  # optax's does: the check can see one
    assert grad(logits.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_accuracy_is_computed_only_on_the_steps_that_end_a_logging_interval(tiny_config):
    _, model, tx, schedule, init_fn = make_parts(tiny_config)
    step = jax.jit(steps.make_train_step(model, tx, schedule, accuracy_every=3, last_step=4))
    state = jax.jit(init_fn)()
    measured = []
    for index in range(5):
        state, metrics = step(state, uneven_batch(tiny_config.model.vocab_size, seed=index))
        measured.append(float(metrics["accuracy_weight"]) > 0)
        if not measured[-1]:
            assert float(metrics["correct"]) == 0.0
    assert measured == [False, False, True, True, False]  # steps 1..5: the 3rd (multiple of 3) and the 4th (last)


@pytest.mark.parametrize("impl", settings.PRNG_IMPLS)
def test_each_prng_implementation_draws_its_own_reproducible_dropout(tiny_config, impl):
    model_config, model, tx, schedule, _ = make_parts(tiny_config)
    init_fn = steps.make_init_fn(model_config, tx, 0, impl)
    step = jax.jit(steps.make_train_step(model, tx, schedule, prng_impl=impl))
    batch = uneven_batch(tiny_config.model.vocab_size)
    state = jax.jit(init_fn)()
    assert state.rng.shape == jax.random.key_data(jax.random.key(0, impl=settings.PRNG_IMPLS[impl])).shape
    losses = [float(step(jax.jit(init_fn)(), batch)[1]["loss"]) for _ in range(2)]
    assert losses[0] == losses[1]
    threefry = steps.make_init_fn(model_config, tx, 0, "threefry")
    assert_trees_close(jax.jit(init_fn)().params, jax.jit(threefry)().params, rtol=0, atol=0)  # params do not move
    if impl != "threefry":
        other = float(jax.jit(steps.make_train_step(model, tx, schedule))(jax.jit(threefry)(), batch)[1]["loss"])
        assert other != losses[0]  # another dropout draw


def base_steps_for_cuda(source: str, prng_impl: str, attention: str = "auto") -> tuple[str, str]:
    """The base config's train and eval steps as loop.trace_steps jits them, lowered for CUDA on this CPU
    (one device, as the GPU machine has; nothing compiles): their StableHLO text."""
    config = load_config_file("base")
    config.train.update(prng_impl=prng_impl, eval_batch_size=16)
    config.model.attention_implementation = attention
    run = settings.RunSettings.from_config(config)
    data = batches.DataInfo(source, 512, 77, num_validation_examples=16)
    mesh = sharding.make_mesh(False, jax.devices()[:1])
    tx, schedule = optim.make_optimizer(run.train.optimizer)
    abstract = jax.eval_shape(steps.make_init_fn(run.model, tx, 0, prng_impl))
    abstract = sharding.with_shardings(abstract, steps.train_state_shardings(abstract, mesh))
    traced = loop.trace_steps(run, data, run.model, run.prep.tokenizer(), tx, schedule, abstract, mesh)
    return tuple(step.lower(lowering_platforms=("cuda",)).as_text() for step in traced)


@pytest.mark.usefixtures("stub_cudnn")
@pytest.mark.parametrize("prng_impl", settings.PRNG_IMPLS)
@pytest.mark.parametrize("source, mask_type", [("tfrecord", "PADDING"), ("synthetic", "NO_MASK")])
def test_the_base_train_step_lowers_for_cuda_with_cudnn_attention(monkeypatch, source, mask_type, prng_impl):
    # attention 'auto', as configs/base.py leaves it: what an NVIDIA GPU would pick (bf16, heads of 64).
    monkeypatch.setattr(model_lib, "on_nvidia_gpu", lambda: True)
    layers = load_config_file("base").model.num_layers
    train_text, eval_text = base_steps_for_cuda(source, prng_impl)
    # The eval step always passes the input mask: its batches end in filler rows.
    for text, mask, forward, backward in ((train_text, mask_type, layers, layers), (eval_text, "PADDING", layers, 0)):
        calls = re.findall(r"custom_call @(__cudnn\$fmha\w+)\(.*mask_type\\22: \\22(\w+)\\22", text)
        assert calls.count(("__cudnn$fmhaSoftmax", mask)) == forward
        assert calls.count(("__cudnn$fmhaSoftmaxBackward", mask)) == backward
        assert len(calls) == forward + backward  # no other kernel (no dropout or bias variant), no other mask
    # Padded batches pass their lengths (one int32 per example), never a (batch, 1, 1, keys) mask tensor.
    assert "tensor<8x1x1x512xi1>" not in train_text


def test_weight_decay_mask_and_schedule(tiny_config):
    _, _, _, _, init_fn = make_parts(tiny_config)
    mask = optim.weight_decay_mask(jax.eval_shape(init_fn).params)
    assert mask["encoder"]["layer_0"]["attention"]["query"]["kernel"]
    assert mask["embeddings"]["word_embeddings"]["embedding"]
    assert not mask["encoder"]["layer_0"]["attention"]["query"]["bias"]
    assert not mask["encoder"]["layer_0"]["output_LayerNorm"]["scale"]
    assert not mask["mlm_bias"] and not mask["pooler"]["kernel"]
    t = tiny_config.train
    t.update(num_train_steps=100, warmup_steps=10, learning_rate=1.0, schedule="linear")
    lr = optim.learning_rate_schedule(t)
    assert [float(lr(s)) for s in (0, 5, 10, 55, 100)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0], abs=1e-6)
    t.schedule, t.end_learning_rate_factor = "cosine", 0.1
    lr = optim.learning_rate_schedule(t)
    assert [float(lr(s)) for s in (10, 55, 100)] == pytest.approx([1.0, 0.55, 0.1], abs=1e-6)


def test_peak_flops_table():
    class Fake:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    assert metrics.peak_flops_per_device(Fake()) == 989e12
    Fake.device_kind = "NVIDIA H100 PCIe"
    assert metrics.peak_flops_per_device(Fake()) == 756e12
    Fake.device_kind = "Some Future GPU"
    assert metrics.peak_flops_per_device(Fake()) is None
    assert metrics.peak_flops_per_device(jax.devices()[0]) is None  # CPU: MFU omitted
