"""Two processes x 2 CPU devices (jax.distributed on localhost) train like one process x 4 devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, free_port, load_config_file, train_and_evaluate

from dnavec_jax.training import checkpointing

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compile_cache")]

STEPS = 5


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"], r["accuracy"]) for r in rows]


def test_two_processes_match_one_process(tmp_path, compile_cache):
    config = load_config_file("tiny")
    config.train.num_train_steps = STEPS
    train_and_evaluate(config, tmp_path / "one")

    port = free_port()
    env = {**os.environ, **compile_cache, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [subprocess.Popen(
        [sys.executable, "run_pretrain.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "two"),
         f"--config.train.num_train_steps={STEPS}", f"--config.distributed.coordinator_address=localhost:{port}",
         "--config.distributed.num_processes=2", f"--config.distributed.process_id={index}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for index in range(2)]
    try:
        errors = [proc.communicate(timeout=240)[1] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert "process 1 of 2, 2 local of 4 devices" in errors[1]

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [r[:2] for r in two] == [r[:2] for r in one] and len(one) == STEPS + 2  # 5 train rows, 2 eval rows
    for a, b in zip(one, two):
        assert b[2] == pytest.approx(a[2], rel=1e-5) and b[3] == a[3]
    # The two-process checkpoint restores in one process.
    params, _, _, step = checkpointing.load_for_inference(tmp_path / "two")
    assert step == STEPS
