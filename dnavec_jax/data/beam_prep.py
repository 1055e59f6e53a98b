"""Data prep on Apache Beam: the per-file work and the shard jobs as elements of two Beam pipelines.

Each pipeline is Create | Reshuffle | ParDo: first one element per input file (copy, decompress, index,
checksum: fasta.open_source), then one per shard job of pipeline.plan_jobs (GenomeWorker.run_job, the
code the worker processes run), so the shards are byte for byte those of the process pool. The
launcher plans the jobs between the two pipelines (the plan needs every file's index) and commits
the dataset after them. Workers report through files in the dataset's work directory (one JSON per
file or job, one line per user error), never through the launcher's memory, so any runner works:
the local FnApiRunner, Dask, Dataflow, Flink, Spark. docs/data.md ("Apache Beam").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import io
import json
import logging
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from dnavec_jax.data import fasta, pipeline, storage
from dnavec_jax.data.fasta import GenomeRecord, SourceFile
from dnavec_jax.data.pipeline import GenomeWorker, Job
from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.errors import DNAVecError

LOCAL_RUNNER = "FnApiRunner"
# Beam's DirectRunner first tries the PrismRunner, which downloads a Go binary from GitHub: here it
# means the FnApiRunner, which runs in this Python and its worker processes.
_DIRECT_RUNNERS = ("DirectRunner", "SwitchingDirectRunner")
# Portable runners start a job server from a jar (or, for Prism, a binary) that Beam downloads from
# Maven (GitHub) when none is given: data prep never lets a download start on its own.
_STAGED = {
    "FlinkRunner": ("flink_job_server_jar",
                    "a Flink job-server jar, e.g. beam-runners-flink-1.20-job-server-2.77.0.jar"),
    "SparkRunner": ("spark_job_server_jar", "a Spark job-server jar, e.g. beam-runners-spark-3-job-server-2.77.0.jar"),
    "PrismRunner": ("prism_location", "the prism binary (or its release zip)"),
}
_REMOTE_RUNNERS = ("DataflowRunner",)  # workers on other machines: inputs and data_dir must be URLs
# How often the launcher lists the reports for the progress bar: a bucket listing is a paid request.
_POLL_SECONDS = {"local": 1.0, "remote": 15.0}


def pipeline_options(text: str) -> PipelineOptions:
    """--beam_pipeline_options in TFDS's syntax: comma-separated key=value (or bare flags), as `tfds build`
    parses it (tensorflow_datasets/scripts/cli/cli_utils.py)."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise DNAVecError(f"--beam_pipeline_options {text!r}: expected comma-separated key=value options, "
                          "e.g. runner=FnApiRunner,direct_num_workers=4")
    return PipelineOptions(flags=[f"--{item.removeprefix('--')}" for item in items])


def _runner_name(options: PipelineOptions, runner) -> str:
    """The runner's class name (FnApiRunner for none or a direct runner); a one-line error for an unknown name."""
    if runner is not None:
        return type(runner).__name__
    given = options.view_as(StandardOptions).runner
    if given is None:
        return LOCAL_RUNNER
    known = {name.lower(): name for name in StandardOptions.KNOWN_RUNNER_NAMES}
    short = given.rsplit(".", 1)[-1]
    short = known.get(short.lower(), known.get(short.lower() + "runner", short))
    if "." not in given and short not in known.values():
        raise DNAVecError(f"--beam_pipeline_options: unknown runner {given!r}; use one of "
                          f"{', '.join(sorted(set(known.values())))} or a class's full name, such as "
                          "apache_beam.runners.dask.dask_runner.DaskRunner")
    return LOCAL_RUNNER if short in _DIRECT_RUNNERS else short


def _all_options(options: PipelineOptions, **kwargs) -> dict:
    """options.get_all_options, with argparse's exit on a bad value (usage text, SystemExit) turned into one
    line naming the option."""
    errors = io.StringIO()
    beam_logger = logging.getLogger("apache_beam.options.pipeline_options")
    level = beam_logger.level
    beam_logger.setLevel(logging.ERROR)  # "Discarding unparseable args": resolve_options names them itself
    try:
        with contextlib.redirect_stderr(errors):
            return options.get_all_options(**kwargs)
    except SystemExit:
        found = re.findall(r"error: (.*)", errors.getvalue())
        raise DNAVecError(f"--beam_pipeline_options: {found[-1] if found else errors.getvalue().strip()}") from None
    finally:
        beam_logger.setLevel(level)


