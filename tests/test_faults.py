"""Faults and bad input: nothing lost, nothing half-written, every error clear (docs/reliability.md).

Real processes and real signals where the fault is a process dying or a second
process: run_pretrain.py (configs/tiny.py) and data_prep/prepare_data.py are run
as subprocesses and sent SIGTERM / SIGKILL at seeded points; the resumed runs'
metrics.jsonl losses are compared bit for bit with uninterrupted runs. Resumes
and baselines run in this process (same 4 CPU devices, same compiled programs
through the shared compilation cache), which keeps the file to about a minute.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO, TINY_PREP, load_config_file, set_dotted, train_and_evaluate

from dnavec_jax.errors import DNAVecError
from dnavec_jax.training import batches, checkpointing

pytestmark = pytest.mark.usefixtures("compile_cache")

TMP_SUFFIX = ".orbax-checkpoint-tmp"
SEED = 20240608  # the seeded "random" steps at which signals are sent


# ---- helpers ---------------------------------------------------------------------

def env(compile_cache) -> dict[str, str]:
    return {**os.environ, **compile_cache, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "TF_CPP_MIN_LOG_LEVEL": "2"}


def flags(overrides: dict) -> list[str]:
    return [f"--config.{key}={value}" for key, value in overrides.items()]


def config_with(overrides: dict):
    """configs/tiny.py with the same overrides the subprocess gets as flags."""
    return set_dotted(load_config_file("tiny"), overrides)


def start_pretrain(workdir: Path, overrides: dict, compile_cache) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "run_pretrain.py", "--config", "configs/tiny.py", "--workdir", str(workdir),
         "--config.export.hf_dir=", *flags(overrides)],
        cwd=REPO, env=env(compile_cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rows(workdir: Path, split: str | None = None) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.endswith("}")]
    return [r for r in map(json.loads, lines) if split is None or r["split"] == split]


def figures(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("time", "step_time_s", "tokens_per_s", "eval_time_s")}


def checkpoint_names(workdir: Path) -> list[str]:
    directory = workdir / "checkpoints"
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def partial_steps(workdir: Path) -> list[int]:
    return sorted(int(name.split(".")[0]) for name in checkpoint_names(workdir) if TMP_SUFFIX in name)


def poll(condition, proc: subprocess.Popen, timeout: float = 180, interval: float = 0.002):
    """Polls until condition() is truthy (returns it); fails if the process ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) first: {proc.stderr.read()[-3000:]}")
        time.sleep(interval)
    proc.kill()
    pytest.fail("timed out waiting for the run")


def finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# ---- SIGTERM: clean exit with a checkpoint, resume reproduces the uninterrupted run ----

BASELINE_STEPS = 40


