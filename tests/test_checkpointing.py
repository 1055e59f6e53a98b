"""Checkpoints: restore onto another device count, load_for_inference, the workdir lock, config checks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, optimizer_of, train_and_evaluate

from dnavec_jax.errors import DNAVecError
from dnavec_jax.model import BertConfig
from dnavec_jax.training import checkpointing, settings, steps

pytestmark = pytest.mark.usefixtures("compile_cache")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, compile_cache):
    """A 4-device FSDP run of 4 steps with checkpoints at 2 and 4."""
    from conftest import load_config_file

    config = load_config_file("tiny")
    config.train.update(fsdp=True, num_train_steps=4, eval_every_steps=0)
    workdir = tmp_path_factory.mktemp("fsdp_run")
    result = train_and_evaluate(config, workdir)
    assert result["step"] == 4
    return workdir, config


def test_load_for_inference(fsdp_run, caplog):
    workdir, config = fsdp_run
    with caplog.at_level("WARNING"):
        params, model_config, saved, step = checkpointing.load_for_inference(workdir)
    # Reading is what an inference command asks for: Orbax's warnings about its read-only manager are not shown.
    assert not [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert step == 4 and model_config == BertConfig.from_dict(config.model.to_dict())
    assert saved["data"]["prep"]["k_min"] == 3 and saved["train"]["fsdp"] is True
    leaves = jax.tree.leaves(params)
    assert all(type(x) is np.ndarray and x.dtype == np.float32 for x in leaves)
    # The vocabulary of k 3..4 (325 ids) padded to a multiple of 128 inside the model (model.py).
    assert params["embeddings"]["word_embeddings"]["embedding"].shape == (384, 32)
    older, _, _, step2 = checkpointing.load_for_inference(workdir, step=2)
    assert step2 == 2
    assert not np.array_equal(older["mlm_transform"]["kernel"], params["mlm_transform"]["kernel"])
    with pytest.raises(DNAVecError, match=r"no checkpoint for step 3 \(have: 2, 4\)"):
        checkpointing.load_for_inference(workdir, step=3)


def test_load_for_inference_errors(tmp_path):
    with pytest.raises(DNAVecError, match="no such directory"):
        checkpointing.load_for_inference(tmp_path / "nowhere")
    with pytest.raises(DNAVecError, match="no config.json"):
        checkpointing.load_for_inference(tmp_path)
    checkpointing.write_config(tmp_path, {"model": BertConfig(vocab_size=69, hidden_size=8, num_heads=2,
                                                              num_layers=1).to_dict()})
    with pytest.raises(DNAVecError, match="no checkpoints"):
        checkpointing.load_for_inference(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(DNAVecError, match="no checkpoint in"):
        checkpointing.load_for_inference(tmp_path)


CHILD = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, "tests")
from conftest import load_config_file, optimizer_of, train_and_evaluate
from dnavec_jax.training import checkpointing, settings, sharding, steps
workdir = sys.argv[1]
config = load_config_file("tiny")
config.train.update(fsdp=True, num_train_steps=5, eval_every_steps=0)
model_config = settings.model_config_from(config)
tx, _ = optimizer_of(config)
abstract = jax.eval_shape(steps.make_init_fn(model_config, tx, 0))
mesh = sharding.make_mesh(True)
shardings = steps.train_state_shardings(abstract, mesh)
target = sharding.with_shardings(abstract, shardings)
manager = checkpointing.make_manager(workdir, read_only=True)
params, opt_state, meta = checkpointing.restore_train_state(manager, 4, target.params, target.opt_state)
manager.close()
kernel = params["encoder"]["layer_0"]["intermediate"]["kernel"]
mu = opt_state[1][0].mu["encoder"]["layer_0"]["intermediate"]["kernel"]
out = {"devices": jax.device_count(), "step": meta["step"], "kernel_spec": str(kernel.sharding.spec),
       "kernel_devices": len(kernel.sharding.device_set), "shard_shape": list(kernel.addressable_shards[0].data.shape),
       "mu_shard_shape": list(mu.addressable_shards[0].data.shape),
       "sums": {jax.tree_util.keystr(p): float(np.asarray(x, np.float64).sum())
                for p, x in jax.tree_util.tree_leaves_with_path(params)}}
result = train_and_evaluate(config, workdir)  # resume on 2 devices: one more step
out["resumed_to"] = result["step"]
print("RESULT " + json.dumps(out))
"""