def resolve_options(options: PipelineOptions | str | None, runner=None, num_workers: int | None = None
                    ) -> tuple[PipelineOptions, str]:
    """A copy of the options, checked, with data prep's defaults; and the runner's short name.

    No runner (or DirectRunner) means the FnApiRunner with direct_running_mode=multi_processing and
    direct_num_workers=num_workers (default: all cores), unless the options say otherwise. DaskRunner
    gets one job per Dask partition unless dask_npartitions or dask_partition_size is given (its
    default, 128 elements a partition, would put a whole genome's jobs on one worker). Unknown options
    and portable runners without their staged job server are one-line errors.
    """
    if isinstance(options, str):
        options = pipeline_options(options)
    options = copy.deepcopy(options) if options is not None else PipelineOptions([])
    if isinstance(runner, str):  # DownloadConfig.beam_runner as a name: the same as runner=NAME
        options.view_as(StandardOptions).runner = runner
        runner = None
    name = _runner_name(options, runner)
    if name == "DaskRunner":
        from apache_beam.runners.dask.dask_runner import DaskOptions  # registers the dask_* options
    with_unknown = _all_options(options, retain_unknown_options=True)
    qualified = options.view_as(StandardOptions).runner or ""
    if "." not in qualified or qualified.startswith("apache_beam."):  # a third-party runner may have its own
        known = _all_options(options)
        unknown = sorted(set(with_unknown) - set(known))
        if unknown:
            raise DNAVecError(f"--beam_pipeline_options: unknown option(s) {', '.join(unknown)} "
                              "(Beam's pipeline options: https://beam.apache.org/releases/pydoc/current/"
                              "apache_beam.options.pipeline_options.html)")
    # Set explicitly, also to a default value (get_all_options(drop_default=True) would drop
    # direct_running_mode=in_memory): the flags the options were built from (Beam keeps them in _flags).
    given = {flag[2:].split("=", 1)[0] for flag in getattr(options, "_flags", []) if flag.startswith("--")}
    given |= set(_all_options(options, drop_default=True))
    if name == "DaskRunner":
        dask = options.view_as(DaskOptions)
        if not dask.npartitions and not dask.partition_size:
            dask.partition_size = 1
    if name == LOCAL_RUNNER:
        if runner is None:  # also for DirectRunner: never the PrismRunner it would try first
            options.view_as(StandardOptions).runner = LOCAL_RUNNER
        direct = options.view_as(DirectOptions)
        if "direct_running_mode" not in given:
            direct.direct_running_mode = "multi_processing"
        if "direct_num_workers" not in given:  # in_memory is this one process
            in_memory = direct.direct_running_mode == "in_memory"
            direct.direct_num_workers = 1 if in_memory else num_workers or pipeline.default_num_workers()
    if name in _STAGED:
        option, what = _STAGED[name]
        if not with_unknown.get(option) and not with_unknown.get("job_endpoint"):
            raise DNAVecError(
                f"--beam_pipeline_options: runner={name} needs {option}=PATH ({what}, downloaded beforehand: "
                "docs/data.md) or job_endpoint=HOST:PORT of a running job server; data prep does not let Beam "
                "download one")
    return options, name


def _user_errors(reports_dir: str) -> list[str]:
    """The one-line messages of the user errors the workers reported, in element order."""
    directory = storage.as_path(reports_dir)
    if not directory.is_dir():
        return []
    return [path.read_text().strip() for path in sorted(directory.glob("*.error"), key=lambda p: p.name)]


def _write_report(path: str, value) -> None:
    """Writes a worker's JSON report under a temporary name, then renames it: a reader never sees half."""
    partial = storage.as_path(f"{path}.{uuid.uuid4().hex}.partial")
    partial.write_text(json.dumps(value))
    partial.replace(path)


def _read_report(path: str):
    try:
        return json.loads(storage.as_path(path).read_text())
    except (OSError, ValueError) as error:
        raise RuntimeError(f"{path}: a Beam worker's report is missing or unreadable ({error}), although the "
                           "pipeline succeeded") from None


def _read_reports(paths: Sequence[str]) -> list:
    """The reports, read by a few threads at once: from a bucket, one after the other, thousands of
    them would take minutes."""
    with concurrent.futures.ThreadPoolExecutor(storage.PARALLEL_REQUESTS) as threads:
        return list(threads.map(_read_report, paths))


