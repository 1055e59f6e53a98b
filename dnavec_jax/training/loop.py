"""The training run: setup() checks everything, builds the mesh, state and compiled steps; run_loop() trains.

train_and_evaluate(settings, workdir) is what run_pretrain.py calls, with the RunSettings it built
once from the config and after tf_runtime.configure_tf. Every user
mistake is a one-line DNAVecError before anything compiles; metrics are fetched
one step late; checkpoints are saved every checkpoint_every_steps, at the end and
on SIGTERM, and a run resumes bit for bit (docs/training.md).
"""

from __future__ import annotations

import dataclasses
import logging as py_logging
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from dnavec_jax.errors import DNAVecError
from dnavec_jax.model import BertConfig, BertForMaskedLM, attention_implementation, flops_per_token
from dnavec_jax.tf_runtime import TRAIN_INSTALL, tensorflow_installed
from dnavec_jax.tokenization import KmerTokenizer
from dnavec_jax.training import batches, checkpointing, objective, sharding
from dnavec_jax.training.metrics import MetricWriter, TrainMeter, log_memory, peak_flops_per_device
from dnavec_jax.training.optim import make_optimizer
from dnavec_jax.training.preemption import Preemption
from dnavec_jax.training.settings import RunSettings, check_devices
from dnavec_jax.training.steps import (
    TrainState,
    abstract_batch,
    make_eval_step,
    make_init_fn,
    make_train_step,
    train_state_shardings,
)


@dataclasses.dataclass
class Run:
    """Everything one training run holds; setup() builds it, run_loop() advances it."""

    settings: RunSettings
    workdir: Path
    data: batches.DataInfo
    mesh: jax.sharding.Mesh
    state_shardings: TrainState
    train_batch_sharding: jax.sharding.NamedSharding
    eval_batch_sharding: jax.sharding.NamedSharding
    train_step: Any  # compiled
    eval_step: Any  # compiled, or None without validation examples
    attention: str  # the attention implementation the steps run (after compile_steps' fallback)
    tokenizer: KmerTokenizer  # the data's, for the objective's ceiling and the copy probe
    state: TrainState
    step: int
    train_batches: Iterator[tuple[batches.Batch, batches.Position]]
    position: batches.Position
    fingerprint: dict[str, Any]
    manager: ocp.CheckpointManager | None  # None: checkpoint_every_steps 0 (benchmarks), Orbax untouched
    last_saved: int | None
    train_time: float
    writer: MetricWriter
    meter: TrainMeter
    copy_history: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, copy given k)
    copy_warned: bool = False


def train_and_evaluate(settings: RunSettings, workdir: str | os.PathLike, *, preempt_at_step: int | None = None
                       ) -> dict[str, Any]:
    """Trains (or resumes) in `workdir`; returns the last train and eval metric rows.

    preempt_at_step (tests): behave as if SIGTERM arrived during that step.
    """
    workdir = Path(workdir)
    quiet_library_logs()
    have_tf = tensorflow_installed()
    if not have_tf and settings.data.source == "tfrecord":
        raise DNAVecError(f"data.source {settings.data.source!r} reads TFRecord shards with TensorFlow, which is not "
                          f"installed ({TRAIN_INSTALL}); data.source='fasta' or 'synthetic' needs none")
    is_main = jax.process_index() == 0
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DNAVecError(f"{workdir}: cannot create the workdir ({error.strerror or error})") from None
    lock = checkpointing.WorkdirLock(workdir).acquire() if is_main else None
    try:
        run = setup(settings, workdir, tensorboard=have_tf and is_main)
        return run_loop(run, Preemption(preempt_at_step))
    finally:
        if lock is not None:
            lock.release()