@pytest.fixture(scope="module")
def tfrecord_overrides(tiny_dataset) -> dict:
    """configs/tiny.py on the prepared chr22 shards, long enough never to end by itself."""
    return {"data.source": "tfrecord", "data.data_dir": str(tiny_dataset), "data.shuffle_buffer": 256,
            "train.num_train_steps": 100_000, "train.eval_every_steps": 0, "train.checkpoint_every_steps": 100_000}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compile_cache, tfrecord_overrides) -> list[dict]:
    """metrics.jsonl rows of steps 1..BASELINE_STEPS of a run never interrupted before them."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train_and_evaluate(config_with(tfrecord_overrides), workdir, preempt_at_step=BASELINE_STEPS)
    baseline = rows(workdir)
    assert [r["step"] for r in baseline] == list(range(1, BASELINE_STEPS + 1))
    return baseline


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["training", "async_save"])
def test_sigterm_saves_and_resume_reproduces_the_uninterrupted_losses(
        tmp_path, compile_cache, tfrecord_overrides, uninterrupted, moment):
    """SIGTERM at a seeded step (during a step, or while an async checkpoint is being written)."""
    rng = np.random.default_rng([SEED, 0 if moment == "training" else 1])
    target = int(rng.integers(3, 16))
    overrides = dict(tfrecord_overrides)
    if moment == "async_save":  # an async save in flight at almost any moment
        overrides.update({"train.checkpoint_every_steps": 1, "train.async_checkpointing": True})
    workdir = tmp_path / "run"
    proc = start_pretrain(workdir, overrides, compile_cache)
    try:
        if moment == "training":
            poll(lambda: len(rows(workdir)) >= target, proc)
        else:
            in_flight = poll(lambda: len(rows(workdir)) >= target and partial_steps(workdir), proc, interval=0)
        proc.send_signal(signal.SIGTERM)
    finally:
        stderr = finish(proc)
    assert proc.returncode == 0, stderr[-3000:]
    match = re.search(r"preemption: saved step (\d+)", stderr)
    assert match, stderr[-3000:]
    stopped = int(match.group(1))
    assert target <= stopped < BASELINE_STEPS - 3
    # A complete checkpoint of the step it stopped at; no partial save, no lock left behind.
    assert checkpointing.complete_steps(workdir / "checkpoints")[-1] == stopped
    assert partial_steps(workdir) == [] and not (workdir / "lock").exists()
    if moment == "async_save":
        assert in_flight[0] <= stopped  # the save that was being written when SIGTERM came finished
        assert checkpointing.complete_steps(workdir / "checkpoints") == [stopped - 2, stopped - 1, stopped]
    assert [r["step"] for r in rows(workdir)] == list(range(1, stopped + 1))
    _, _, _, step = checkpointing.load_for_inference(workdir)
    assert step == stopped

    # Resume to the end of the baseline (checkpoint frequency aside, the same config): every row equals
    # the uninterrupted run's, bit for bit.
    resumed = train_and_evaluate(config_with(tfrecord_overrides), workdir, preempt_at_step=BASELINE_STEPS)
    assert resumed["step"] == BASELINE_STEPS
    after = rows(workdir)
    assert [r["step"] for r in after] == list(range(1, BASELINE_STEPS + 1))
    assert [r["loss"] for r in after] == [r["loss"] for r in uninterrupted]
    assert [figures(r) for r in after] == [figures(r) for r in uninterrupted]


# ---- a second run on the same workdir; SIGKILL in the middle of a checkpoint save ----

SYNTHETIC = {"train.num_train_steps": 100_000, "train.eval_every_steps": 0, "train.checkpoint_every_steps": 2}


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, compile_cache):
    """A long run on configs/tiny.py: a second run is started on its workdir, then the first is
    SIGKILLed while an async checkpoint save is being written."""
    workdir = tmp_path_factory.mktemp("killed") / "run"
    first = start_pretrain(workdir, SYNTHETIC, compile_cache)
    try:
        poll(lambda: len(rows(workdir)) >= 3, first)
        second = subprocess.run(
            [sys.executable, "run_pretrain.py", "--config", "configs/tiny.py", "--workdir", str(workdir),
             "--config.export.hf_dir=", *flags(SYNTHETIC)],
            cwd=REPO, env=env(compile_cache), capture_output=True, text=True, timeout=180)
        rows_when_refused = len(rows(workdir))
        first_alive = first.poll() is None
        first_pid = first.pid
        for _ in range(3):
            # Kill the run hard the moment a save of a later step is being written. (Should that save
            # finish between seeing its tmp directory and the kill, run again and retry.)
            seen = len(rows(workdir))
            poll(lambda seen=seen: len(rows(workdir)) > seen + 4, first)
            partial = poll(lambda seen=seen: [s for s in partial_steps(workdir) if s > seen + 4], first, interval=0)
            first.send_signal(signal.SIGKILL)
            stderr = finish(first)
            if f"{partial[0]}{TMP_SUFFIX}" in checkpoint_names(workdir):
                break
            first = start_pretrain(workdir, SYNTHETIC, compile_cache)
    finally:
        if first.returncode is None:  # a failure above: do not leave the run behind
            first.kill()
            finish(first)
    return {"workdir": workdir, "first": first, "first_pid": first_pid, "first_stderr": stderr, "second": second,
            "first_alive": first_alive, "rows_when_refused": rows_when_refused, "killed_during": partial[0],
            "rows": rows(workdir), "names": checkpoint_names(workdir), "lock_left": (workdir / "lock").exists()}


@pytest.mark.slow
def test_a_second_run_on_the_same_workdir_refuses_clearly(killed_run):
    second = killed_run["second"]
    assert second.returncode == 2, second.stderr[-3000:]
    errors = error_lines(second.stderr)
    assert len(errors) == 1 and "Traceback" not in second.stderr
    assert f"is in use by another run (pid {killed_run['first_pid']} on " in errors[0]
    assert str(killed_run["workdir"]) in errors[0]
    # The first run was not disturbed: it kept training and checkpointing afterwards.
    assert killed_run["first_alive"] and len(killed_run["rows"]) > killed_run["rows_when_refused"]


@pytest.mark.slow
def test_sigkill_during_a_save_resumes_from_the_last_complete_checkpoint(killed_run):
    workdir = killed_run["workdir"]
    assert killed_run["first"].returncode == -signal.SIGKILL
    partial = killed_run["killed_during"]
    # Proof that the kill landed inside a save: its tmp directory is still on disk, never renamed.
    assert f"{partial}{TMP_SUFFIX}" in killed_run["names"], killed_run["names"]
    good = max(int(name) for name in killed_run["names"] if name.isdigit())
    assert good < partial
    assert killed_run["lock_left"]  # SIGKILL: no cleanup ran; the stale lock must not block the resume
    # Readers (export, analysis) ignore the partial save.
    assert checkpointing.load_for_inference(workdir)[3] == good
    killed_rows = {r["step"]: r for r in killed_run["rows"]}
    assert max(killed_rows) >= good + 1  # steps the killed run trained past its last complete checkpoint

    stop = max(killed_rows) + 2
    result = train_and_evaluate(config_with(SYNTHETIC), workdir, preempt_at_step=stop)
    assert result["step"] == stop
    names = checkpoint_names(workdir)
    assert not any(TMP_SUFFIX in name for name in names), names  # the partial save was cleaned up
    after = rows(workdir)
    assert [r["step"] for r in after] == list(range(1, stop + 1))
    # Restored exactly the state of step `good`: the steps after it give the killed run's numbers again.
    for row in after:
        if row["step"] in killed_rows:
            assert figures(row) == figures(killed_rows[row["step"]]), row["step"]
    assert not (workdir / "lock").exists()


def test_a_partial_checkpoint_is_never_loaded(tmp_path, tiny_config):
    """Deterministic companion of the SIGKILL test: an Orbax tmp directory with a higher step
    (here a damaged copy of a real checkpoint) is ignored by readers and removed by the next run."""
    tiny_config.train.update(num_train_steps=4, checkpoint_every_steps=2, eval_every_steps=0)
    train_and_evaluate(tiny_config, tmp_path)
    checkpoints = tmp_path / "checkpoints"
    partial = checkpoints / f"6{TMP_SUFFIX}"
    shutil.copytree(checkpoints / "4", partial)
    (partial / "commit_success.txt").unlink(missing_ok=True)
    for path in (partial / "params").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert checkpointing.load_for_inference(tmp_path)[3] == 4
    assert checkpointing.make_manager(tmp_path, read_only=True).all_steps() == [2, 4]
    tiny_config.train.num_train_steps = 6
    result = train_and_evaluate(tiny_config, tmp_path)
    assert result["step"] == 6 and [r["step"] for r in rows(tmp_path, "train")] == list(range(1, 7))
    assert checkpoint_names(tmp_path) == ["2", "4", "6"]


# ---- data prep killed --------------------------------------------------------------

def prep_flags() -> list[str]:
    return [arg for key, value in TINY_PREP.items() for arg in (f"--{key}", str(value))]


SECOND_PART = "dna_kmer_mlm/*/incomplete.*/part-*-000001.tfrecord.tmp"  # of the second job


@pytest.mark.slow
def test_sigkill_during_data_prep_then_rerun_gives_the_identical_dataset(tmp_path, tiny_dataset, monkeypatch):
    from dnavec_jax.data import PrepSettings, load_prepared, prepare_dataset
    from dnavec_jax.data.prepared import find_prepared

    for attempt in range(3):  # should the prep end between seeing its part files and the kill: again
        data_dir = tmp_path / f"data{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "data_prep/prepare_data.py", "--data_dir", str(data_dir), "--num_workers", "1",
             "--quiet", *prep_flags()],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            # Part files of the second job exist: the first shard is written, the next one is being written.
            parts = poll(lambda data_dir=data_dir: sorted(data_dir.glob(SECOND_PART)), proc, timeout=120, interval=0)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            finish(proc)
        if parts[0].parent.is_dir():
            break
    assert proc.returncode == -signal.SIGKILL
    partial_dir = parts[0].parent
    assert partial_dir.is_dir() and list(partial_dir.glob("part-*"))  # half-written, under TFDS's tmp name
    # Never taken for a dataset: not by load_prepared, not by the trainer (which stops before compiling).
    assert find_prepared(data_dir) == []
    for where in (data_dir, partial_dir):
        with pytest.raises(DNAVecError, match="holds no complete prepared dataset"):
            load_prepared(where)
    config = config_with({"data.source": "tfrecord", "data.data_dir": str(data_dir)})
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before the data was checked"))
    with pytest.raises(DNAVecError, match="holds no complete prepared dataset"):
        train_and_evaluate(config, tmp_path / "run")
    monkeypatch.undo()

    # The same command again: a complete dataset, byte for byte the one a clean prep writes, and the
    # killed run's tmp directory (gigabytes for hg38) is gone.
    version_dir = prepare_dataset(PrepSettings(**TINY_PREP), data_dir, num_workers=1, progress=False)
    assert not partial_dir.exists() and [p.name for p in version_dir.parent.iterdir()] == [version_dir.name]
    clean = load_prepared(tiny_dataset)
    again = load_prepared(data_dir)  # exactly one complete dataset
    assert again.path == version_dir and version_dir.name == clean.path.name
    names = sorted(p.name for p in clean.path.iterdir() if "tfrecord" in p.name or p.name == "vocab.txt")
    assert len(names) >= 9
    assert names == sorted(p.name for p in version_dir.iterdir() if "tfrecord" in p.name or p.name == "vocab.txt")
    for name in names:
        assert (version_dir / name).read_bytes() == (clean.path / name).read_bytes(), name
    for key in ("settings", "num_examples", "num_tokens", "num_predictions", "files", "shard_lengths", "sources"):
        assert again.metadata[key] == clean.metadata[key], key


def test_only_tmp_dirs_nobody_wrote_to_since_the_prep_began_count_as_stale(tmp_path):
    """A killed prep's tmp dir is removed after the next complete prep; a concurrent prep's is not."""
    from dnavec_jax.data.builder import _stale_partial_datasets

    config_dir = tmp_path / "dna_kmer_mlm" / "cfg"
    killed, writing = config_dir / "incomplete.AAAAAA_1.0.0", config_dir / "incomplete.BBBBBB_1.0.0"
    for directory in (killed, writing, config_dir / "1.0.0"):
        (directory / "sub").mkdir(parents=True)
        (directory / "sub" / "part-0.tfrecord.tmp").write_bytes(b"x")
    started = time.time()
    old = started - 3600
    for path in (killed, killed / "sub", killed / "sub" / "part-0.tfrecord.tmp", writing, writing / "sub"):
        os.utime(path, (old, old))
    os.utime(writing / "sub" / "part-0.tfrecord.tmp", (started + 5, started + 5))  # still being written
    assert _stale_partial_datasets(config_dir, started) == [killed]
    assert _stale_partial_datasets(tmp_path / "absent", started) == []


def test_only_the_tfds_tmp_name_marks_a_dataset_incomplete(tmp_path, tiny_dataset):
    """The word "incomplete" elsewhere in the path (a user's folder name) does not hide a complete dataset."""
    from dnavec_jax.data import load_prepared

    source = load_prepared(tiny_dataset).path
    data_dir = tmp_path / "incomplete_genomes" / "data"
    shutil.copytree(source, data_dir / "dna_kmer_mlm" / source.parent.name / source.name)
    shutil.copytree(source, data_dir / "dna_kmer_mlm" / source.parent.name / f"incomplete.AB12CD_{source.name}")
    assert load_prepared(data_dir).path == data_dir / "dna_kmer_mlm" / source.parent.name / source.name


# ---- damaged shards ------------------------------------------------------------------

@pytest.fixture
def damaged_copy(tmp_path, tiny_dataset):
    """A copy of the prepared chr22 dataset, to damage."""
    from dnavec_jax.data import load_prepared

    source = load_prepared(tiny_dataset).path
    target = tmp_path / "data" / "dna_kmer_mlm" / source.parent.name / source.name
    shutil.copytree(source, target)
    return load_prepared(target)


def damage(path: str, how: str) -> None:
    data = Path(path).read_bytes()
    if how == "truncated":
        Path(path).write_bytes(data[:5_000])  # inside the third record
    elif how == "flipped_byte":
        changed = bytearray(data)
        changed[3_000] ^= 0x40
        Path(path).write_bytes(bytes(changed))
    elif how == "not_tfrecord":
        Path(path).write_bytes(np.random.default_rng(0).integers(0, 256, 4_000, dtype=np.uint8).tobytes())
    elif how == "not_an_example":
        from dnavec_jax.data.tfrecord import TFRecordWriter

        writer = TFRecordWriter(path)  # valid framing and checksums, but not tf.train.Example bytes
        for _ in range(50):
            writer.write(b"\x0a\x07garbage")
        writer.close()


@pytest.mark.parametrize("how, problem", [
    ("truncated", r"truncated \(the file ends inside the record at byte \d+\)"),
    ("flipped_byte", r"corrupt \(checksum mismatch in the record at byte \d+\)"),
    ("not_tfrecord", r"corrupt \(not a TFRecord file"),
    ("not_an_example", r"a record is not a valid example of this dataset"),
])
def test_damaged_training_shard_names_the_file_and_the_problem(damaged_copy, how, problem):
    files = damaged_copy.files("train")
    damage(files[3], how)
    shape = batches.BatchShape(1, 8, 64, 10)
    with pytest.raises(DNAVecError) as error:
        for _ in batches.tfrecord_train_batches(files, shape, seed=0, shuffle_buffer=256):
            pass
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{files[3]}: damaged training shard: ")
    assert re.search(problem, message), message
    assert "prepare it again" in message and error.value.__suppress_context__


def test_damaged_validation_shard_names_the_file(damaged_copy):
    files = damaged_copy.files("validation")
    damage(files[-1], "truncated")
    with pytest.raises(DNAVecError, match=rf"^{re.escape(files[-1])}: damaged validation shard: truncated"):
        list(batches.tfrecord_eval_batches(files, 8, 64, 10, 0, 1, 10_000))


def test_training_stops_on_a_truncated_shard_with_a_one_line_error(damaged_copy, tiny_tfrecord_config, tmp_path):
    files = damaged_copy.files("train")
    damage(files[2], "truncated")
    tiny_tfrecord_config.data.data_dir = str(damaged_copy.path)
    with pytest.raises(DNAVecError) as error:
        train_and_evaluate(tiny_tfrecord_config, tmp_path / "run")
    message = str(error.value)
    # Caught before compiling by the size recorded at prep time (the reader's own check,
    # "truncated (the file ends inside the record at byte B)", is tested above).
    assert "\n" not in message and message.startswith(f"{files[2]}: damaged training shard: ")
    assert "were written" in message and "prepare it again" in message
    assert not (tmp_path / "run" / "lock").exists()


def test_a_shard_cut_at_a_record_boundary_is_caught_by_its_recorded_size(damaged_copy, tiny_tfrecord_config,
                                                                        tmp_path):
    """TFRecord has no end marker: a shard cut between records reads as valid, so its size is checked."""
    from dnavec_jax.data import load_prepared
    from dnavec_jax.data.tfrecord import read_records

    files = damaged_copy.files("train")
    first_records = sum(8 + 4 + len(record) + 4 for record, _ in zip(read_records(files[1]), range(5)))
    with open(files[1], "r+b") as handle:
        handle.truncate(first_records)
    assert sum(1 for _ in read_records(files[1])) == 5  # still a valid TFRecord file
    expected = rf"^{re.escape(files[1])}: damaged training shard: [\d,]+ bytes, but [\d,]+ were written"
    with pytest.raises(DNAVecError, match=expected):
        load_prepared(damaged_copy.path)
    tiny_tfrecord_config.data.data_dir = str(damaged_copy.path)
    with pytest.raises(DNAVecError, match=expected):
        train_and_evaluate(tiny_tfrecord_config, tmp_path / "run")


# ---- disk full / unwritable workdir at save time ------------------------------------

def fail_meta_writes(monkeypatch, from_step: int, error: OSError) -> None:
    """Makes Orbax's write of the `meta` item fail (in its async commit thread) from `from_step` on."""
    import orbax.checkpoint as ocp

    original = ocp.JsonCheckpointHandler._save_fn

    async def failing(self, item, directory):
        step_dir = Path(str(directory)).parent.name  # <step>.orbax-checkpoint-tmp
        if int(step_dir.split(".")[0]) >= from_step:
            raise error
        return await original(self, item, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", failing)


@pytest.mark.parametrize("async_save, failing_step, error, reason", [
    (True, 4, OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (False, 4, PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    (True, 4, OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
    (True, 8, OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),  # the final save
])
def test_failed_checkpoint_write_is_one_clear_line_and_the_last_good_one_restores(
        tiny_config, tmp_path, monkeypatch, async_save, failing_step, error, reason):
    tiny_config.train.update(num_train_steps=8, checkpoint_every_steps=2, eval_every_steps=0,
                             async_checkpointing=async_save)
    fail_meta_writes(monkeypatch, failing_step, error)
    with pytest.raises(DNAVecError) as raised:
        train_and_evaluate(tiny_config, tmp_path)
    message = str(raised.value)
    good = failing_step - 2
    assert "\n" not in message
    assert message == (f"{tmp_path / 'checkpoints'}: cannot write the checkpoint of step {failing_step} ({reason}); "
                       f"last complete checkpoint: step {good} (kept). Free disk space or make the workdir writable, "
                       "then run the same command again to resume")
    assert checkpoint_names(tmp_path) == [str(s) for s in range(2, failing_step, 2)] + [f"{failing_step}{TMP_SUFFIX}"]
    assert not (tmp_path / "lock").exists()
    assert checkpointing.load_for_inference(tmp_path)[3] == good
    # Space freed: the same command resumes from the last complete step and removes the partial save.
    monkeypatch.undo()
    result = train_and_evaluate(tiny_config, tmp_path)
    assert result["step"] == 8 and checkpoint_names(tmp_path) == ["4", "6", "8"]
    assert [r["step"] for r in rows(tmp_path, "train")] == list(range(1, 9))


@pytest.fixture
def tiny_filesystem(tmp_path):
    """workdir/checkpoints on a 1.4 MB tmpfs (room for one tiny checkpoint, not two): a real full disk.

    Needs root (mount); skipped elsewhere. Only the checkpoints live there, so the
    first write to fail is a checkpoint's.
    """
    mount_point = tmp_path / "run" / "checkpoints"
    mount_point.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's aborted write threads
def test_a_really_full_disk_is_one_clear_line(tiny_config, tiny_filesystem):
    """Tensorstore reports ENOSPC as ValueError('RESOURCE_EXHAUSTED: ... [os_error_code=28]'): recognised too."""
    workdir = tiny_filesystem.parent
    tiny_config.train.update(num_train_steps=8, checkpoint_every_steps=2, eval_every_steps=0)
    with pytest.raises(DNAVecError) as raised:
        train_and_evaluate(tiny_config, workdir)
    message = str(raised.value)
    assert "\n" not in message and "(No space left on device); last complete checkpoint: step 2 (kept)" in message
    assert checkpointing.load_for_inference(workdir)[3] == 2


def test_unwritable_workdir_is_one_clear_line(tiny_config, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before the workdir was checked"))
    with pytest.raises(DNAVecError, match=rf"^{re.escape(str(blocker / 'run'))}: cannot create the workdir \(.+\)$"):
        train_and_evaluate(tiny_config, blocker / "run")


# ---- no pickle on any load path ----------------------------------------------------------

# Loading a pickle runs arbitrary code from the file: a checkpoint, dataset or model
# directory from someone else must never be able to do that. Checkpoints are Orbax
# (tensorstore + JSON), datasets TFRecord + JSON, exports safetensors + JSON, vectors
# text. So none of the loaders below may appear in the package or its entry points,
# and numpy loads must say allow_pickle=False explicitly (np.load's own default is
# False today; spelling it out keeps it so).
UNSAFE_LOADERS = {
    r"^\s*(?:import|from)\s+(?:pickle|_pickle|cPickle|dill|cloudpickle|shelve|marshal|joblib)\b": "a pickle module",
    r"\bpickle\.loads?\(|\bUnpickler\b": "pickle",
    r"\btorch\.load\(": "torch.load (pickle inside)",
    r"\bjoblib\.load\(": "joblib.load (pickle inside)",
    r"\bread_pickle\(": "pandas.read_pickle",
    r"allow_pickle\s*=\s*True": "allow_pickle=True",
}


def package_sources() -> list[Path]:
    sources = sorted((REPO / "dnavec_jax").rglob("*.py")) + [REPO / "run_pretrain.py"]
    for folder in ("data_prep", "scripts"):
        sources += sorted((REPO / folder).rglob("*.py"))
    return sources


def test_no_pickle_on_any_load_path():
    problems = []
    for path in package_sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            for pattern, what in UNSAFE_LOADERS.items():
                if re.search(pattern, code):
                    problems.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()}")
            if re.search(r"\b(?:np|numpy)\.load\(", code):
                call = code[code.index(".load(") :]
                if "allow_pickle=False" not in call:
                    problems.append(f"{path.relative_to(REPO)}:{number}: np.load without allow_pickle=False")
    assert not problems, "\n".join(problems)
    assert len(package_sources()) > 15  # the grep really looked at the package