@contextlib.contextmanager
def _reporting_user_errors(reports_dir: str, name: str) -> Iterator[None]:
    """A DNAVecError in a worker is written as `<name>.error` (the launcher raises it as it is: one line,
    whatever the runner makes of the exception) and raised, which fails the pipeline."""
    try:
        yield
    except DNAVecError as error:
        storage.as_path(f"{reports_dir}/{name}.error").write_text(str(error))
        raise


def _job_name(dupe: int, task: int) -> str:
    return f"job-{dupe:04d}-{task:06d}"


class _OpenSourceFn(beam.DoFn):
    """(file index, path) -> a report with its SourceFile; the uncompressed copy and .fai go to work_dir.

    With a remote work_dir (a bucket) the work happens on the worker's local disk and the result is
    staged in the bucket, where every shard worker copies it from (fasta.RecordReader).
    """

    def __init__(self, work_dir: str, reports_dir: str):
        self._work_dir, self._reports_dir = work_dir, reports_dir

    def process(self, element: tuple[int, str]):
        index, path = element
        name = f"source-{index:06d}"
        with _reporting_user_errors(self._reports_dir, name):
            source = self._open(index, path)
        _write_report(f"{self._reports_dir}/{name}.json", dataclasses.asdict(source))
        yield index

    def _open(self, index: int, path: str) -> SourceFile:
        if not storage.is_remote(self._work_dir):
            return fasta.open_source(path, Path(self._work_dir), index)
        with tempfile.TemporaryDirectory(prefix="dnavec-source-") as local:
            source = fasta.open_source(path, Path(local), index)
            stem = f"{self._work_dir}/source{index:03d}"
            plain = path if storage.is_remote(path) and not source.gzipped else f"{stem}.fa"  # a plain URL: as is
            if plain != path:
                storage.copy(source.plain_path, plain)
            storage.copy(source.index_path, f"{stem}.fa.fai")
            return dataclasses.replace(source, plain_path=plain, index_path=f"{stem}.fa.fai")


class _ShardJobFn(beam.DoFn):
    """A shard job -> its part files in out_dir and a report (files, counts, sizes, per-genome stats).

    The genome (settings, sources, records) is read from a file once per worker in setup: in the
    pipeline graph it would be too big for Dataflow's job-size limit with many genomes.
    """

    def __init__(self, genome_file: str, out_dir: str, reports_dir: str):
        self._genome_file, self._out_dir, self._reports_dir = genome_file, out_dir, reports_dir
        self._worker: GenomeWorker | None = None

    def setup(self):
        genome = json.loads(storage.as_path(self._genome_file).read_text())
        records = [GenomeRecord(index, name, length, file_index, tuple(blocks))
                   for index, name, length, file_index, blocks in genome["records"]]
        self._worker = GenomeWorker(PrepSettings.from_dict(genome["settings"]),
                                    [SourceFile(**source) for source in genome["sources"]], records, self._out_dir)

    def process(self, element: tuple):
        job = Job(*element)
        name = _job_name(job.dupe, job.task)
        with _reporting_user_errors(self._reports_dir, name):
            result = self._worker.run_job(job)
        _write_report(f"{self._reports_dir}/{name}.json", result)
        yield name

    def teardown(self):
        if self._worker is not None:
            self._worker.reader.close()


