"""Checkpoints (Orbax), the run's config.json and the workdir lock (docs/training.md).

checkpoints/<step>/ holds params, opt_state (sharded arrays, restored into the NEW shardings, so 4
devices restore onto 2) and meta (JSON: step, RNG key, data positions, timers). A save cut short
never has a plain step name; a failed write is a one-line DNAVecError naming the last complete
checkpoint. load_for_inference gives host numpy parameters to the export and the tools.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import psutil

from dnavec_jax.errors import DNAVecError, read_json_object
from dnavec_jax.model import BertConfig, init_params

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = "lock"
ITEMS = ("params", "opt_state", "meta")

# Settings that fix the shapes (or the meaning) of what a checkpoint holds.
MODEL_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                      "max_position_embeddings", "type_vocab_size")
DATA_SHAPE_FIELDS = ("seq_length", "max_predictions", "k_min", "k_max")


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    return Path(workdir) / CHECKPOINT_DIR


class _DropReadOnlyNotice(logging.Filter):
    """Orbax warns "Given directory is read only" for every read-only manager: that is the intent here,
    and it is all an inference command would print before its own output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_DropReadOnlyNotice())


def make_manager(workdir: str | os.PathLike, keep: int | None = None, async_save: bool = True,
                 read_only: bool = False, host_numpy: bool = False) -> ocp.CheckpointManager:
    """The run's CheckpointManager; saves only when asked (train.py decides when).

    host_numpy: a read-only manager whose params/opt_state restore through
    PyTreeRestore (RestoreArgs(restore_type=np.ndarray)), for load_for_inference.
    """
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item in ("params", "opt_state"):
        if host_numpy:
            registry.add(item, ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler())
        else:
            handler = ocp.StandardCheckpointHandler()
            registry.add(item, ocp.args.StandardSave, handler)
            registry.add(item, ocp.args.StandardRestore, handler)
    json_handler = ocp.JsonCheckpointHandler()
    registry.add("meta", ocp.args.JsonSave, json_handler)
    registry.add("meta", ocp.args.JsonRestore, json_handler)
    options = ocp.CheckpointManagerOptions(
        read_only=read_only,
        create=not read_only,
        enable_async_checkpointing=async_save,
        preservation_policy=ocp.checkpoint_managers.LatestN(keep) if keep else None,
        cleanup_tmp_directories=not read_only,  # leftovers of a save interrupted by a crash
        # Saves happen only when train.py asks; a read-only manager with the default interval of 1
        # logs a warning that it resets it to 0.
        save_interval_steps=0 if read_only else 1,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir).absolute(), options=options, handler_registry=registry)