def setup(settings: RunSettings, workdir: Path, tensorboard: bool) -> Run:
    """Checks the data, devices and workdir, then builds the mesh, the (restored) state and compiled steps."""
    train = settings.train
    # -- everything a user can get wrong, before anything compiles --
    data = batches.resolve_data(settings)
    check_devices(train, jax.device_count())
    config_dict = recorded_config(settings, data)
    manager = None
    if train.checkpoint_every_steps:
        manager = checkpointing.make_manager(workdir, keep=train.keep_checkpoints, async_save=train.async_checkpointing)
    latest = manager.latest_step() if manager is not None else None
    saved_config = checkpointing.read_config(workdir)
    if latest is not None and saved_config is not None:
        checkpointing.check_config_compatible(saved_config, config_dict, str(workdir))
    prep = config_dict["data"]["prep"]  # as the shards were written
    tokenizer = KmerTokenizer(int(prep["k_min"]), int(prep["k_max"]), prep.get("k_weights"))
    tx, schedule = make_optimizer(train.optimizer)
    init_fn = make_init_fn(settings.model, tx, train.seed, train.prng_impl)
    abstract_state = jax.eval_shape(init_fn)
    if latest is not None:
        checkpointing.check_param_shapes(checkpointing.checkpoint_param_shapes(manager, latest),
                                         abstract_state.params, str(workdir))
    if jax.process_index() == 0:
        checkpointing.write_config(workdir, config_dict)

    # -- mesh, shardings, state --
    mesh = sharding.make_mesh(train.fsdp)
    state_sh = train_state_shardings(abstract_state, mesh)
    abstract_state = sharding.with_shardings(abstract_state, state_sh)
    train_batch_sh, eval_batch_sh = sharding.batch_sharding(mesh, 1), sharding.batch_sharding(mesh, 0)
    shape = batches.batch_shape(settings, data)
    fingerprint = batches.pipeline_fingerprint(settings, data, shape)
    logging.info("mesh %s over %d devices in %d process(es); parameter shardings: %s", dict(mesh.shape),
                 jax.device_count(), jax.process_count(), sharding.describe(state_sh.params))
    if latest is None:
        state, step, position, train_time = jax.jit(init_fn, out_shardings=state_sh)(), 0, (0, 0), 0.0
    else:
        state, step, position, train_time = restore(manager, latest, abstract_state, state_sh, settings, fingerprint,
                                                    workdir)

    # -- compile ahead of time --
    train_step, eval_step, attention = compile_steps(settings, data, tokenizer, tx, schedule, abstract_state, mesh)
    if eval_step is None:
        logging.warning("no validation examples: evaluation is skipped")

    is_main = jax.process_index() == 0
    meter = TrainMeter(train.global_batch_size * data.seq_length,
                       flops_per_token(settings.model, data.seq_length, data.max_predictions),
                       peak_flops_per_device(jax.devices()[0]), jax.device_count())
    return Run(settings=settings, workdir=workdir, data=data, mesh=mesh, state_shardings=state_sh,
               train_batch_sharding=train_batch_sh, eval_batch_sharding=eval_batch_sh, train_step=train_step,
               eval_step=eval_step, attention=attention, tokenizer=tokenizer, state=state, step=step,
               train_batches=batches.train_batches(settings, data, shape, position),
               position=position, fingerprint=fingerprint, manager=manager, last_saved=latest, train_time=train_time,
               writer=MetricWriter(workdir, is_main, resume_step=step, tensorboard=tensorboard), meter=meter)