class BeamExecutor:
    """Runs data prep's per-file work and shard jobs on a Beam runner (builder.write_dataset's executor)."""

    def __init__(self, options: PipelineOptions | str | None, runner=None, num_workers: int | None = None):
        self.options, self.runner = resolve_options(options, runner, num_workers)
        self._runner_object = None if isinstance(runner, str) else runner  # a name went into the options

    def check_paths(self, paths: Sequence[str], data_dir: str) -> None:
        """A runner whose workers live on other machines cannot see this machine's disk."""
        if self.runner in _REMOTE_RUNNERS:
            local = [path for path in [*paths, data_dir] if not storage.is_remote(path)]
            if local:
                raise DNAVecError(f"{local[0]}: runner={self.runner} runs on other machines, which cannot read "
                                  "this machine's files; give inputs and --data_dir as URLs (gs://...)")

    def work_dir(self, out_dir: str) -> str:
        """Inside the dataset's temporary directory, where every worker can reach it (a bucket for Dataflow)."""
        return f"{out_dir}/_work"

    def workers_used(self, num_elements: int) -> int | None:
        """The local runner's worker processes for that many elements; None: the runner's own choice."""
        if self.runner != LOCAL_RUNNER:
            return None
        workers = self.options.view_as(DirectOptions).direct_num_workers or pipeline.default_num_workers()
        return max(1, min(workers, num_elements))

    def _options_for(self, num_elements: int) -> PipelineOptions:
        """The options, with no more local worker processes than elements: one more costs seconds to start
        and does nothing."""
        workers = self.workers_used(num_elements)
        if workers is None or workers == self.options.view_as(DirectOptions).direct_num_workers:
            return self.options
        options = copy.deepcopy(self.options)
        options.view_as(DirectOptions).direct_num_workers = workers
        return options

    def open_sources(self, paths: Sequence[str], work_dir: str) -> list[SourceFile]:
        reports = f"{work_dir}/reports"
        self._run("OpenSources", list(enumerate(paths)), _OpenSourceFn(work_dir, reports), reports,
                  self._options_for(len(paths)))
        return [SourceFile(**report) for report in
                _read_reports([f"{reports}/source-{index:06d}.json" for index in range(len(paths))])]

    def run_jobs(self, settings: PrepSettings, sources: Sequence[SourceFile], records: Sequence[GenomeRecord],
                 jobs: Sequence[Job], out_dir: str, on_bases: Callable[[int], None]) -> list[dict]:
        work_dir = self.work_dir(out_dir)
        reports = f"{work_dir}/reports"
        genome_file = f"{work_dir}/genome.json"
        storage.as_path(genome_file).write_text(json.dumps({
            "settings": settings.to_dict(),
            "sources": [dataclasses.asdict(source) for source in sources],
            "records": [[r.index, r.name, r.length, r.file_index, list(r.held_out_blocks)] for r in records],
        }))
        elements = [dataclasses.astuple(job) for job in jobs]
        bases = {_job_name(job.dupe, job.task): job.bases for job in jobs}
        with _ProgressFromReports(reports, bases, on_bases):
            self._run("ShardJobs", elements, _ShardJobFn(genome_file, out_dir, reports), reports,
                      self._options_for(len(jobs)))
        return _read_reports([f"{reports}/{_job_name(job.dupe, job.task)}.json" for job in jobs])

    def _run(self, label: str, elements: list, fn: beam.DoFn, reports_dir: str, options: PipelineOptions) -> None:
        storage.as_path(reports_dir).mkdir(parents=True, exist_ok=True)
        beam_pipeline = beam.Pipeline(runner=self._runner_object, options=options)
        _ = (beam_pipeline
             | f"{label}/Create" >> beam.Create(elements, reshuffle=False)
             # Spreads the elements over the workers: Create alone may give one worker all of them.
             | f"{label}/Reshuffle" >> beam.Reshuffle()
             | label >> beam.ParDo(fn))
        result = None
        try:
            result = beam_pipeline.run()
            state = result.wait_until_finish()
        except Exception:
            errors = _user_errors(reports_dir)
            if errors:
                raise DNAVecError(errors[0]) from None
            raise
        finally:
            # DaskRunner opens a distributed.Client per run and leaves it open (beam 2.77).
            if getattr(result, "client", None) is not None:
                result.client.close()
        if state != PipelineState.DONE:
            raise RuntimeError(f"the Beam pipeline {label} ended in state {state} on {self.runner}")


class _ProgressFromReports:
    """Reports the bases of finished jobs to on_bases while a pipeline runs, from the reports' names."""

    def __init__(self, reports_dir: str, bases: dict[str, int], on_bases: Callable[[int], None]):
        self._dir, self._bases, self._on_bases = reports_dir, bases, on_bases
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _update(self) -> None:
        directory = storage.as_path(self._dir)
        try:
            names = {path.name.removesuffix(".json") for path in directory.glob("job-*.json")}
        except OSError:
            return
        for name in sorted(names - self._seen):
            if name in self._bases:
                self._seen.add(name)
                self._on_bases(self._bases[name])

    def _poll(self) -> None:
        seconds = _POLL_SECONDS["remote" if storage.is_remote(self._dir) else "local"]
        while not self._stop.wait(seconds):
            self._update()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self._update()