def save(manager: ocp.CheckpointManager, step: int, params: Any, opt_state: Any,
         resume_record: dict[str, Any]) -> bool:
    """Starts an (async) save of one step; returns once the arrays are copied off the devices.

    A write that fails (disk full, unwritable workdir), this save's or the
    previous async one's (Orbax reports it here), raises a one-line DNAVecError
    naming the last complete checkpoint, which stays on disk.
    """
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(resume_record),  # the item keeps its name: checkpoints already hold it
    )
    try:
        return manager.save(step, args=args, force=True)
    except (OSError, ValueError) as error:
        if not _is_write_failure(error):
            raise
        raise _save_failed(manager, step, error) from None


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until the pending async save is on disk; a failed write raises a one-line DNAVecError."""
    try:
        manager.wait_until_finished()
    except (OSError, ValueError) as error:
        if not _is_write_failure(error):
            raise
        raise _save_failed(manager, None, error) from None


def complete_steps(directory: str | os.PathLike) -> list[int]:
    """Steps with a complete checkpoint on disk.

    Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it to
    `<step>` once every item is written, so a save cut short (crash, SIGKILL,
    disk full) never has a plain step name.
    """
    try:
        return sorted(int(p.name) for p in Path(directory).iterdir() if p.name.isdigit() and p.is_dir())
    except OSError:
        return []


# Tensorstore (the array writer) reports OS errors as ValueError("RESOURCE_EXHAUSTED: ... [os_error_code='28']").
_WRITE_FAILURE_MARKERS = ("os_error_code", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "No space left",
                          "Read-only file system", "Permission denied", "Disk quota exceeded")


def _is_write_failure(error: BaseException) -> bool:
    return isinstance(error, OSError) or any(marker in str(error) for marker in _WRITE_FAILURE_MARKERS)


def _failure_reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    match = re.search(r"([^:\"]+) \[os_error_code='(\d+)'\]", text)
    if match:
        return match.group(1).strip() or os.strerror(int(match.group(2)))
    return " ".join(text.split())[:200]


def _save_failed(manager: ocp.CheckpointManager, step: int | None, error: BaseException) -> DNAVecError:
    # Orbax reports the first failed write of a save; its other writer threads may still be running
    # (into the step's tmp directory): let them end, so nothing writes there once the error is raised.
    for thread in threading.enumerate():
        if (thread is not threading.current_thread() and not thread.daemon
                and type(thread).__module__.startswith("orbax.")):
            try:
                thread.join(timeout=60)
            except Exception:  # Orbax's threads re-raise their own error on join: it is the one reported
                pass
    directory = Path(manager.directory)
    partial = sorted(int(p.name.split(".")[0]) for p in directory.glob("*.orbax-checkpoint-tmp*")
                     if p.name.split(".")[0].isdigit())
    failed = partial[-1] if partial else step
    complete = complete_steps(directory)
    return DNAVecError(
        f"{directory}: cannot write the checkpoint"
        + (f" of step {failed}" if failed is not None else "")
        + f" ({_failure_reason(error)}); last complete checkpoint: "
        + (f"step {complete[-1]} (kept)" if complete else "none")
        + ". Free disk space or make the workdir writable, then run the same command again to resume"
    )


def restore_train_state(manager: ocp.CheckpointManager, step: int, abstract_params: Any, abstract_opt_state: Any,
                        ) -> tuple[Any, Any, dict[str, Any]]:
    """Restores (params, opt_state, meta) into the shardings carried by the abstract targets.

    The targets are ShapeDtypeStructs with the shardings of THIS run's mesh
    (sharding.with_shardings), whatever mesh wrote the checkpoint.
    """
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        meta=ocp.args.JsonRestore(),
    ))
    params, opt_state = restored["params"], restored["opt_state"]
    check_shardings(params, abstract_params, "params")
    check_shardings(opt_state, abstract_opt_state, "opt_state")
    return params, opt_state, dict(restored["meta"])


def check_shardings(restored: Any, targets: Any, what: str) -> None:
    """Raises if Orbax returned any array with another layout than asked for."""
    if jax.tree.structure(restored) != jax.tree.structure(targets):
        raise RuntimeError(f"restored {what} has another tree structure than the target")
    for (path, array), target in zip(jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(targets)):
        if array.shape != target.shape or not array.sharding.is_equivalent_to(target.sharding, array.ndim):
            raise RuntimeError(
                f"restored {what}{jax.tree_util.keystr(path)} has shape {array.shape} and sharding "
                f"{array.sharding}, expected {target.shape} with {target.sharding}"
            )


def checkpoint_param_shapes(manager: ocp.CheckpointManager, step: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes stored in a checkpoint, by path (read from its metadata; no arrays loaded)."""
    metadata = manager.item_metadata(step)["params"]
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    return {jax.tree_util.keystr(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


def check_param_shapes(stored: dict[str, tuple[int, ...]], abstract_params: Any, where: str) -> None:
    """DNAVecError naming the first differing parameters of a checkpoint and the configured model."""
    wanted = {jax.tree_util.keystr(path): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params)}
    problems = [f"{name} missing" for name in sorted(set(wanted) - set(stored))]
    problems += [f"{name} unexpected" for name in sorted(set(stored) - set(wanted))]
    problems += [f"{name} {stored[name]} vs {shape}" for name, shape in sorted(wanted.items())
                 if name in stored and stored[name] != shape]
    if problems:
        raise DNAVecError(
            f"{where} holds a checkpoint of a different model ({'; '.join(problems[:3])}"
            f"{' ...' if len(problems) > 3 else ''}); use a new --workdir or the settings of that run"
        )


# ---- config.json -----------------------------------------------------------

def read_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    return read_json_object(path, "the run's config")


def write_config(workdir: str | os.PathLike, config: dict[str, Any]) -> Path:
    path = Path(workdir) / CONFIG_FILE
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:
        raise DNAVecError(f"{path}: cannot write the run's config ({error.strerror or error})") from None
    return path


def check_config_compatible(saved: dict[str, Any], new: dict[str, Any], where: str) -> None:
    """A resumed run must have the checkpoint's model and data shapes."""
    differences = []
    for section, fields in (("model", MODEL_SHAPE_FIELDS), ("data.prep", DATA_SHAPE_FIELDS)):
        old_values, new_values = saved, new
        for key in section.split("."):
            old_values, new_values = (old_values or {}).get(key, {}), (new_values or {}).get(key, {})
        for field in fields:
            if field in old_values and old_values.get(field) != new_values.get(field):
                differences.append(f"{section}.{field} {old_values.get(field)} there, {new_values.get(field)} now")
    if differences:
        raise DNAVecError(
            f"{where} holds a checkpoint from an incompatible config ({'; '.join(differences)}); "
            "use a new --workdir, or the settings of that run to resume it"
        )


# ---- the workdir lock --------------------------------------------------------

class WorkdirLock:
    """A lock file with the owner's pid, host and process start time; stale locks are taken over.

    A lock is stale when it names this host and its pid is gone (or now belongs
    to a younger process). A lock from another host cannot be checked: the
    message says which file to delete if that run is gone.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir) / LOCK_FILE
        self.held = False

    def acquire(self) -> WorkdirLock:

        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "create_time": psutil.Process().create_time(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                fd = None
            except OSError as error:
                raise DNAVecError(f"{self.path.parent}: cannot write to the workdir "
                                  f"({error.strerror or error})") from None
            if fd is None:
                holder = self._read_holder()
                if holder is None or not self._is_stale(holder):
                    pid = (holder or {}).get("pid", "?")
                    host = (holder or {}).get("host", "?")
                    raise DNAVecError(
                        f"workdir {self.path.parent} is in use by another run (pid {pid} on {host}); "
                        f"wait for it to end, or delete {self.path} if that run is gone"
                    ) from None
                try:
                    self.path.unlink()  # stale: the owner died without cleaning up
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(me, handle)
            self.held = True
            return self
        raise DNAVecError(f"cannot take the workdir lock {self.path}")

    def _read_holder(self) -> dict[str, Any] | None:
        for _ in range(20):  # the owner may be between creating and writing the file
            try:
                text = self.path.read_text(encoding="utf-8")
                return json.loads(text)
            except FileNotFoundError:
                return {}
            except (OSError, ValueError):
                time.sleep(0.05)
        return None

    @staticmethod
    def _is_stale(holder: dict[str, Any]) -> bool:

        if not holder:
            return True  # vanished meanwhile
        if holder.get("host") != socket.gethostname():
            return False
        try:
            process = psutil.Process(int(holder["pid"]))
            return abs(process.create_time() - float(holder.get("create_time", 0))) > 1.0
        except (psutil.NoSuchProcess, KeyError, ValueError, TypeError):
            return True
        except psutil.AccessDenied:
            return False

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---- for export and analysis ------------------------------------------------

def load_for_inference(workdir: str | os.PathLike, step: int | None = None,
                       ) -> tuple[Any, BertConfig, dict[str, Any], int]:
    """(params as a tree of host numpy float32 arrays, BertConfig, full config dict, step).

    Reads workdir/config.json (written by run_pretrain.py) and the checkpoint of
    `step` (default: the latest) under workdir/checkpoints; only the parameters
    are loaded. Raises DNAVecError when the workdir, its config or the step is missing.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise DNAVecError(f"{workdir}: no such directory")
    config = read_config(workdir)
    if config is None:
        raise DNAVecError(f"{workdir}: no {CONFIG_FILE}; is it a run_pretrain.py workdir?")
    if not checkpoint_dir(workdir).is_dir():
        raise DNAVecError(f"{workdir}: no checkpoints (expected {checkpoint_dir(workdir)})")
    try:
        model_config = BertConfig.from_dict(dict(config["model"]))
    except (KeyError, TypeError, ValueError) as error:
        raise DNAVecError(f"{workdir / CONFIG_FILE}: bad model settings ({error})") from None
    manager = make_manager(workdir, read_only=True, host_numpy=True)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise DNAVecError(f"{workdir}: no checkpoint in {checkpoint_dir(workdir)}")
        if step is None:
            step = steps[-1]
        elif int(step) not in steps:
            raise DNAVecError(f"{workdir}: no checkpoint for step {step} (have: {', '.join(map(str, steps))})")
        abstract = jax.eval_shape(lambda: init_params(model_config, jax.random.key(0)))
        check_param_shapes(checkpoint_param_shapes(manager, int(step)), abstract, str(workdir))
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
        restored = manager.restore(int(step), args=ocp.args.Composite(
            params=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args)))
    finally:
        manager.close()
    params = jax.tree.map(np.asarray, restored["params"])
    return params, model_config, config, int(step)
