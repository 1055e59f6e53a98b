"""dnavec_jax.tools.loaded_model: loading a run or an export, tokenizing and windowing DNA, the jitted batched
encoder."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from dnavec_jax.errors import DNAVecError
from dnavec_jax.model import BertForMaskedLM
from dnavec_jax.tokenization import CLS_ID, PAD_ID, SEP_ID, KmerTokenizer
from dnavec_jax.tools import loaded_model


@pytest.fixture(scope="module")
def run_model(trained_workdir):
    return loaded_model.load_model(trained_workdir)


@pytest.fixture(scope="module")
def export_model(trained_export):
    return loaded_model.load_model(trained_export)


def test_load_run_and_export(run_model, export_model, trained_workdir):
    for loaded in (run_model, export_model):
        assert loaded.config.vocab_size == loaded.tokenizer.vocab_size == 5 + 4**3 + 4**4
        assert (loaded.tokenizer.k_min, loaded.tokenizer.k_max) == (3, 4)
        assert loaded.max_tokens == 62 and loaded.window_length == 64
        assert loaded.step == 40 and loaded.config.dtype == "float32"
    assert run_model.source.startswith("run ") and export_model.source.startswith("export ")
    assert export_model.initialized == ()
    flat_run = jax.tree.leaves_with_path(run_model.params)
    flat_export = dict(jax.tree.leaves_with_path(export_model.params))
    assert len(flat_run) == len(flat_export)
    for path, value in flat_run:
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_export[path]))
    older = loaded_model.load_model(trained_workdir, step=20)
    assert older.step == 20
    assert not np.array_equal(older.params["embeddings"]["word_embeddings"]["embedding"],
                              run_model.params["embeddings"]["word_embeddings"]["embedding"])


def test_load_errors(tmp_path, trained_workdir, trained_export):
    with pytest.raises(DNAVecError, match="no such file"):
        loaded_model.load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DNAVecError, match="holds no model"):
        loaded_model.load_model(tmp_path / "empty")
    with pytest.raises(DNAVecError, match="no checkpoint for step 7"):
        loaded_model.load_model(trained_workdir, step=7)
    with pytest.raises(DNAVecError, match="--step applies to a training run"):
        loaded_model.load_model(trained_export, step=40)
    # A run whose tokenizer (k 3..5) does not match the model's vocabulary.
    run = tmp_path / "run"
    shutil.copytree(trained_workdir, run, ignore=shutil.ignore_patterns("lock", "hf"))
    config = json.loads((run / "config.json").read_text())
    config["data"]["prep"]["k_max"] = 5
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(DNAVecError, match=r"vocab_size is 325 but its tokenizer \(k 3..5\) has 1,349 ids") as error:
        loaded_model.load_model(run)
    assert "\n" not in str(error.value)


def test_tokenize_matches_encode_and_splits_at_n():
    tokenizer = KmerTokenizer(3, 8)
    rng = np.random.default_rng(1)
    dna = "".join(rng.choice(list("ACGT"), size=300))
    contigs = loaded_model.tokenize_sequence(tokenizer, dna, seed=5)
    assert len(contigs) == 1 and contigs[0].start == 0
    np.testing.assert_array_equal(contigs[0].ids, tokenizer.encode(dna, seed=5))
    # Lower case reads as upper case; N and IUPAC letters split contigs; contigs shorter than k_min vanish.
    mixed = dna[:100].lower() + "NNNN" + dna[104:200] + "R" + "AC" + "Y" + dna[204:]
    contigs = loaded_model.tokenize_sequence(tokenizer, mixed, seed=5)
    assert [c.start for c in contigs] == [0, 104, 204]
    assert [len(c.ids) for c in contigs] == [98, 94, 94]
    # Each contig keeps the k drawn for its positions: the tokens of an unchanged region do not move.
    np.testing.assert_array_equal(contigs[2].ids[:80], tokenizer.encode(dna, seed=5)[204:284])
    assert {len(t) for t in tokenizer.decode_ids(contigs[0].ids[:-8])} == set(range(3, 9))


def test_invalid_letters_name_the_record():
    tokenizer = KmerTokenizer(3, 4)
    with pytest.raises(DNAVecError, match=r"chrZ: invalid letter 'X' at position 4 \(2 such"):
        loaded_model.tokenize_sequence(tokenizer, "ACGTXACGT-", seed=0, name="chrZ")
    with pytest.raises(DNAVecError, match="invalid letter 'é'"):
        loaded_model.tokenize_sequence(tokenizer, "ACGé", seed=0)


def test_windows_cover_every_token_without_truncation():
    tokenizer = KmerTokenizer(3, 4)
    dna = "ACGTTGCA" * 40 + "N" + "GGCATC" * 10
    windows = loaded_model.sequence_windows(tokenizer, dna, seed=3, max_tokens=62)
    contigs = loaded_model.tokenize_sequence(tokenizer, dna, seed=3)
    # 318 tokens -> 6 windows of 53; 58 tokens -> 1 window.
    assert [len(w.ids) for w in windows] == [53] * 6 + [58]
    np.testing.assert_array_equal(np.concatenate([w.ids for w in windows]),
                                  np.concatenate([c.ids for c in contigs]))
    np.testing.assert_array_equal(np.concatenate([w.starts for w in windows[:6]]), np.arange(318))
    assert windows[6].starts[0] == 321
    assert loaded_model.padded_length(1, 64) == 8
    assert loaded_model.padded_length(6, 64) == 8 and loaded_model.padded_length(7, 64) == 16
    assert loaded_model.padded_length(62, 64) == 64 and loaded_model.padded_length(40, 512) == 64
    with pytest.raises(ValueError):
        loaded_model.padded_length(63, 64)
    ids, mask = loaded_model.pack_windows([np.array([7, 8]), np.array([9])], 8)
    np.testing.assert_array_equal(ids, [[CLS_ID, 7, 8, SEP_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
                                        [CLS_ID, 9, SEP_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]])


def test_encoder_matches_the_model_and_compiles_once_per_shape(run_model):
    tokenizer = run_model.tokenizer
    rng = np.random.default_rng(0)
    windows = [rng.integers(5, tokenizer.vocab_size, size=n) for n in (5, 30, 62, 12, 1, 40, 62)]
    input_ids, input_mask = loaded_model.pack_windows(windows, 64)
    encoder = loaded_model.Encoder(run_model, batch_size=3)
    hidden = encoder.encode(input_ids, input_mask)
    assert hidden.shape == (7, 64, 32) and hidden.dtype == np.float32
    assert encoder.num_compiled == 1  # 3 batches (the last one padded), one program
    reference = BertForMaskedLM(run_model.config).apply(
        {"params": run_model.params}, input_ids, input_mask, method=BertForMaskedLM.encode)
    np.testing.assert_allclose(hidden, np.asarray(reference), atol=1e-5)
    encoder.encode(input_ids[:2, :16], input_mask[:2, :16])
    assert encoder.num_compiled == 2

    # encode_windows: bucketed by length, every key once, the same states as the full-length run.
    seen = {}
    for keys, states in encoder.encode_windows(enumerate(windows)):
        for key, state in zip(keys, states):
            seen[key] = state
    assert sorted(seen) == list(range(7))
    for key, window in enumerate(windows):
        n = len(window) + 2
        assert seen[key].shape[0] == loaded_model.padded_length(len(window), 64)
        np.testing.assert_allclose(seen[key][:n], hidden[key, :n], atol=1e-5)
    assert encoder.num_compiled == 4  # 64 and 16 compiled above; 8 and 32 new


def _windows(tokenizer, sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(5, tokenizer.vocab_size, size=n) for n in sizes]


@pytest.mark.parametrize("batch_size", [3, 5])
def test_encoder_splits_batches_over_every_device_with_single_device_numbers(run_model, batch_size):
    """conftest simulates 4 CPU devices: the batch rows are split over all 4 (a batch size they do not divide is
    padded to one they do), and every row equals what one device computes."""
    windows = _windows(run_model.tokenizer, (5, 30, 62, 12, 1, 40, 62, 7, 20))
    input_ids, input_mask = loaded_model.pack_windows(windows, 64)
    one = loaded_model.Encoder(run_model, batch_size=batch_size, devices=jax.devices()[:1])
    every = loaded_model.Encoder(run_model, batch_size=batch_size)
    assert jax.device_count() == 4 and every.parallel.num_devices == 4 and every.rows == 4 * -(-batch_size // 4)
    assert one.rows == batch_size
    started = every._dispatch(input_ids[:batch_size], input_mask[:batch_size])
    assert len(started.sharding.device_set) == 4 and not started.sharding.is_fully_replicated
    np.testing.assert_allclose(every.encode(input_ids, input_mask), one.encode(input_ids, input_mask), atol=1e-6)
    for (keys_a, a), (keys_b, b) in zip(every.encode_windows(enumerate(windows)), one.encode_windows(
            enumerate(windows))):
        order = {key: row for row, key in enumerate(keys_b)}
        for row, key in enumerate(keys_a):
            if key in order:
                np.testing.assert_allclose(a[row], b[order[key]], atol=1e-6)


def test_per_head_and_fused_attention_are_the_xla_path(run_model):
    """What inference runs on a CPU (the fused kernel; where it cannot build, one example and head at a time)
    gives the batched XLA path's numbers; a machine with a compiler builds the kernel."""
    import dataclasses

    from dnavec_jax.kernels import cpu_attention

    windows = _windows(run_model.tokenizer, (62, 3, 40, 17, 62, 9))
    input_ids, input_mask = loaded_model.pack_windows(windows, 64)
    configs = {name: dataclasses.replace(run_model.config, attention_implementation=name)
               for name in ("xla", "xla_per_head", "cpu_fused")}
    states = {name: np.asarray(BertForMaskedLM(config).apply({"params": run_model.params}, input_ids, input_mask,
                                                              method=BertForMaskedLM.encode))
              for name, config in configs.items()}
    np.testing.assert_allclose(states["xla_per_head"], states["xla"], atol=1e-6)
    np.testing.assert_allclose(states["cpu_fused"], states["xla"], atol=1e-5)
    inference = loaded_model.inference_config(run_model.config)
    expected = "cpu_fused" if cpu_attention._compiler() else "xla_per_head"  # no compiler: XLA, one warning
    assert (inference.attention_implementation, inference.gelu_form) == (expected, "erf")
    half = loaded_model.inference_config(run_model.config, "bfloat16")
    assert half.attention_implementation == "xla_per_head"  # the kernel is float32


