"""End to end: resume reproduces the uninterrupted run, SIGTERM saves, NaN stops, user errors come first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import pytest
from conftest import REPO, set_dotted, train_and_evaluate

from dnavec_jax.errors import DNAVecError
from dnavec_jax.tf_runtime import TRAIN_INSTALL
from dnavec_jax.training import checkpointing, loop

pytestmark = pytest.mark.usefixtures("compile_cache")


def rows(workdir, split=None):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if split is None or r["split"] == split]


def figures(row):
    return {k: v for k, v in row.items() if k not in ("time", "step_time_s", "tokens_per_s", "eval_time_s")}


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory, compile_cache, tiny_dataset):
    """On the prepared chr22 shards: one uninterrupted 7-step run; one preempted at step 3 and resumed."""
    from conftest import TINY_PREP, load_config_file

    config = load_config_file("tiny")
    config.data.update(source="tfrecord", data_dir=str(tiny_dataset), shuffle_buffer=256)
    config.data.prep.update(**TINY_PREP)
    config.train.update(num_train_steps=7, checkpoint_every_steps=100, eval_every_steps=4)
    base = tmp_path_factory.mktemp("resume")
    full = train_and_evaluate(config, base / "full")
    part = train_and_evaluate(config, base / "part", preempt_at_step=3)
    after_interrupt = rows(base / "part")
    resumed = train_and_evaluate(config, base / "part")
    again = train_and_evaluate(config, base / "part")  # finished: evaluates the final checkpoint again
    return base, full, part, resumed, again, after_interrupt


def test_interrupt_and_resume_reproduce_the_uninterrupted_losses(resume_runs):
    base, full, part, resumed, _, after_interrupt = resume_runs
    assert part["preempted"] and part["step"] == 3 and not part["eval"]
    assert [r["step"] for r in after_interrupt] == [1, 2, 3]
    assert checkpointing.make_manager(base / "full", read_only=True).all_steps() == [7]
    assert resumed["step"] == full["step"] == 7
    full_rows, part_rows = rows(base / "full"), rows(base / "part")
    assert [(r["step"], r["split"]) for r in part_rows[:9]] == [(r["step"], r["split"]) for r in full_rows]
    # Bit for bit: same device count, same data position, same dropout (fold_in(rng, step)).
    assert [r["loss"] for r in part_rows[:9]] == [r["loss"] for r in full_rows]
    assert [figures(r) for r in part_rows[:9]] == [figures(r) for r in full_rows]
    assert len({r["loss"] for r in full_rows if r["split"] == "train"}) == 7


def test_the_same_checkpoint_gives_the_same_eval_figures(resume_runs, tiny_dataset):
    from dnavec_jax.data import load_prepared

    base, full, _, resumed, again, _ = resume_runs
    assert again["step"] == 7 and again["train"] == {}
    evals = rows(base / "part", "eval")
    assert [r["step"] for r in evals] == [4, 7, 7]
    assert figures(evals[1]) == figures(evals[2]) == figures(rows(base / "full", "eval")[-1])
    dataset = load_prepared(tiny_dataset)  # the whole validation split, every real masked token once
    assert evals[2]["examples"] == dataset.num_examples("validation") > 100
    assert evals[2]["masked_tokens"] == dataset.metadata["num_predictions"]["validation"]


def test_metrics_files(resume_runs):
    base = resume_runs[0]
    train_rows, eval_rows = rows(base / "full", "train"), rows(base / "full", "eval")
    for row in train_rows:
        assert {"step", "split", "time", "loss", "accuracy", "perplexity", "learning_rate", "grad_norm",
                "step_time_s", "tokens_per_s", "masked_tokens"} <= set(row)
        assert "mfu" not in row  # no known peak FLOP/s on CPU
        assert row["perplexity"] == pytest.approx(2.718281828 ** row["loss"])
    assert {"loss", "accuracy", "perplexity", "masked_tokens", "examples"} <= set(eval_rows[0])
    assert [r["learning_rate"] for r in train_rows[:3]] == pytest.approx([0.0, 5e-4, 1e-3])
    assert list((base / "full" / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((base / "full" / "config.json").read_text())
    assert saved["model"]["hidden_size"] == 32 and saved["data"]["prep"]["k_max"] == 4
    assert not (base / "full" / "lock").exists()


@pytest.fixture
def no_compiling(monkeypatch):
    """Every user error must surface before anything is compiled."""
    def refuse(*args, **kwargs):
        raise AssertionError("compiled before the settings were checked")

    monkeypatch.setattr(jax, "jit", refuse)


@pytest.mark.parametrize("overrides, message", [
    ({"train.global_batch_size": 6}, r"global_batch_size \(6\) must be divisible by the 4 data-parallel devices"),
    ({"train.global_batch_size": 8, "train.grad_accum_steps": 4},
     r"8 = 4 microbatches of 2\) must be divisible by the 4"),
    ({"train.grad_accum_steps": 3}, r"divisible by train.grad_accum_steps \(3\)"),
    ({"train.eval_batch_size": 6}, r"eval_batch_size \(6\) must be divisible by the 4"),
    ({"model.hidden_size": 30}, r"hidden_size \(30\) must be divisible by model.num_heads \(4\)"),
    ({"model.vocab_size": 100}, r"does not match the k-mer vocabulary of k 3..4 \(325 ids\)"),
    ({"data.prep.seq_length": 128}, r"sequences of 128 tokens do not fit model.max_position_embeddings \(64\)"),
    ({"train.schedule": "step"}, r"train.schedule must be one of linear, cosine, constant"),
    ({"data.source": "tfrecord", "data.data_dir": ""}, r"set --config.data.data_dir.*prepare"),
    ({"data.source": "tfrecord", "data.data_dir": "/nonexistent/x"}, r"x: does not exist; prepare it with"),
    ({"train.mlm_objective": "paper"}, r"train.mlm_objective must be one of vocabulary, length_aware"),
    ({"train.prng_impl": "philox"}, r"train.prng_impl must be one of threefry, rbg, unsafe_rbg, got 'philox'"),
    ({"train.checkpoint_every_steps": -1}, r"checkpoint_every_steps must be >= 0 \(0: no checkpoints"),
    ({"model.attention_implementation": "cudnn"}, r"'cudnn' needs model.dtype bfloat16 or float16"),
])
def test_user_errors_come_before_compiling(tiny_config, tmp_path, no_compiling, overrides, message):
    set_dotted(tiny_config, overrides)
    with pytest.raises(DNAVecError, match=message):
        train_and_evaluate(tiny_config, tmp_path / "run")
    assert not (tmp_path / "run" / "lock").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"data.prep.k_max": 5, "model.vocab_size": 1349}, r"prepared with k_max=4, but config.data.prep.k_max is 5"),
    ({"data.prep.seq_length": 32}, r"prepared with seq_length=64, but config.data.prep.seq_length is 32"),
    ({"data.prep.max_predictions": 12}, r"prepared with max_predictions=10"),
    ({"data.data_dir": "EMPTY"}, r"holds no complete prepared dataset; prepare it with .*prepare_if_missing"),
])
def test_data_errors_come_before_compiling(tiny_tfrecord_config, tmp_path, no_compiling, overrides, message):
    (tmp_path / "empty").mkdir()
    for key, value in overrides.items():
        section, name = key.rsplit(".", 1)
        target = tiny_tfrecord_config
        for part in section.split("."):
            target = target[part]
        target[name] = str(tmp_path / "empty") if value == "EMPTY" else value
    with pytest.raises(DNAVecError, match=message):
        train_and_evaluate(tiny_tfrecord_config, tmp_path / "run")


def test_incompatible_workdir_and_lock(resume_runs, tiny_config, no_compiling):
    base = resume_runs[0]
    tiny_config.model.update(hidden_size=64, intermediate_size=128)
    with pytest.raises(DNAVecError, match=r"incompatible config \(model.hidden_size 32 there, 64 now"):
        train_and_evaluate(tiny_config, base / "full")
    tiny_config.model.update(hidden_size=32, intermediate_size=64)
    with checkpointing.WorkdirLock(base / "full"):
        with pytest.raises(DNAVecError, match="in use by another run"):
            train_and_evaluate(tiny_config, base / "full")


def test_resume_refuses_another_prng_implementation(resume_runs, tiny_config, no_compiling):
    base = resume_runs[0]
    assert json.loads((base / "full" / "config.json").read_text())["train"]["prng_impl"] == "threefry"
    tiny_config.train.prng_impl = "rbg"
    with pytest.raises(DNAVecError, match=r"step 7 was trained with train.prng_impl='threefry', this run has "
                                          r"'rbg'; set --config.train.prng_impl=threefry to resume it"):
        train_and_evaluate(tiny_config, base / "full")


def test_benchmark_mode_saves_nothing_and_accuracy_comes_from_each_intervals_last_step(tiny_config, tmp_path):
    tiny_config.train.update(checkpoint_every_steps=0, num_train_steps=5, log_every_steps=2, eval_every_steps=0,
                             prng_impl="unsafe_rbg")
    result = train_and_evaluate(tiny_config, tmp_path)
    assert result["step"] == 5 and not checkpointing.complete_steps(checkpointing.checkpoint_dir(tmp_path))
    train_rows = rows(tmp_path, "train")
    assert [r["step"] for r in train_rows] == [2, 4, 5]
    # Steps 2 and 4 end an interval by the modulus, step 5 as the last step: each row has its accuracy.
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in train_rows)


@pytest.mark.parametrize("copy_probe", [True, False])
def test_copy_probe_setting_is_one_more_pass_over_the_validation_split(tiny_config, tmp_path, monkeypatch,
                                                                        copy_probe):
    passes = []
    eval_totals = loop._eval_totals
    monkeypatch.setattr(loop, "_eval_totals", lambda run, batches: passes.append(1) or eval_totals(run, batches))
    tiny_config.train.update(checkpoint_every_steps=0, num_train_steps=2, eval_every_steps=0, copy_probe=copy_probe)
    train_and_evaluate(tiny_config, tmp_path)
    (row,) = rows(tmp_path, "eval")
    assert len(passes) == (2 if copy_probe else 1)
    assert ("copy_accuracy" in row) == ("copy_accuracy_ceiling" in row) == copy_probe
    assert {"loss", "accuracy", "accuracy_ceiling", "loss_floor"} <= set(row)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
    tiny_config.train.update(learning_rate=1e30, warmup_steps=0, grad_clip_norm=0.0, checkpoint_every_steps=1,
                             num_train_steps=6, schedule="constant")
    with pytest.raises(DNAVecError, match=r"step (\d): the loss or gradient is not finite") as error:
        train_and_evaluate(tiny_config, tmp_path)
    bad = int(error.value.args[0].split(":")[0].split()[1])
    assert f"last good checkpoint: {bad - 1}" in str(error.value)
    assert checkpointing.make_manager(tmp_path, read_only=True).latest_step() == bad - 1
    assert all(r["step"] < bad for r in rows(tmp_path))
    assert not (tmp_path / "lock").exists()


def _env(compile_cache):
    return {**os.environ, **compile_cache, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def test_cli_errors_are_one_line(tmp_path, compile_cache):
    proc = subprocess.run(
        [sys.executable, "run_pretrain.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
         "--config.data.source=tfrecord", f"--config.data.data_dir={tmp_path / 'missing'}"],
        cwd=REPO, env=_env(compile_cache), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "missing" in errors[0] and "prepare" in errors[0]


def test_synthetic_training_needs_no_tensorflow(tmp_path, compile_cache):
    """On the core install (no extras: an image with JAX alone, like the GPU benchmark machines')."""
    synthetic = subprocess.run(
        [sys.executable, "tests/core_install.py", "run_pretrain.py", "--config", "configs/tiny.py", "--workdir",
         str(tmp_path / "run"), "--config.train.num_train_steps=4", "--config.train.eval_every_steps=0"],
        cwd=REPO, env=_env(compile_cache), capture_output=True, text=True, timeout=300)
    assert synthetic.returncode == 0, synthetic.stderr[-3000:]
    assert "TensorFlow is not installed: metrics go to" in synthetic.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and not (tmp_path / "run" / "tensorboard").exists()
    shards = subprocess.run(
        [sys.executable, "tests/core_install.py", "run_pretrain.py", "--config", "configs/tiny.py", "--workdir",
         str(tmp_path / "run2"), "--config.data.source=tfrecord", f"--config.data.data_dir={tmp_path}"],
        cwd=REPO, env=_env(compile_cache), capture_output=True, text=True, timeout=300)
    assert shards.returncode == 2 and "Traceback" not in shards.stderr, shards.stderr[-3000:]
    assert ("error: data.source 'tfrecord' reads TFRecord shards with TensorFlow, which is not installed "
            f"({TRAIN_INSTALL})") in shards.stderr


def test_sigterm_saves_a_restorable_checkpoint(tmp_path, compile_cache):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "run_pretrain.py", "--config", "configs/tiny.py", "--workdir", str(workdir),
         "--config.train.num_train_steps=100000", "--config.train.checkpoint_every_steps=100000",
         "--config.train.eval_every_steps=0"],
        cwd=REPO, env=_env(compile_cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            metrics = workdir / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert "preemption: saved step" in stderr
    params, _, config, step = checkpointing.load_for_inference(workdir)
    assert 3 <= step < 100000 and config["train"]["num_train_steps"] == 100000
    assert max(r["step"] for r in rows(workdir)) == step
    assert not (workdir / "lock").exists()


@pytest.mark.usefixtures("stub_cudnn")
@pytest.mark.parametrize("attention", ["auto", "cudnn"])
def test_attention_auto_falls_back_to_xla_when_cudnn_does_not_compile(tiny_config, tmp_path, monkeypatch, caplog,
                                                                      attention):
    # As on an NVIDIA GPU whose cuDNN cannot run the kernel: 'auto' picks cuDNN (bf16, heads of 8), the steps
    # trace and lower with cuDNN's custom calls, and compiling them fails (this CPU has no such kernel).
    from dnavec_jax import model as model_lib

    monkeypatch.setattr(model_lib, "on_nvidia_gpu", lambda: True)
    tiny_config.model.update(dtype="bfloat16", attention_implementation=attention)
    tiny_config.train.update(checkpoint_every_steps=0, num_train_steps=2, eval_every_steps=0, copy_probe=False)
    if attention == "cudnn":  # asked for by name: no fallback, the compile error stands
        with pytest.raises(Exception, match="custom_partitioner|cudnn|custom call"):
            train_and_evaluate(tiny_config, tmp_path)
        return
    with caplog.at_level("WARNING"):
        result = train_and_evaluate(tiny_config, tmp_path)
    fallback = [r.getMessage() for r in caplog.records if "cuDNN flash attention did not compile" in r.getMessage()]
    assert len(fallback) == 1 and "\n" not in fallback[0], fallback
    assert fallback[0].endswith("compiling again with XLA attention") and "Error: " in fallback[0]
    assert result["attention"] == "xla" and result["step"] == 2 and rows(tmp_path, "eval")  # it trained and evaluated
