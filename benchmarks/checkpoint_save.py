"""Checkpoint cost of the configured model: how long a save blocks the training loop, then finishes. Not a test.

    python benchmarks/checkpoint_save.py --config configs/base.py

Initialises the train state (float32 parameters and Adam moments) on the devices,
then saves it through the trainer's own Orbax manager (checkpointing.save, async)
three times: the blocking part (until the arrays are copied off the devices) is
what the loop pays; the rest runs in the background. Then restores the last
step into the same shardings. Prints one JSON line. Refuses to run (a one-line
error) with an Orbax outside the range pyproject.toml pins, whose API names
this code was not tested against.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from common import REPO, load_config, versions

TESTED_ORBAX = ("0.12", "0.13")  # pyproject.toml: orbax-checkpoint>=0.12.0,<0.13


def orbax_in_tested_range(version: str) -> bool:
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    low, high = (tuple(int(p) for p in bound.split(".")) for bound in TESTED_ORBAX)
    return low <= parts < high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "base.py"))
    parser.add_argument("--saves", type=int, default=3)
    args = parser.parse_args()
    found = versions("jax", "orbax-checkpoint")
    if not orbax_in_tested_range(found["orbax-checkpoint"]):
        print(json.dumps({"skipped": f"orbax-checkpoint {found['orbax-checkpoint']} is outside the tested range "
                                     f">={TESTED_ORBAX[0]},<{TESTED_ORBAX[1]}", "versions": found}))
        return

    import jax

    from dnavec_jax.training import checkpointing, optim, settings, sharding, steps

    config = load_config(args.config)
    model_config = settings.model_config_from(config)
    tx, _ = optim.make_optimizer(settings.RunSettings.from_config(config).train.optimizer)
    init_fn = steps.make_init_fn(model_config, tx, 0)
    mesh = sharding.make_mesh(False)
    abstract = jax.eval_shape(init_fn)
    state_sh = steps.train_state_shardings(abstract, mesh)
    state = jax.block_until_ready(jax.jit(init_fn, out_shardings=state_sh)())
    state_bytes = sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))
    blocking, total = [], []
    with tempfile.TemporaryDirectory() as workdir:
        manager = checkpointing.make_manager(workdir, keep=2, async_save=True)
        for step in range(1, args.saves + 1):
            started = time.perf_counter()
            checkpointing.save(manager, step, state.params, state.opt_state, {"step": step})
            blocking.append(time.perf_counter() - started)
            checkpointing.wait(manager)
            total.append(time.perf_counter() - started)
        target = sharding.with_shardings(abstract, state_sh)
        started = time.perf_counter()
        restored = checkpointing.restore_train_state(manager, args.saves, target.params, target.opt_state)
        jax.block_until_ready(restored[:2])
        restore_s = time.perf_counter() - started
        manager.close()
    print(json.dumps({"device": jax.devices()[0].device_kind, "state_gib": state_bytes / 2**30,
                      "save_blocking_s": min(blocking), "save_total_s": min(total), "restore_s": restore_s,
                      "saves": args.saves, "versions": found}))


if __name__ == "__main__":
    main()