def test_bfloat16_inference(run_model):
    windows = _windows(run_model.tokenizer, (62, 30, 12))
    input_ids, input_mask = loaded_model.pack_windows(windows, 64)
    full = loaded_model.Encoder(run_model, batch_size=4).encode(input_ids, input_mask)
    half = loaded_model.Encoder(run_model, batch_size=4, dtype="bfloat16").encode(input_ids, input_mask)
    assert half.dtype == np.float32 and half.shape == full.shape
    difference = np.abs(half - full)
    assert 0 < difference.max() and difference.mean() < 0.05 * np.abs(full).mean()  # bf16: ~3 significant digits
    with pytest.raises(DNAVecError, match="--dtype 'float64': model.dtype must be float32, bfloat16 or float16"):
        loaded_model.Encoder(run_model, dtype="float64")


def test_encode_windows_does_not_hold_a_rare_length_forever(run_model):
    """A window of a length nothing else has runs part-full once max_lag later windows have arrived, so a caller
    that emits records in order holds a bounded number of them."""
    encoder = loaded_model.Encoder(run_model, batch_size=4)
    windows = [(0, np.full(3, 7))] + [(i, np.full(60, 7)) for i in range(1, 41)]  # lengths 8, then 64s
    batches = [keys for keys, _ in encoder.encode_windows(windows, max_lag=8)]
    first = next(index for index, keys in enumerate(batches) if 0 in keys)
    assert first <= 2 and sorted(key for keys in batches for key in keys) == list(range(41))
    unbounded = [keys for keys, _ in encoder.encode_windows(windows, max_lag=10**9)]
    assert 0 in unbounded[-1]  # without the bound it waits for the end