def test_four_device_checkpoint_restores_onto_two_devices(fsdp_run, compile_cache, tmp_path):
    workdir, _ = fsdp_run
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(workdir), str(copy)], check=True)
    env = {**os.environ, **compile_cache, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(copy)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["devices"] == 2 and out["step"] == 4
    assert out["kernel_spec"] == "P(None, 'fsdp')" and out["kernel_devices"] == 2
    assert out["shard_shape"] == [32, 32] and out["mu_shard_shape"] == [32, 32]  # (32, 64) split 2 ways, not 4
    params, _, _, _ = checkpointing.load_for_inference(workdir, step=4)
    expected = {jax.tree_util.keystr(p): float(np.asarray(x, np.float64).sum())
                for p, x in jax.tree_util.tree_leaves_with_path(params)}
    assert out["sums"] == expected
    assert out["resumed_to"] == 5
    assert checkpointing.load_for_inference(copy)[3] == 5


def test_restore_checks_the_shardings(fsdp_run):
    workdir, config = fsdp_run
    from dnavec_jax.training import sharding

    model_config = settings.model_config_from(config)
    tx, _ = optimizer_of(config)
    abstract = jax.eval_shape(steps.make_init_fn(model_config, tx, 0))
    mesh = sharding.make_mesh(False, jax.devices()[:2])  # replicated over 2 devices this time
    target = sharding.with_shardings(abstract, steps.train_state_shardings(abstract, mesh))
    manager = checkpointing.make_manager(workdir, read_only=True)
    try:
        params, _, meta = checkpointing.restore_train_state(manager, 2, target.params, target.opt_state)
        assert meta["step"] == 2
        kernel = params["encoder"]["layer_0"]["intermediate"]["kernel"]
        assert kernel.sharding.spec == jax.P() and len(kernel.sharding.device_set) == 2
        wrong = jax.tree.map(lambda x: x, target.params)
        wrong["mlm_bias"] = jax.ShapeDtypeStruct((384,), np.float32,
                                                 sharding=sharding.replicated(sharding.make_mesh(False)))
        with pytest.raises(RuntimeError, match="mlm_bias"):
            checkpointing.check_shardings(params, wrong, "params")
    finally:
        manager.close()


def test_workdir_lock(tmp_path):
    lock = checkpointing.WorkdirLock(tmp_path).acquire()
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    with pytest.raises(DNAVecError, match=rf"in use by another run \(pid {os.getpid()}"):
        checkpointing.WorkdirLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / "lock").exists()
    # A lock left by a process that is gone is taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "create_time": 1.0}))
    with checkpointing.WorkdirLock(tmp_path):
        assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    # A lock from another host cannot be checked: refuse and say which file to delete.
    (tmp_path / "lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "create_time": 1.0}))
    with pytest.raises(DNAVecError, match=r"pid 1 on elsewhere.*delete .*lock"):
        checkpointing.WorkdirLock(tmp_path).acquire()


def test_config_compatibility():
    from conftest import load_config_file

    old = settings.RunSettings.from_config(load_config_file("tiny")).to_dict()
    new = settings.RunSettings.from_config(load_config_file("tiny")).to_dict()
    new["train"]["learning_rate"] = 0.5  # optimizer settings may change on resume
    checkpointing.check_config_compatible(old, new, "w")
    new["model"]["hidden_size"] = 64
    new["data"]["prep"]["k_max"] = 5
    with pytest.raises(DNAVecError, match=r"model.hidden_size 32 there, 64 now; data.prep.k_max 4 there, 5 now"):
        checkpointing.check_config_compatible(old, new, "w")