def trace_steps(settings: RunSettings, data: batches.DataInfo, model_config: BertConfig, tokenizer: KmerTokenizer,
                tx, schedule, abstract_state: TrainState, mesh: jax.sharding.Mesh):
    """(train step, eval step or None) jitted as the loop runs them (shardings, donation) and traced for the
    run's abstract state (carrying its shardings) and batches; model_config is settings.model or the
    attention fallback's. Lowering and compiling are the caller's (tests lower them for CUDA on a CPU)."""
    train = settings.train
    model = BertForMaskedLM(model_config)
    train_sums, eval_sums = objective.sums_fns(train.mlm_objective, tokenizer)
    state_sh = jax.tree.map(lambda leaf: leaf.sharding, abstract_state)
    train_batch_sh, eval_batch_sh = sharding.batch_sharding(mesh, 1), sharding.batch_sharding(mesh, 0)
    # The synthetic source's batches have no padding: then no attention mask is built at all.
    step_fn = make_train_step(model, tx, schedule, prng_impl=train.prng_impl, accuracy_every=train.log_every_steps,
                              last_step=train.num_train_steps, padded=data.source != "synthetic", sums_fn=train_sums)
    train_step = jax.jit(step_fn, in_shardings=(state_sh, train_batch_sh),
                         out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
    train_step = train_step.trace(abstract_state, abstract_batch(
        (train.grad_accum_steps, train.micro_batch_size), data.seq_length, data.max_predictions, train_batch_sh))
    eval_step = None
    if data.num_validation_examples > 0:
        eval_step = jax.jit(make_eval_step(model, eval_sums), in_shardings=(state_sh.params, eval_batch_sh),
                            out_shardings=sharding.replicated(mesh))
        eval_step = eval_step.trace(abstract_state.params, abstract_batch(
            (train.eval_batch_size,), data.seq_length, data.max_predictions, eval_batch_sh))
    return train_step, eval_step


def compile_steps(settings: RunSettings, data: batches.DataInfo, tokenizer: KmerTokenizer, tx, schedule,
                  abstract_state: TrainState, mesh: jax.sharding.Mesh) -> tuple[Any, Any, str]:
    """(compiled train step, compiled eval step or None, the attention that runs), memory logged.

    Attention 'auto' on an NVIDIA GPU picks cuDNN flash attention; if the steps do not compile with it
    (a cuDNN or driver the kernel does not support), that is one warning line and both steps compile
    again with XLA attention. An explicit 'cudnn' fails as it is: the user asked for that kernel.
    """
    model_config = settings.model

    def compiled(config: BertConfig):
        traced = trace_steps(settings, data, config, tokenizer, tx, schedule, abstract_state, mesh)
        return [step.lower().compile() if step is not None else None for step in traced]

    try:
        train_step, eval_step = compiled(model_config)
    except Exception as error:  # whatever XLA or cuDNN raise: the fallback is tried for every failure
        if not (model_config.attention_implementation == "auto" and attention_implementation(model_config) == "cudnn"):
            raise
        logging.warning("cuDNN flash attention did not compile (%s); compiling again with XLA attention",
                        one_line(error))
        model_config = dataclasses.replace(model_config, attention_implementation="xla")
        train_step, eval_step = compiled(model_config)
    log_memory("train step", train_step)
    if eval_step is not None:
        log_memory("eval step", eval_step)
    return train_step, eval_step, attention_implementation(model_config)


def one_line(error: BaseException) -> str:
    """An exception as one short line: its type and first line, or, when XLA wraps a Python traceback (an
    error raised in a callback such as cuDNN attention's custom partitioner), the error line inside it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
    inner = [line for line in lines[1:] if re.match(r"[\w.]*(Error|Exception)\b", line)]
    line = inner[-1] if "Traceback (most recent call last)" in lines[0] and inner else lines[0]
    return f"{type(error).__name__}: {line[:300]}"


def recorded_config(settings: RunSettings, data: batches.DataInfo) -> dict[str, Any]:
    """What config.json holds: the settings, with data.prep as the shards were really written."""
    config_dict = settings.to_dict()
    if data.settings:
        differing = sorted(k for k, v in data.settings.items() if config_dict["data"]["prep"].get(k) != v)
        if differing and not settings.data.prepare_if_missing:
            logging.warning("config.data.prep differs from the settings of the dataset %s in %s; config.json "
                            "records the dataset's", data.path, ", ".join(differing))
        config_dict["data"]["prep"] = {**config_dict["data"]["prep"], **data.settings}
        config_dict["dataset"] = {"path": data.path, "fingerprint": data.fingerprint}
    return config_dict


def restore(manager: ocp.CheckpointManager, latest: int, abstract_state: TrainState, state_sh: TrainState,
            settings: RunSettings, fingerprint: dict[str, Any], workdir: Path,
            ) -> tuple[TrainState, int, batches.Position, float]:
    """(state, step, data position, training time so far) of the latest checkpoint, on this run's mesh."""
    params, opt_state, resume_record = checkpointing.restore_train_state(
        manager, latest, abstract_state.params, abstract_state.opt_state)
    step = int(resume_record["step"])
    saved_impl = resume_record.get("prng_impl", "threefry")  # checkpoints before the setting used threefry
    if saved_impl != settings.train.prng_impl:
        raise DNAVecError(f"{workdir}: the checkpoint of step {step} was trained with train.prng_impl="
                          f"{saved_impl!r}, this run has {settings.train.prng_impl!r}; set --config.train.prng_impl="
                          f"{saved_impl} to resume it (dropout would otherwise change mid-run)")
    rng = jax.device_put(np.asarray(resume_record["rng"], np.uint32), state_sh.rng)
    state = TrainState(step=jax.device_put(jnp.asarray(step, jnp.int32), state_sh.step), params=params,
                       opt_state=opt_state, rng=rng)
    position = batches.resume_position(resume_record.get("data", {}), fingerprint, jax.process_index())
    logging.info("resumed from %s at step %d, data position (epoch, batch) %s", manager.directory, step, position)
    return state, step, position, float(resume_record.get("train_time_s", 0.0))


# ---- the loop ----------------------------------------------------------------------------------------

def run_loop(run: Run, preemption: Preemption) -> dict[str, Any]:
    """Trains to num_train_steps (or a preemption); returns {"step", "train", "eval", "preempted", "attention"}."""
    train = run.settings.train
    total = train.num_train_steps
    resumed_finished = run.step >= total
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    pending = None  # (step, device metrics) of the step before the newest: fetched one step late
    progress = tqdm(total=total, initial=run.step, disable=jax.process_index() != 0, dynamic_ncols=True,
                    desc="train", unit="step")
    preempted = False
    try:
        run.meter.reset()
        while run.step < total:
            local_batch, next_position = next(run.train_batches)
            batch = sharding.global_batch(local_batch, run.train_batch_sharding, train.micro_batch_size, example_axis=1)
            run.state, metrics = run.train_step(run.state, batch)
            run.step += 1
            run.position = next_position
            if pending is not None:
                record(run, pending)
            pending = (run.step, metrics)
            progress.update(1)
            preempted = preemption.reached(run.step)
            boundary = run.step % train.log_every_steps == 0 or run.step == total or preempted
            checkpoint_now = (train.checkpoint_every_steps and run.step % train.checkpoint_every_steps == 0) \
                or run.step == total or preempted
            eval_now = run.eval_step is not None and (
                (train.eval_every_steps and run.step % train.eval_every_steps == 0) or run.step == total)
            if not (boundary or checkpoint_now or eval_now):
                continue
            record(run, pending)  # blocks on this step: its metrics are checked before any save
            pending = None
            run.train_time += time.perf_counter() - run.meter.started
            if boundary and run.meter.steps:
                last_train = run.meter.summary()
                run.writer.write(run.step, "train", last_train)
                progress.set_postfix(loss=f"{last_train['loss']:.4f}", acc=f"{last_train.get('accuracy', 0):.3f}")
                run.meter.reset()
            if checkpoint_now:
                save(run)
            if eval_now and not preempted:
                last_eval = evaluate(run)
            if preempted:
                break
            run.meter.started = time.perf_counter()  # eval and checkpoint time are not step time
        if pending is not None:
            record(run, pending)
        if not preempted:
            if resumed_finished and not last_eval and run.eval_step is not None:
                last_eval = evaluate(run)  # resumed a finished run: report its figures
            save(run)
    finally:
        progress.close()
        preemption.close()
        try:
            if run.manager is not None:
                checkpointing.wait(run.manager)  # the last async save is on disk, or a one-line DNAVecError
        finally:
            if run.manager is not None:
                run.manager.close()
            run.writer.close()
    if preempted:
        logging.warning("preemption: saved step %d; run the same command again to resume", run.step)
    return {"step": run.step, "train": last_train, "eval": last_eval, "preempted": preempted,
            "attention": run.attention}


def record(run: Run, pending: tuple[int, dict[str, jax.Array]]) -> None:
    """Fetches one step's metrics into the meter; a non-finite step stops the run (its state is not saved)."""
    done_step, metrics = pending
    metrics = jax.device_get(metrics)
    if not bool(metrics["finite"]):
        last_good = run.manager.latest_step() if run.manager is not None else None
        raise DNAVecError(
            f"step {done_step}: the loss or gradient is not finite (loss {float(metrics['loss'])}, grad norm "
            f"{float(metrics['grad_norm'])}); stopped without saving this state; last good checkpoint: "
            f"{last_good if last_good is not None else 'none'}. Lower train.learning_rate or check the data"
        )
    run.meter.add(metrics)


def save(run: Run) -> None:
    """Starts an async save of the current step (params, optimizer state, RNG, every process's data position)."""
    if run.manager is None or run.last_saved == run.step:
        return
    positions = [list(run.position)]
    if jax.process_count() > 1:
        positions = multihost_utils.process_allgather(np.asarray(run.position, np.int64)).tolist()
    resume_record = {"step": run.step, "rng": np.asarray(jax.device_get(run.state.rng)).tolist(),
                     "prng_impl": run.settings.train.prng_impl,
                     "data": {"positions": positions, "fingerprint": run.fingerprint}, "train_time_s": run.train_time}
    jax.block_until_ready(run.state)
    started = time.perf_counter()
    checkpointing.save(run.manager, run.step, run.state.params, run.state.opt_state, resume_record)
    run.last_saved = run.step
    logging.info("checkpoint of step %d started (%.2fs blocking)", run.step, time.perf_counter() - started)


def evaluate(run: Run) -> dict[str, float]:
    """The whole validation split, then (train.copy_probe) the copy probe on the same examples; the row
    carries what the objective allows next to loss and accuracy (objective.eval_columns)."""
    started = time.perf_counter()
    split = run.settings, run.data
    row = _eval_totals(run, batches.eval_batches(*split))
    probe = None
    if run.settings.train.copy_probe:
        probe = _eval_totals(run, objective.copy_probe_batches(batches.eval_batches(*split), run.tokenizer,
                                                               run.data.max_predictions))
    row.update(objective.eval_columns(run.tokenizer, run.settings.train.mlm_objective, probe))
    row["eval_time_s"] = time.perf_counter() - started
    run.writer.write(run.step, "eval", row)
    logging.info("eval at step %d: loss %.4f, accuracy %.4f (ceiling %.4f) over %d masked tokens", run.step,
                 row["loss"], row["accuracy"], row["accuracy_ceiling"], row["masked_tokens"])
    if "copy_accuracy_given_k" in row:
        run.copy_history.append((run.step, row["copy_accuracy_given_k"]))
        warning = objective.copy_stall_warning(run.copy_history)
        if warning and not run.copy_warned:
            logging.warning(warning)
            run.copy_warned = True
    return row


def _eval_totals(run: Run, eval_batches: Iterator[batches.Batch]) -> dict[str, float]:
    """Loss, accuracy and the given-k figures over batches; the per-batch sums are fetched once and added
    in float64 (math.fsum), so the same checkpoint always gives the same figures."""
    sums = []
    for batch in eval_batches:
        arrays = sharding.global_batch(batch, run.eval_batch_sharding, run.settings.train.eval_batch_size,
                                       example_axis=0)
        sums.append(run.eval_step(run.state.params, arrays))
    fetched = jax.device_get(sums)
    totals = {name: math.fsum(float(s[name]) for s in fetched) for name in fetched[0]}
    loss = totals["loss_sum"] / max(totals["weight"], 1.0)
    return {"loss": loss, "accuracy": totals["correct"] / max(totals["weight"], 1.0),
            "perplexity": math.exp(min(loss, 700.0)), "masked_tokens": totals["weight"],
            "examples": totals["examples"], **objective.given_k_columns(totals)}


def quiet_library_logs() -> None:
    """Orbax logs every save step by step at INFO; keep its warnings, drop its chatter."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
        handler.addFilter(_DropOrbaxInfo())


class _DropOrbaxInfo(py_logging.Filter):
    def filter(self, record):
        return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname.replace(os.sep, "/")