_TWO_PROCESS_SCRIPT = """
import sys
import jax
import numpy as np
jax.distributed.initialize(f"localhost:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
from dnavec_jax.tools import loaded_model
loaded = loaded_model.load_model(sys.argv[3])
inputs = np.load(sys.argv[4])
encoder = loaded_model.Encoder(loaded, batch_size=3)  # 4 devices over 2 processes: 4 rows a batch
assert encoder.parallel.num_devices == 4 and jax.local_device_count() == 2, jax.devices()
hidden = encoder.encode(inputs["ids"], inputs["mask"])
np.save(sys.argv[5] + f"{jax.process_index()}.npy", hidden)
"""


@pytest.mark.slow
def test_two_processes_encode_like_one(run_model, trained_workdir, tmp_path, compile_cache):
    """Two processes x 2 CPU devices (jax.distributed on localhost): each feeds the same batches, each gets every
    row back, equal to one process's numbers."""
    import os
    import subprocess
    import sys

    from conftest import REPO, free_port

    windows = _windows(run_model.tokenizer, (5, 30, 62, 12, 1, 40, 62))
    input_ids, input_mask = loaded_model.pack_windows(windows, 64)
    np.savez(tmp_path / "inputs.npz", ids=input_ids, mask=input_mask)
    port = free_port()
    env = {**os.environ, **compile_cache, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_SCRIPT, str(port), str(index), str(trained_workdir),
                               str(tmp_path / "inputs.npz"), str(tmp_path / "hidden")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for index in range(2)]
    try:
        errors = [proc.communicate(timeout=240)[1] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    expected = loaded_model.Encoder(run_model, batch_size=3).encode(input_ids, input_mask)
    for index in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"hidden{index}.npy"), expected, atol=1e-6)


def test_training_loops_keep_two_steps_in_flight(monkeypatch):
    """bound_in_flight waits for the step two places back, so a loop that dispatches a step per batch holds at
    most three batches (docs/classify.md: unbounded, the token probe's peak grew with the task)."""
    waited = []
    monkeypatch.setattr(loaded_model.jax, "block_until_ready", waited.append)
    steps = []
    for step in range(6):
        steps.append(step)
        loaded_model.bound_in_flight(steps)
        assert len(steps) - 1 - (waited[-1] if waited else -1) <= 3
    assert waited == [0, 1, 2, 3]
